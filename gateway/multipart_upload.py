"""A multipart/form-data body read as it arrives: its parts one after another, each part's
data as a stream of pieces, so a large file part can go to storage without ever being held
whole (`Request.form()` would spool it first). At most one body chunk's worth of parsed data
is buffered at a time."""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header


class MultipartError(ValueError):
    """The body is not a well-formed multipart/form-data body."""


class FieldTooLargeError(MultipartError):
    def __init__(self, name: str, limit: int) -> None:
        super().__init__(f"the form field {name!r} is longer than {limit} bytes")


@dataclass(frozen=True)
class Part:
    name: str
    filename: str | None  # None for a plain field
    content_type: str | None


class _PartEnd:
    pass


_PART_END = _PartEnd()
_Event = Part | bytes | _PartEnd


def form_boundary(content_type: str | None) -> bytes:
    """The boundary of a `multipart/form-data` Content-Type; MultipartError for any other."""
    kind, options = parse_options_header(content_type)
    if kind != b"multipart/form-data":
        raise MultipartError("the body must be multipart/form-data (Content-Type "
                             f"{(content_type or 'missing')!r})")
    boundary = options.get(b"boundary")
    if not boundary:
        raise MultipartError("the multipart/form-data Content-Type has no boundary")
    return boundary


class MultipartReader:
    """Parts in body order: call `next_part()`, then read its data with `data()` or `text()`
    (or not: `next_part()` skips what is left of the current part)."""

    def __init__(self, body: AsyncIterable[bytes], boundary: bytes) -> None:
        self._body = aiter(body)
        self._events: deque[_Event] = deque()
        self._in_part = False
        self._complete = False  # the closing boundary was parsed
        self._headers: dict[str, str] = {}
        self._header_name = bytearray()
        self._header_value = bytearray()
        try:
            self._parser = MultipartParser(boundary, callbacks={
                "on_part_begin": self._headers.clear,
                "on_header_field": self._on_header_name,
                "on_header_value": self._on_header_value,
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
                "on_part_data": self._on_part_data,
                "on_part_end": lambda: self._events.append(_PART_END),
                "on_end": self._on_end,
            })
        except FormParserError as exc:
            raise MultipartError(str(exc)) from exc

    async def next_part(self) -> Part | None:
        """The next part (what is left of the current one is skipped); None after the last."""
        while self._in_part:
            await self._next_in_part()
        event = await self._next_event()
        if event is None:
            return None
        if not isinstance(event, Part):  # the parser emits data only between these two
            raise MultipartError("part data outside a part")
        self._in_part = True
        return event

    async def data(self) -> AsyncIterator[bytes]:
        """The current part's data, piece by piece, to its end."""
        while (piece := await self._next_in_part()) is not None:
            yield piece

    async def text(self, name: str, max_bytes: int) -> str:
        """The current part's data, a short UTF-8 text field."""
        value = bytearray()
        async for piece in self.data():
            value += piece
            if len(value) > max_bytes:
                raise FieldTooLargeError(name, max_bytes)
        try:
            return value.decode()
        except UnicodeDecodeError as exc:
            raise MultipartError(f"the form field {name!r} is not UTF-8 text") from exc

    async def _next_in_part(self) -> bytes | None:
        if not self._in_part:
            return None
        event = await self._next_event()
        if isinstance(event, bytes):
            return event
        self._in_part = False  # the part's end (a body that stops inside a part is refused)
        return None

    async def _next_event(self) -> _Event | None:
        while not self._events:
            chunk = await anext(self._body, None)
            if chunk is None:
                if not self._complete:
                    raise MultipartError("the body ended before its closing boundary")
                return None
            try:
                self._parser.write(chunk)
            except FormParserError as exc:
                raise MultipartError(f"malformed multipart body: {exc}") from exc
        return self._events.popleft()

    def _on_header_name(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        name = self._header_name.decode("latin-1").strip().lower()
        self._headers[name] = self._header_value.decode("latin-1").strip()
        self._header_name.clear()
        self._header_value.clear()

    def _on_headers_finished(self) -> None:
        disposition, options = parse_options_header(self._headers.get("content-disposition"))
        name = options.get(b"name")
        if disposition != b"form-data" or name is None:
            raise MultipartError("a part has no Content-Disposition: form-data with a name")
        filename = options.get(b"filename")
        self._events.append(Part(name=name.decode("utf-8", "replace"),
                                 filename=None if filename is None
                                 else filename.decode("utf-8", "replace"),
                                 content_type=self._headers.get("content-type")))

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if end > start:
            self._events.append(data[start:end])

    def _on_end(self) -> None:
        self._complete = True
