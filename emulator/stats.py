"""Request counters of one emulator app, kept in `app.state.stats`, read at `GET /_emulator/stats`.

Every HTTP response except the admin routes' is counted once, by route template and status, in
`RequestContextMiddleware`; route handlers never count their own answers. On top of that:

- `record_data_request(request, name, status)` counts data-plane answers per proxy;
- `incr(event)` counts named events that are not responses (e.g. a stream cut mid-way).

All updates happen on the server's event loop, so plain counters need no lock.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from fastapi import Request
from pydantic import BaseModel

UNMATCHED_ROUTE = "<unmatched>"


class StatsSnapshot(BaseModel):
    """What `GET /_emulator/stats` answers (status codes are string keys in JSON)."""

    total_requests: int
    rate_limited: int
    by_route: dict[str, dict[str, int]]
    by_proxy: dict[str, dict[str, int]]
    events: dict[str, int]
    in_flight: int
    peak_in_flight: int


@dataclass
class Stats:
    _by_route: Counter[tuple[str, int]] = field(default_factory=Counter)
    _by_proxy: Counter[tuple[str, int]] = field(default_factory=Counter)
    _events: Counter[str] = field(default_factory=Counter)
    in_flight: int = 0  # requests being answered now (streams until their last byte)
    peak_in_flight: int = 0

    def enter(self) -> None:
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    def leave(self) -> None:
        self.in_flight -= 1

    def count(self, route: str, status: int) -> None:
        """One response on `route` ("METHOD /path/{template}") with `status`."""
        self._by_route[(route, status)] += 1

    def count_proxy(self, name: str, status: int) -> None:
        """One data-plane answer for proxy `name`."""
        self._by_proxy[(name, status)] += 1

    def incr(self, event: str, n: int = 1) -> None:
        self._events[event] += n

    def requests(self, route: str | None = None, status: int | None = None) -> int:
        """Responses counted, optionally only those on `route` and/or with `status`."""
        return sum(
            n
            for (r, s), n in self._by_route.items()
            if (route is None or r == route) and (status is None or s == status)
        )

    @property
    def rate_limited(self) -> int:
        """429 answers sent, on any route."""
        return self.requests(status=429)

    def event(self, name: str) -> int:
        return self._events[name]

    def reset(self) -> None:
        self.peak_in_flight = self.in_flight
        self._by_route.clear()
        self._by_proxy.clear()
        self._events.clear()

    def snapshot(self) -> StatsSnapshot:
        return StatsSnapshot(
            total_requests=self.requests(),
            rate_limited=self.rate_limited,
            by_route=_nest(self._by_route),
            by_proxy=_nest(self._by_proxy),
            events=dict(self._events),
            in_flight=self.in_flight,
            peak_in_flight=self.peak_in_flight,
        )


def _nest(counter: Counter[tuple[str, int]]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for (key, status), n in sorted(counter.items()):
        out.setdefault(key, {})[str(status)] = n
    return out


def stats_of(request: Request) -> Stats:
    """The app's `Stats` (usable as a FastAPI dependency)."""
    stats: Stats = request.app.state.stats
    return stats


def record_data_request(request: Request, name: str, status: int) -> None:
    """Count one data-plane answer for proxy `name` (the per-route count is automatic)."""
    stats_of(request).count_proxy(name, status)
