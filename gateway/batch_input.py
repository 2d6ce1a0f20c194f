"""A gateway batch's input file: checked line by line while the batch is `validating`, then
read again to become its jobs. The file is streamed from the file store both times, never
held whole; what the first pass keeps is each line's custom_id (to find repeats) and proxy.

A line is checked as `mpq batch submit` checks it (producer/batch_format.py), and besides:
its `url` must be the batch's endpoint, its custom_id must not repeat, and its request must
route to a proxy (gateway/routing.py: the line's own "proxy", an mpq extension, else the
batch's `metadata.proxy`, else the proxy serving the body's `model`). A file whose name does
not end in `.jsonl`, that has no request or more than `gateway_max_file_lines` lines fails as
a whole. Errors are OpenAI's `{code, message, param, line}`; the first `MAX_LISTED` are
listed, and one more entry says how many were left out.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from core.contract import JobRecord
from gateway.batch_objects import GatewayBatch
from gateway.context import Gateway
from gateway.errors import OpenAIError
from gateway.file_store import StoredFile
from gateway.routing import resolve_proxy
from producer.batch_format import URL_KINDS, BatchLine, LineError, parse_batch

MAX_LISTED = 100
YIELD_EVERY = 500  # lines checked between turns given to the event loop
INPUT_SUFFIX = ".jsonl"
# The proxy `parse_batch` gives a line without its own "proxy": such a line is routed by its
# model. A valid proxy name, as `parse_batch` wants one.
_ROUTE_BY_MODEL = "mpq-gateway-route-by-model"

Route = tuple[str | None, str | None]  # (model, explicit proxy)


def batch_error(code: str, message: str, *, line: int | None = None,
                param: str | None = None) -> dict[str, Any]:
    """One entry of a failed batch's `errors.data`."""
    return {"code": code, "message": message, "param": param, "line": line}


@dataclass
class InputCheck:
    """What the first pass found: the errors, or each valid line's proxy in input order."""

    errors: list[dict[str, Any]] = field(default_factory=list)
    left_out: int = 0  # errors found beyond those listed
    proxies: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def add(self, error: dict[str, Any]) -> None:
        if len(self.errors) < MAX_LISTED:
            self.errors.append(error)
        else:
            self.left_out += 1

    def listed(self) -> list[dict[str, Any]]:
        if not self.left_out:
            return self.errors
        more = batch_error("too_many_errors", f"{self.left_out} more errors were found; the "
                           f"first {MAX_LISTED} are listed")
        return [*self.errors, more]


def parse_line(line_no: int, raw: bytes) -> BatchLine | LineError | None:
    """One line as `parse_batch` sees it, numbered as in the file (None: a blank line)."""
    parsed = parse_batch([raw], _ROUTE_BY_MODEL)
    if parsed.errors:
        return dataclasses.replace(parsed.errors[0], line_no=line_no)
    if parsed.lines:
        return dataclasses.replace(parsed.lines[0], line_no=line_no)
    return None


async def _numbered(gw: Gateway, file_id: str) -> AsyncIterator[tuple[int, bytes]]:
    line_no = 0
    async for raw in gw.files.lines(file_id):
        line_no += 1
        if line_no % YIELD_EVERY == 0:
            await asyncio.sleep(0)  # parsing is CPU work: let requests in
        yield line_no, raw


def _whole_file_error(gw: Gateway, stored: StoredFile) -> dict[str, Any] | None:
    if not stored.filename.endswith(INPUT_SUFFIX):
        return batch_error("invalid_file_format", f"the input file must be a JSONL file whose "
                           f"name ends in {INPUT_SUFFIX}, not {stored.filename[:80]!r}",
                           param="input_file_id")
    limit = gw.settings.gateway_max_file_lines
    if stored.lines > limit:
        return batch_error("too_many_lines", f"the input file has {stored.lines} "
                           f"lines; a batch takes at most {limit} requests",
                           param="input_file_id")
    return None


def _other_url(verdict: BatchLine | LineError, raw: bytes, endpoint: str) -> bool:
    """Whether the line names an endpoint other than the batch's. A refused line is looked
    at again for it: its body was checked by the rules of its own url, which is the first
    thing to fix."""
    if isinstance(verdict, BatchLine):
        return URL_KINDS.get(endpoint) != verdict.kind
    try:
        url = json.loads(raw).get("url")
    except (ValueError, AttributeError, RecursionError):
        return False
    return url in URL_KINDS and url != endpoint


class _Checker:
    """The first pass over one file's lines."""

    def __init__(self, gw: Gateway, batch: GatewayBatch) -> None:
        self._gw = gw
        self._batch = batch
        self._first_seen: dict[str, int] = {}
        self._routes: dict[Route, str | OpenAIError] = {}
        self.found = InputCheck()

    async def line(self, line_no: int, raw: bytes) -> None:
        verdict = parse_line(line_no, raw)
        if verdict is None:
            return
        custom_id = verdict.custom_id
        first = self._first_seen.setdefault(custom_id, line_no) if custom_id else line_no
        if first != line_no:
            self.found.add(batch_error("duplicate_custom_id", f"line {line_no}: custom_id "
                                       f"{custom_id!r} is also on line {first}; each must be "
                                       "unique", line=line_no, param="custom_id"))
        elif _other_url(verdict, raw, self._batch.endpoint):
            self.found.add(batch_error("mismatched_endpoint", f"line {line_no}: the url is not "
                                       f"the batch's endpoint {self._batch.endpoint}",
                                       line=line_no, param="url"))
        elif isinstance(verdict, LineError):
            self.found.add(batch_error("invalid_request", str(verdict), line=line_no))
        else:
            await self._route(verdict)

    async def _route(self, line: BatchLine) -> None:
        model = line.body.get("model")
        explicit = line.proxy if line.proxy != _ROUTE_BY_MODEL else (
            (self._batch.metadata or {}).get("proxy"))
        route = (model if isinstance(model, str) else None, explicit)
        if route not in self._routes:
            try:
                self._routes[route] = await resolve_proxy(self._gw, *route)
            except OpenAIError as exc:
                self._routes[route] = exc
        proxy = self._routes[route]
        if isinstance(proxy, OpenAIError):
            self.found.add(batch_error(proxy.code or "invalid_request",
                                       f"line {line.line_no}: {proxy.message}",
                                       line=line.line_no, param=f"body.{proxy.param or 'model'}"))
        elif self.found.ok:  # once a line failed, the proxies are not needed
            self.found.proxies.append(proxy)


async def check_input(gw: Gateway, batch: GatewayBatch, stored: StoredFile) -> InputCheck:
    """Check every line of the input file (the first pass)."""
    whole = _whole_file_error(gw, stored)
    if whole is not None:
        return InputCheck(errors=[whole])
    checker = _Checker(gw, batch)
    async for line_no, raw in _numbered(gw, stored.id):
        await checker.line(line_no, raw)
    found = checker.found
    if found.ok and not found.proxies:
        found.add(batch_error("empty_file", "the input file has no requests",
                              param="input_file_id"))
    return found


async def input_records(gw: Gateway, stored: StoredFile, proxies: list[str],
                        ) -> AsyncIterator[JobRecord]:
    """The jobs of a checked file, in input order (the second pass)."""
    valid = 0
    async for line_no, raw in _numbered(gw, stored.id):
        line = parse_line(line_no, raw)
        if isinstance(line, BatchLine):
            yield JobRecord(kind=line.kind, proxy=proxies[valid], request=line.body,
                            custom_id=line.custom_id)
            valid += 1
