"""The form of `POST /v1/files`, read as it arrives: the file part goes straight to the
`FileStore` while the body streams in, the small fields are checked, and nothing is kept of
an upload that is refused.

Clients send the fields before the file or after it (both are valid multipart), so a field
already known when the file begins is checked at once, and the rest once the body has
ended; only then does the written content become a file."""

from __future__ import annotations

from collections.abc import AsyncIterable, Mapping
from dataclasses import dataclass

from starlette.requests import ClientDisconnect

from gateway.errors import OpenAIError
from gateway.file_store import (
    INPUT_PURPOSE,
    OUTPUT_PURPOSE,
    FileStore,
    FileTooLargeError,
    StoredFile,
    TooManyLinesError,
    WrittenContent,
)
from gateway.multipart_upload import (
    FieldTooLargeError,
    MultipartError,
    MultipartReader,
    Part,
    form_boundary,
)

FILE_FIELD = "file"
PURPOSE_FIELD = "purpose"
ANCHOR_FIELD = "expires_after[anchor]"
SECONDS_FIELD = "expires_after[seconds]"
ANCHOR = "created_at"
# OpenAI's bounds for `expires_after[seconds]`: one hour to 30 days.
MIN_EXPIRES_AFTER_S = 3600
MAX_EXPIRES_AFTER_S = 30 * 24 * 3600
FIELD_BYTES = 1024  # longest field other than the file
MAX_FIELDS = 16
# What a body may hold beyond its file (the fields, part headers and boundaries): a body
# longer than the file limit plus this is refused before it is read.
FORM_SLACK_BYTES = MAX_FIELDS * (FIELD_BYTES + 1024)


@dataclass(frozen=True)
class UploadLimits:
    max_bytes: int
    max_lines: int


async def upload_file(body: AsyncIterable[bytes], headers: Mapping[str, str],
                      store: FileStore, owner: str, limits: UploadLimits) -> StoredFile:
    """The request's file, stored as `owner`'s; OpenAIError when the upload is refused."""
    length = headers.get("content-length", "")
    if length.isascii() and length.isdigit() and \
            int(length) > limits.max_bytes + FORM_SLACK_BYTES:
        raise _too_large(limits.max_bytes)  # it cannot hold a file within the limit
    try:
        reader = MultipartReader(body, form_boundary(headers.get("content-type")))
        return await _receive(reader, store, owner, limits)
    except MultipartError as exc:
        raise OpenAIError(400, f"Could not read the upload: {exc}.",
                          code="invalid_multipart_body") from exc
    except ClientDisconnect as exc:
        # Nobody reads this answer; it only keeps a normal event out of the error log.
        raise OpenAIError(400, "The client closed the connection during the upload.") \
            from exc


async def _receive(reader: MultipartReader, store: FileStore, owner: str,
                   limits: UploadLimits) -> StoredFile:
    fields: dict[str, str] = {}
    written: list[tuple[Part, WrittenContent]] = []
    try:
        await _read_form(reader, store, limits, fields, written)
        return await _publish(store, owner, fields, written)
    except BaseException:
        for _, content in written:
            await store.discard(content)
        raise


async def _read_form(reader: MultipartReader, store: FileStore, limits: UploadLimits,
                     fields: dict[str, str], written: list[tuple[Part, WrittenContent]],
                     ) -> None:
    """Fields into `fields`, the file into the store (and `written`, for the caller to
    discard should the upload be refused)."""
    field_parts = 0
    while (part := await reader.next_part()) is not None:
        if part.name != FILE_FIELD:
            field_parts += 1
            if field_parts > MAX_FIELDS:
                raise OpenAIError(400, f"The form has more than {MAX_FIELDS} fields.")
            await _read_field(reader, part, fields)
        elif written:
            raise OpenAIError(400, "Send one file per upload.", param=FILE_FIELD)
        else:
            _check_fields(fields, complete=False)
            written.append((part, await _write_file(reader, store, limits)))


async def _publish(store: FileStore, owner: str, fields: Mapping[str, str],
                   written: list[tuple[Part, WrittenContent]]) -> StoredFile:
    if not written:
        raise _missing(FILE_FIELD)
    purpose, expires_after_s = _check_fields(fields, complete=True)
    part, content = written[0]
    return await store.publish(content, owner, part.filename or FILE_FIELD, purpose,
                               expires_after_s=expires_after_s)


async def _read_field(reader: MultipartReader, part: Part, fields: dict[str, str]) -> None:
    try:
        fields[part.name] = await reader.text(part.name, FIELD_BYTES)
    except FieldTooLargeError as exc:
        raise OpenAIError(400, f"The form field {part.name!r} is longer than {FIELD_BYTES} "
                          "bytes.", param=part.name) from exc


async def _write_file(reader: MultipartReader, store: FileStore,
                      limits: UploadLimits) -> WrittenContent:
    try:
        return await store.write_content(reader.data(), max_bytes=limits.max_bytes,
                                         max_lines=limits.max_lines)
    except FileTooLargeError as exc:
        raise _too_large(exc.limit) from exc
    except TooManyLinesError as exc:
        raise OpenAIError(400, f"The file has more than {exc.limit} lines: a batch takes at "
                          f"most {exc.limit} requests.", param=FILE_FIELD,
                          code="too_many_lines") from exc


def _check_fields(fields: Mapping[str, str], *, complete: bool) -> tuple[str, int | None]:
    """The purpose and `expires_after` seconds; with `complete` False (the body has not
    ended yet), only the fields already there are checked."""
    purpose = fields.get(PURPOSE_FIELD)
    if purpose is None and complete:
        raise _missing(PURPOSE_FIELD)
    if purpose is not None and purpose != INPUT_PURPOSE:
        raise OpenAIError(
            400, f"Invalid value for 'purpose': {purpose!r}. Files uploaded here must have "
            f"purpose '{INPUT_PURPOSE}' ('{OUTPUT_PURPOSE}' is for the files mpq writes).",
            param=PURPOSE_FIELD, code="invalid_value")
    return purpose or INPUT_PURPOSE, _expires_after_s(fields, complete=complete)


def _expires_after_s(fields: Mapping[str, str], *, complete: bool) -> int | None:
    anchor, seconds = fields.get(ANCHOR_FIELD), fields.get(SECONDS_FIELD)
    if anchor is not None and anchor != ANCHOR:
        raise OpenAIError(400, f"Invalid value for '{ANCHOR_FIELD}': {anchor!r}. The only "
                          f"anchor is '{ANCHOR}'.", param=ANCHOR_FIELD, code="invalid_value")
    if seconds is not None and not (seconds.isascii() and seconds.isdigit() and
                                    MIN_EXPIRES_AFTER_S <= int(seconds) <= MAX_EXPIRES_AFTER_S):
        raise OpenAIError(400, f"Invalid value for '{SECONDS_FIELD}': {seconds!r}. It must "
                          f"be a whole number of seconds from {MIN_EXPIRES_AFTER_S} to "
                          f"{MAX_EXPIRES_AFTER_S}.", param=SECONDS_FIELD, code="invalid_value")
    if complete and anchor is None and seconds is not None:
        raise _missing(ANCHOR_FIELD)
    if complete and seconds is None and anchor is not None:
        raise _missing(SECONDS_FIELD)
    return None if seconds is None else int(seconds)


def _too_large(limit: int) -> OpenAIError:
    return OpenAIError(413, f"The file is larger than the limit of {limit} bytes.",
                       param=FILE_FIELD, code="file_too_large")


def _missing(name: str) -> OpenAIError:
    return OpenAIError(400, f"Missing required parameter: '{name}'.", param=name,
                       code="missing_required_parameter")
