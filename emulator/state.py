"""The emulator's proxies and their lifecycle, kept in memory.

All mutations are synchronous and run on the server's single event loop, so concurrent
requests never see a half-written record. Transitions are applied lazily: a record whose
deadline has passed moves on the next time anyone looks at it.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from emulator.settings import EmulatorSettings, Faults, ReplyLength

FAIL_CREATE_MARKER = "[emulator:fail-create]"
FAIL_UPDATE_MARKER = "[emulator:fail-update]"
FAIL_DELETE_MARKER = "[emulator:fail-delete]"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass
class ProxyRecord:
    """One proxy: its wire fields (camelCase dict) plus the pending transition."""

    wire: dict[str, Any]
    next_status: str | None = None  # status reached at `deadline`; "GONE" for deletes
    next_reason: str = ""
    deadline: float = 0.0
    faults: Faults | None = None  # per-proxy faults override the emulator's
    reply: ReplyLength | None = None  # a per-proxy reply length overrides the emulator's
    seq: int = 0  # creation order, for stable list paging

    @property
    def name(self) -> str:
        return str(self.wire["modelProxyName"])

    @property
    def status(self) -> str:
        return str(self.wire.get("status", ""))


@dataclass
class ProxyStore:
    settings: EmulatorSettings = field(default_factory=EmulatorSettings)
    _proxies: dict[str, ProxyRecord] = field(default_factory=dict)
    _seq: int = 0

    def get(self, name: str) -> ProxyRecord | None:
        """The record after applying any due transition; None when absent or gone."""
        record = self._proxies.get(name)
        if record is None:
            return None
        self._advance(record)
        return self._proxies.get(name)

    def all(self) -> list[ProxyRecord]:
        for record in list(self._proxies.values()):
            self._advance(record)
        return sorted(self._proxies.values(), key=lambda r: r.seq)

    def add(self, wire: dict[str, Any]) -> ProxyRecord:
        self._seq += 1
        wire = {
            **wire,
            "modelProxyId": f"mp-{uuid.uuid4().hex[:16]}",
            "createdAt": now_iso(),
            "lastUpdatedAt": now_iso(),
            "status": "CREATING",
            "statusReason": "",
        }
        record = ProxyRecord(wire=wire, seq=self._seq)
        failing = FAIL_CREATE_MARKER in str(wire.get("description", ""))
        self._schedule(record, "CREATE_FAILED" if failing else "READY",
                       self.settings.create_delay_s, "injected create failure" if failing else "")
        self._proxies[record.name] = record
        return record

    def schedule(self, record: ProxyRecord, status: str, next_status: str, delay_s: float,
                 reason: str = "") -> None:
        """Move `record` to `status` now and to `next_status` after `delay_s`."""
        record.wire["status"] = status
        record.wire["statusReason"] = ""
        record.wire["lastUpdatedAt"] = now_iso()
        self._schedule(record, next_status, delay_s, reason)

    def _schedule(self, record: ProxyRecord, next_status: str, delay_s: float,
                  reason: str) -> None:
        record.next_status = next_status
        record.next_reason = reason
        record.deadline = time.monotonic() + delay_s
        self._advance(record)

    def _advance(self, record: ProxyRecord) -> None:
        if record.next_status is None or time.monotonic() < record.deadline:
            return
        if record.next_status == "GONE":
            self._proxies.pop(record.name, None)
            return
        record.wire["status"] = record.next_status
        record.wire["statusReason"] = record.next_reason
        record.wire["lastUpdatedAt"] = now_iso()
        record.next_status = None

    def faults_for(self, record: ProxyRecord | None) -> Faults:
        if record is not None and record.faults is not None:
            return record.faults
        return self.settings.faults

    def reply_tokens_for(self, record: ProxyRecord | None) -> int | None:
        """The reply length in effect: the proxy's own, else the emulator's; None lets
        replies vary in length."""
        if record is not None and record.reply is not None:
            return record.reply.reply_tokens
        return self.settings.reply_tokens
