"""The OpenAI Batch file formats: parsing input lines, building output lines. Pure: no I/O.

Input: one JSON object per line, ``{"custom_id", "method": "POST", "url", "body"}``, plus our
optional ``"proxy"`` key. `iter_batch` checks every line as it is read and never raises: each
non-blank line becomes either a `BatchLine` or a `LineError`, so a caller can report every
problem; `parse_batch` gathers them. Output: `output_line` for a job that succeeded,
`error_line` for one that failed or was cancelled, `error_line_for_invalid` for a line that
never ran. A line's `response.request_id` is the upstream's id of the request (the job's id
where the upstream sent none).
"""

from __future__ import annotations

import json
import math
import re
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from core.contract import JobKind, JobRecord, JobStatus, check_proxy_name
from core.embeddings import ENCODINGS

URL_KINDS: dict[str, JobKind] = {
    "/v1/chat/completions": JobKind.CHAT,
    "/v1/responses": JobKind.RESPONSES,
    "/v1/embeddings": JobKind.EMBEDDINGS,
}
CUSTOM_ID_MAX_CHARS = 512
EMBEDDING_INPUTS_MAX = 2048  # OpenAI's limit of inputs per embeddings request
DEFAULT_MAX_LINE_BYTES = 1_000_000
_SHOW_MAX_CHARS = 60
_ALLOWED_URLS = ", ".join(list(URL_KINDS)[:-1]) + " or " + list(URL_KINDS)[-1]
_BOM = "\ufeff"
# The error codes of a line cancelled before it ended (OpenAI's), and the message of each.
CANCELLED_CODE = "batch_cancelled"
EXPIRED_CODE = "batch_expired"
NOT_RUN_MESSAGES = {
    CANCELLED_CODE: "This request was cancelled before it completed.",
    EXPIRED_CODE: "This request could not be executed before the completion window expired.",
}
# A failed job's error reads "attempt 2: ServerError: HTTP 503: ..." (worker.retry.describe).
_ERROR_CLASS = re.compile(r"(?:attempt \d+: )?([A-Z][A-Za-z0-9_]*): ")


@dataclass(frozen=True)
class BatchLine:
    """One valid input line, ready to become a job."""

    line_no: int
    custom_id: str
    kind: JobKind
    body: dict[str, Any]
    proxy: str


@dataclass(frozen=True)
class LineError:
    """Why one input line was refused; ``str()`` prefixes the line number."""

    line_no: int
    custom_id: str | None
    reason: str

    def __str__(self) -> str:
        return f"line {self.line_no}: {self.reason}"


@dataclass
class ParsedBatch:
    """Every non-blank input line, sorted into valid lines and errors (in input order)."""

    lines: list[BatchLine] = field(default_factory=list)
    errors: list[LineError] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no line was refused (an empty input is ok)."""
        return not self.errors


class _Invalid(Exception):
    """Raised by the checks below; `_parse_line` turns it into a `LineError`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# ---- helpers -------------------------------------------------------------------------------


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def _show(value: Any) -> str:
    """A short rendering for messages: strings quoted and cut, numbers as-is, else the type."""
    if isinstance(value, str):
        return json.dumps(_cut(value), ensure_ascii=False)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _cut(repr(value))
    return _json_type(value)


def _cut(text: str) -> str:
    return text if len(text) <= _SHOW_MAX_CHARS else text[:_SHOW_MAX_CHARS] + "…"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_positive_int(value: Any) -> bool:
    return _is_int(value) and value > 0


def _is_temperature(value: Any) -> bool:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    return number and 0 <= value <= 2


def _is_one(value: Any) -> bool:
    return _is_int(value) and value == 1


# ---- decoding ------------------------------------------------------------------------------


def _strip_newline(raw: str | bytes) -> str | bytes:
    if isinstance(raw, bytes):
        return raw.removesuffix(b"\n").removesuffix(b"\r")
    return raw.removesuffix("\n").removesuffix("\r")


def _decode(raw: str | bytes, max_line_bytes: int) -> str:
    """The line as text, refusing oversized lines and invalid UTF-8."""
    raw = _strip_newline(raw)
    try:
        data = raw if isinstance(raw, bytes) else raw.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates in a str
        raise _Invalid(f"not valid UTF-8: unpaired surrogate at character {exc.start}") from exc
    if len(data) > max_line_bytes:
        raise _Invalid(f"too long: {len(data)} bytes, the limit is {max_line_bytes}")
    if isinstance(raw, str):
        return raw
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        byte = data[exc.start]
        raise _Invalid(f"not valid UTF-8: byte 0x{byte:02x} at offset {exc.start}") from exc


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text} is out of range")
    return value


