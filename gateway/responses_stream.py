"""A streamed `/v1/responses` call as OpenAI's typed events, rebuilt from the job's text.

A job's chunk stream holds the final attempt's text deltas; the finished response is the
job's result. The gateway therefore sends the events of one assistant message itself:
`response.created`, `response.in_progress`, `response.output_item.added`,
`response.content_part.added`, `response.output_text.delta`…, then `.output_text.done`,
`.content_part.done`, `.output_item.done` and one of `response.completed`,
`response.incomplete` or `response.failed`, numbered by `sequence_number` from 0. There is
no `[DONE]`. The response and message ids are the gateway's (`resp_`/`msg_` and the job id)
in every event, the final response included, so a client that follows a response by id
(the official `responses.stream()` helper checks it) sees one response throughout.
"""

from __future__ import annotations

import copy
import functools
import itertools
from dataclasses import dataclass, field
from typing import Any

from gateway.sse_relay import json_text, sse

END_EVENTS = {"completed": "response.completed", "incomplete": "response.incomplete",
              "failed": "response.failed"}
DELTA = "response.output_text.delta"


@dataclass
class ResponseEvents:
    """The events of one streamed response, each as SSE bytes (`Frames`)."""

    job_id: str
    model: str
    created_at: int
    _sequence: itertools.count[int] = field(default_factory=itertools.count)

    @property
    def response_id(self) -> str:
        return f"resp_{self.job_id}"

    @property
    def item_id(self) -> str:
        return f"msg_{self.job_id}"

    def _event(self, kind: str, **fields: Any) -> bytes:
        return sse({"type": kind, "sequence_number": next(self._sequence), **fields}, kind)

    def _response(self, status: str, **fields: Any) -> dict[str, Any]:
        return {"id": self.response_id, "object": "response", "created_at": self.created_at,
                "status": status, "error": None, "incomplete_details": None,
                "model": self.model, "output": [], "usage": None, **fields}

    def _message(self, status: str, text: str | None) -> dict[str, Any]:
        content = [] if text is None else [_text_part(text)]
        return {"id": self.item_id, "type": "message", "status": status, "role": "assistant",
                "content": content}

    def _where(self) -> dict[str, Any]:
        return {"item_id": self.item_id, "output_index": 0, "content_index": 0}

    def start(self) -> bytes:
        started = self._response("in_progress")
        return b"".join([
            self._event("response.created", response=started),
            self._event("response.in_progress", response=started),
            self._event("response.output_item.added", output_index=0,
                        item=self._message("in_progress", None)),
            self._event("response.content_part.added", part=_text_part(""), **self._where()),
        ])

    def text(self, text: str) -> bytes:
        before, between, after = self._delta_frame
        return b"".join((before, str(next(self._sequence)).encode(), between,
                         json_text(text).encode(), after))

    @functools.cached_property
    def _delta_frame(self) -> tuple[bytes, bytes, bytes]:
        """A delta event's bytes around its sequence number and its text: the event sent per
        token is put together from them, not encoded from a dict each time."""
        number, text = "\x01", "\x00"  # stand-ins, JSON strings here, split off below
        framed = sse({"type": DELTA, "sequence_number": number, "delta": text,
                      "logprobs": [], **self._where()}, DELTA)
        before, _, rest = framed.partition(json_text(number).encode())
        between, _, after = rest.partition(json_text(text).encode())
        return before, between, after

    def end(self, done: dict[str, Any], result: dict[str, Any], text: str) -> bytes:
        """The message closed with `text` (all that was streamed), then the job's finished
        response (`result`) under this stream's ids."""
        status = str(result.get("status") or "completed")
        response = self._final(result, status)
        item_status = "incomplete" if status == "incomplete" else "completed"
        return b"".join([
            self._event("response.output_text.done", text=text, logprobs=[], **self._where()),
            self._event("response.content_part.done", part=_text_part(text), **self._where()),
            self._event("response.output_item.done", output_index=0,
                        item=self._message(item_status, text)),
            self._event(END_EVENTS.get(status, "response.completed"), response=response),
        ])

    def error(self, error: dict[str, Any]) -> bytes:
        """`response.failed` with `error` ({"code", "message"}): the stream ends there."""
        failed = self._response("failed", error={"code": error.get("code") or "server_error",
                                                 "message": error.get("message") or ""})
        return self._event("response.failed", response=failed)

    def _final(self, final: dict[str, Any], status: str) -> dict[str, Any]:
        response = copy.deepcopy(final) or self._response(status)
        response["id"] = self.response_id
        messages = [item for item in response.get("output") or []
                    if isinstance(item, dict) and item.get("type") == "message"]
        if messages:
            messages[0]["id"] = self.item_id
        return response


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": []}
