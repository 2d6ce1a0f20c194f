"""The feeder: every worker process moves batch lines from their flows into the broker
as its slots and its peers' free up (core/feed.py). Each round is one script call, so any
number of processes may feed at once and any of them may die at any point; the window is
the registered workers' slots, so feeding stops when none is alive."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from celery import Celery

from core.dispatch import publish_lines
from worker.runtime import Runtime

logger = logging.getLogger(__name__)

ROUND_MAX_LINES = 1_000
IDLE_S = 0.05  # the longest wait between rounds: lines may end in other processes
MIN_GAP_S = 0.01  # the shortest: one round for the lines that ended meanwhile
REGISTER_S = 5.0  # a process renews its registration this often...
REGISTRATION_TTL_S = 15.0  # ...and it lapses this long after its last renewal
PUBLISH_FAILED_PAUSE_S = 1.0


async def feed_once(rt: Runtime, celery: Celery) -> int:
    """One round: take what the window has room for and publish it; returns the lines."""
    fed = await rt.store.feed.take(ROUND_MAX_LINES, rt.settings.lines_per_message)
    if not fed:
        return 0
    try:
        await asyncio.to_thread(publish_lines, celery, fed)
    except Exception:
        # Back to their flows, so no broker (an AMQP one has no orphan sweep) strands them.
        await rt.store.feed.give_back([i for m in fed for i in m.job_ids], PUBLISH_FAILED_PAUSE_S)
        raise
    return sum(len(m.job_ids) for m in fed)


class Wake:
    """Set when a line of this process ends or lines were just fed: the window may have
    room now, so the next round need not wait the whole `IDLE_S`."""

    _event: asyncio.Event | None = None

    @classmethod
    def event(cls) -> asyncio.Event:
        if cls._event is None:  # made on the process's one event loop
            cls._event = asyncio.Event()
        return cls._event


def nudge() -> None:
    """A line ended here: feed soon (call from the process's event loop)."""
    Wake.event().set()


async def feed_forever(rt: Runtime, celery: Celery, slots: int) -> None:
    registered_at = -REGISTER_S
    wake = Wake.event()
    while True:
        wake.clear()
        moved = 0
        try:
            if time.monotonic() - registered_at >= REGISTER_S:
                await rt.store.feed.register_worker(rt.worker_name, slots, REGISTRATION_TTL_S)
                registered_at = time.monotonic()
            moved = await feed_once(rt, celery)
        except Exception:  # a failed round must never stop the feeder
            logger.exception("feeder round failed")
        await asyncio.sleep(MIN_GAP_S)
        if not moved:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), IDLE_S - MIN_GAP_S)


_feeder: asyncio.Task[Any] | None = None


async def start(rt: Runtime, celery: Celery, slots: int) -> None:
    """Feed for the life of the process, which runs `slots` jobs at a time."""
    global _feeder  # noqa: PLW0603 - one per process
    if _feeder is None or _feeder.done():
        _feeder = asyncio.ensure_future(feed_forever(rt, celery, slots))


async def stop(rt: Runtime) -> None:
    """Stop feeding and leave the window at once (a graceful shutdown)."""
    if _feeder is not None:
        _feeder.cancel()
    await rt.store.feed.unregister_worker(rt.worker_name)