def _load_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except json.JSONDecodeError as exc:
        raise _Invalid(f"not valid JSON: {exc.msg} (column {exc.colno})") from exc
    except RecursionError as exc:
        raise _Invalid("not valid JSON: nested too deeply") from exc
    except ValueError as exc:  # our float/constant hooks, Python's int digit limit
        raise _Invalid(f"not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise _Invalid(f"must be a JSON object, not {_json_type(value)}")
    return value


# ---- the envelope --------------------------------------------------------------------------


def _custom_id(obj: dict[str, Any]) -> str:
    value = obj.get("custom_id")
    if not isinstance(value, str):
        raise _Invalid(f'"custom_id" must be a string, not {_json_type(value)}')
    if not value:
        raise _Invalid('"custom_id" must not be empty')
    if len(value) > CUSTOM_ID_MAX_CHARS:
        raise _Invalid(
            f'"custom_id" is {len(value)} characters long, the limit is {CUSTOM_ID_MAX_CHARS}'
        )
    return _unicode(value, '"custom_id"')


def _unicode(value: str, what: str) -> str:
    """JSON escapes can spell lone surrogates ("\\ud800"), which no Redis value can hold."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise _Invalid(f"{what} has an unpaired surrogate at character {exc.start}") from None
    return value


def _check_method(obj: dict[str, Any]) -> None:
    if "method" not in obj:
        raise _Invalid('"method" is missing; it must be "POST"')
    method = obj["method"]
    if not (isinstance(method, str) and method.upper() == "POST"):
        raise _Invalid(f'"method" must be "POST", not {_show(method)}')


def _kind(obj: dict[str, Any]) -> JobKind:
    if "url" not in obj:
        raise _Invalid(f'"url" is missing; it must be {_ALLOWED_URLS}')
    url = obj["url"]
    kind = URL_KINDS.get(url) if isinstance(url, str) else None
    if kind is None:
        raise _Invalid(f'"url" must be {_ALLOWED_URLS}, not {_show(url)}')
    return kind


def _proxy(obj: dict[str, Any], default_proxy: str | None) -> str:
    if "proxy" in obj:
        value = obj["proxy"]
        if not (isinstance(value, str) and value):
            raise _Invalid(f'"proxy" must be a non-empty string, not {_show(value)}')
    elif not default_proxy:
        raise _Invalid('no proxy: pass --proxy or set "proxy" on the line')
    else:
        value = default_proxy
    try:
        return check_proxy_name(value)
    except ValueError as exc:
        raise _Invalid(str(exc)) from None


def _body(obj: dict[str, Any]) -> dict[str, Any]:
    body = obj.get("body")
    if not isinstance(body, dict):
        missing = "body" not in obj
        raise _Invalid(
            '"body" is missing' if missing else f'"body" must be an object, not {_json_type(body)}'
        )
    return body


# ---- the body ------------------------------------------------------------------------------

# Optional body fields: (name, test, what the value must be). JSON null counts as absent.
_KNOBS: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("model", lambda v: isinstance(v, str), "a string"),
    ("max_tokens", _is_positive_int, "a positive integer"),
    ("max_completion_tokens", _is_positive_int, "a positive integer"),
    ("max_output_tokens", _is_positive_int, "a positive integer"),
    ("temperature", _is_temperature, "a number from 0 to 2"),
    ("n", _is_one, "1 or absent (a batch request returns one choice)"),
)


def _check_stream(body: dict[str, Any]) -> None:
    stream = body.get("stream")
    if stream is True:
        raise _Invalid("streaming is not supported in batches; use `mpq chat --stream`")
    if stream is not None and stream is not False:
        raise _Invalid(f'"body.stream" must be a boolean, not {_show(stream)}')


def _check_knobs(body: dict[str, Any]) -> None:
    for name, test, wanted in _KNOBS:
        value = body.get(name)
        if value is not None and not test(value):
            raise _Invalid(f'"body.{name}" must be {wanted}, not {_show(value)}')


# OpenAI's chat roles, and those whose message may have no content (a tool call's turn).
ROLES = ("system", "developer", "user", "assistant", "tool", "function")
NULL_CONTENT_ROLES = frozenset({"assistant", "function"})


def _check_content(where: str, message: dict[str, Any]) -> None:
    content = message.get("content")
    if isinstance(content, str):
        return
    if content is None:
        if message["role"] not in NULL_CONTENT_ROLES:
            raise _Invalid(f'"{where}.content" may be null only for an assistant or '
                           "function message")
        return
    if not (isinstance(content, list) and content):
        raise _Invalid(
            f'"{where}.content" must be a string, a non-empty list of parts or null, '
            f"not {_show(content)}"
        )
    for j, part in enumerate(content):
        if not (isinstance(part, dict) and isinstance(part.get("type"), str)):
            raise _Invalid(f'"{where}.content[{j}]" must be an object with a string "type"')
        if part["type"] == "text" and not isinstance(part.get("text"), str):
            raise _Invalid(f'"{where}.content[{j}].text" must be a string')


def _check_message(i: int, message: Any) -> None:
    where = f"body.messages[{i}]"
    if not isinstance(message, dict):
        raise _Invalid(f'"{where}" must be an object, not {_json_type(message)}')
    if message.get("role") not in ROLES:
        raise _Invalid(f'"{where}.role" must be one of {", ".join(ROLES)}, '
                       f"not {_show(message.get('role'))}")
    _check_content(where, message)


def _check_chat(body: dict[str, Any]) -> None:
    messages = body.get("messages")
    if not (isinstance(messages, list) and messages):
        raise _Invalid(
            f'"body.messages" must be a non-empty list, not {_show(messages)}'
            if "messages" in body
            else '"body.messages" is missing'
        )
    for i, message in enumerate(messages):
        _check_message(i, message)


def _check_responses(body: dict[str, Any]) -> None:
    value = body.get("input")
    if not (isinstance(value, str | list) and value):
        raise _Invalid(
            f'"body.input" must be a non-empty string or list, not {_show(value)}'
            if "input" in body
            else '"body.input" is missing'
        )
    for i, item in enumerate(value if isinstance(value, list) else []):
        if not (isinstance(item, dict) and isinstance(item.get("type") or item.get("role"), str)):
            raise _Invalid(f'"body.input[{i}]" must be an object with a string "type" or '
                           f'"role", not {_show(item)}')


# Optional fields of an embeddings body, as `_KNOBS`.
_EMBEDDINGS_KNOBS: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("model", lambda v: isinstance(v, str), "a string"),
    ("dimensions", _is_positive_int, "a positive integer"),
    ("encoding_format", lambda v: v in ENCODINGS, " or ".join(f'"{e}"' for e in ENCODINGS)),
    ("user", lambda v: isinstance(v, str), "a string"),
)
_EMBEDDINGS_INPUT = ('"body.input" must be a non-empty string, or a non-empty list of '
                     "non-empty strings, of token ids, or of non-empty token id lists")


def _is_token_ids(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(
        _is_int(item) and item >= 0 for item in value)


def _check_embedding_item(i: int, item: Any, first: Any) -> None:
    """One item of a list input, of the kind its first item set."""
    where = f"body.input[{i}]"
    if isinstance(first, str):
        if not (isinstance(item, str) and item):
            raise _Invalid(f'"{where}" must be a non-empty string, not {_show(item)}')
    elif isinstance(first, list):
        if not _is_token_ids(item):
            raise _Invalid(f'"{where}" must be a non-empty list of token ids (integers from '
                           f"0), not {_show(item)}")
    else:
        raise _Invalid(f'"{where}" must be a non-empty string or a list of token ids, '
                       f"not {_show(item)}")


def _check_embeddings_input(body: dict[str, Any]) -> None:
    if "input" not in body:
        raise _Invalid('"body.input" is missing')
    value = body["input"]
    if isinstance(value, str) and value:
        return
    if not (isinstance(value, list) and value) or isinstance(value[0], bool):
        raise _Invalid(f"{_EMBEDDINGS_INPUT}, not {_show(value)}")
    if _is_int(value[0]):  # one input given as token ids
        if not _is_token_ids(value):
            raise _Invalid(f'"body.input" must be a list of token ids (integers from 0), '
                           f"not {_show(value)}")
        return
    if len(value) > EMBEDDING_INPUTS_MAX:
        raise _Invalid(f'"body.input" has {len(value)} items, the limit is '
                       f"{EMBEDDING_INPUTS_MAX}")
    for i, item in enumerate(value):
        _check_embedding_item(i, item, value[0])


def _check_embeddings(body: dict[str, Any]) -> None:
    stream = body.get("stream")
    if stream is not None and stream is not False:
        raise _Invalid('"body.stream" does not apply to embeddings: leave it out')
    _check_embeddings_input(body)
    for name, test, wanted in _EMBEDDINGS_KNOBS:
        value = body.get(name)
        if value is not None and not test(value):
            raise _Invalid(f'"body.{name}" must be {wanted}, not {_show(value)}')


_BODY_CHECKS: dict[JobKind, tuple[Callable[[dict[str, Any]], None], ...]] = {
    JobKind.CHAT: (_check_stream, _check_chat, _check_knobs),
    JobKind.RESPONSES: (_check_stream, _check_responses, _check_knobs),
    JobKind.EMBEDDINGS: (_check_embeddings,),
}


def check_request(kind: JobKind, body: dict[str, Any]) -> None:
    """Check one job's request body by the rules of a batch line, streaming allowed
    (a single job may stream); raises `ValueError` with the reason."""
    if not isinstance(body.get("stream", False), bool):
        raise ValueError(f'"body.stream" must be a boolean, not {_show(body.get("stream"))}')
    try:
        for check in _BODY_CHECKS[kind]:
            if check is not _check_stream:
                check(body)
    except _Invalid as exc:
        raise ValueError(exc.reason) from None


# ---- one line, one file --------------------------------------------------------------------


def _parse_object(
    line_no: int, obj: dict[str, Any], custom_id: str, default_proxy: str | None
) -> BatchLine:
    _check_method(obj)
    kind = _kind(obj)
    proxy = _proxy(obj, default_proxy)
    body = _body(obj)
    for check in _BODY_CHECKS[kind]:
        check(body)
    return BatchLine(line_no=line_no, custom_id=custom_id, kind=kind, body=body, proxy=proxy)


class CustomIds:
    """The line each custom_id was first seen on, in ~12 bytes a custom_id (a dict of them
    takes ~120): an open-addressing table of 64-bit hashes and line numbers. Two different
    custom_ids share a hash with odds of about n²/2⁶⁵ (10⁻⁸ for 500,000 lines)."""

    _EMPTY = 0
    _FIRST_SLOTS = 16  # a table per parse, and the gateway parses one line at a time

    def __init__(self) -> None:
        self._hashes, self._lines = self._table(self._FIRST_SLOTS)
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def first_line(self, custom_id: str, line_no: int) -> int:
        """The line `custom_id` was first seen on; `line_no` (remembered) when it is new."""
        digest = (hash(custom_id) & 0xFFFF_FFFF_FFFF_FFFF) or 1  # 0 marks an empty slot
        slot = self._slot(self._hashes, digest)
        if self._hashes[slot] == digest:
            return self._lines[slot]
        self._hashes[slot] = digest
        self._lines[slot] = line_no
        self._count += 1
        if 4 * self._count > 3 * len(self._hashes):
            self._grow()
        return line_no

    @staticmethod
    def _slot(hashes: array[int], digest: int) -> int:
        """Where `digest` is, or the empty slot it goes to (linear probing)."""
        mask = len(hashes) - 1
        slot = digest & mask
        while True:
            found = hashes[slot]
            if found in (digest, CustomIds._EMPTY):
                return slot
            slot = (slot + 1) & mask

    @staticmethod
    def _table(slots: int) -> tuple[array[int], array[int]]:
        """Empty slots: 64-bit hashes, 32-bit line numbers (made without a temporary)."""
        return array("Q", [CustomIds._EMPTY]) * slots, array("I", [0]) * slots

    def _grow(self) -> None:
        hashes, lines = self._table(2 * len(self._hashes))
        for digest, line_no in zip(self._hashes, self._lines, strict=True):
            if digest != self._EMPTY:
                slot = self._slot(hashes, digest)
                hashes[slot] = digest
                lines[slot] = line_no
        self._hashes, self._lines = hashes, lines


def _parse_line(
    line_no: int,
    raw: str | bytes,
    default_proxy: str | None,
    max_line_bytes: int,
    seen: CustomIds,
) -> BatchLine | LineError | None:
    """One line's verdict; None for a blank line."""
    custom_id: str | None = None
    try:
        text = _decode(raw, max_line_bytes)
        if line_no == 1:
            text = text.removeprefix(_BOM)
        if not text.strip():
            return None
        obj = _load_object(text)
        custom_id = _custom_id(obj)
        first = seen.first_line(custom_id, line_no)
        if first != line_no:
            return LineError(
                line_no,
                custom_id,
                f"duplicate custom_id {_show(custom_id)} (first on line {first})",
            )
        return _parse_object(line_no, obj, custom_id, default_proxy)
    except _Invalid as exc:
        return LineError(line_no, custom_id, exc.reason)


def iter_batch(
    lines: Iterable[str | bytes],
    default_proxy: str | None,
    *,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> Iterator[BatchLine | LineError]:
    """The verdict of each non-blank line of a Batch input file (numbered from 1, blank
    lines skipped but counted), one line read at a time: what it keeps besides is the
    custom_ids seen (`CustomIds`).

    A line's ``"proxy"`` overrides `default_proxy`. A repeated custom_id is an error on every
    line after the first that carries it. Never raises on any input."""
    seen = CustomIds()
    for line_no, raw in enumerate(lines, start=1):
        verdict = _parse_line(line_no, raw, default_proxy, max_line_bytes, seen)
        if verdict is not None:
            yield verdict


def parse_batch(
    lines: Iterable[str | bytes],
    default_proxy: str | None,
    *,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> ParsedBatch:
    """Every verdict of `iter_batch`, held in memory: valid lines and errors apart."""
    parsed = ParsedBatch()
    for verdict in iter_batch(lines, default_proxy, max_line_bytes=max_line_bytes):
        if isinstance(verdict, BatchLine):
            parsed.lines.append(verdict)
        else:
            parsed.errors.append(verdict)
    return parsed


# ---- output --------------------------------------------------------------------------------


def _line_id(record: JobRecord) -> str:
    return f"batch_req_{record.id}"


def _upstream_request_id(record: JobRecord) -> str:
    """The upstream's id of the request, or the job's id where the upstream gave none."""
    return record.upstream_request_id or record.id


def output_line(record: JobRecord) -> dict[str, Any]:
    """The output-file line of a job that succeeded; ValueError for any other status."""
    if record.status is not JobStatus.SUCCEEDED:
        raise ValueError(f"job {record.id} is {record.status.value}, not succeeded")
    return {
        "id": _line_id(record),
        "custom_id": record.custom_id,
        "response": {"status_code": 200, "request_id": _upstream_request_id(record),
                     "body": record.result},
        "error": None,
    }


def error_code(record: JobRecord) -> str:
    """``batch_cancelled``, the upstream error class named in the error text, or ``failed``."""
    if record.status is JobStatus.CANCELLED:
        return CANCELLED_CODE
    match = _ERROR_CLASS.match(record.error or "")
    return match.group(1) if match else "failed"


def error_line(record: JobRecord, cancelled_code: str = CANCELLED_CODE) -> dict[str, Any]:
    """The errors-file line of a job that did not succeed; ValueError for one that did.

    As OpenAI writes them: a job the upstream refused has the upstream's answer as its
    `response` (its status and error object) and no `error`; a cancelled job never ran to
    its end, so it has no `response` and its `error.code` is `cancelled_code` (e.g.
    ``batch_expired`` for a job cancelled because its batch expired); any other failure (no
    answer from the upstream, or a limit of ours) has no `response` and says what failed."""
    if record.status is JobStatus.SUCCEEDED:
        raise ValueError(f"job {record.id} succeeded; use output_line")
    if record.status is JobStatus.CANCELLED:
        message = NOT_RUN_MESSAGES.get(cancelled_code, NOT_RUN_MESSAGES[CANCELLED_CODE])
        return _error_line(record, None, {"code": cancelled_code, "message": message})
    if record.upstream_status is not None:
        response = {"status_code": record.upstream_status,
                    "request_id": _upstream_request_id(record),
                    "body": {"error": record.upstream_error}}
        return _error_line(record, response, None)
    error = {"code": error_code(record), "message": record.error or record.status.value}
    return _error_line(record, None, error)


def _error_line(
    record: JobRecord, response: dict[str, Any] | None, error: dict[str, Any] | None
) -> dict[str, Any]:
    return {"id": _line_id(record), "custom_id": record.custom_id, "response": response,
            "error": error}


def error_line_for_invalid(error: LineError) -> dict[str, Any]:
    """The errors-file line of an input line that was refused and never ran."""
    return {
        "id": None,
        "custom_id": error.custom_id,
        "response": None,
        "error": {"code": "invalid_request", "message": str(error), "line": error.line_no},
    }
