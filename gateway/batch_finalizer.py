"""The background work of batches in each gateway process: every `TICK_S` the finalizer loop
looks at the batches that have not ended (`gw:batches:open`) and advances each one that has a
step to take (batch_lifecycle.py). The routes start work at once with `spawn` (a new batch's
validation, a cancel, a poll that finds a batch ready to finalize).

All processes run the loop; the batch's lease decides which one works on it, and when that
one dies another takes over once the lease has run out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from gateway.batch_lifecycle import advance, batch_objects
from gateway.context import Gateway

logger = logging.getLogger(__name__)

TICK_S = 0.5

# This process's work in progress, by batch id: one task per batch at a time. (Other
# processes are kept off by the batch's lease.)
_running: dict[str, asyncio.Task[None]] = {}


async def _advance_logged(gw: Gateway, batch_id: str) -> None:
    try:
        await advance(gw, batch_id)
    except Exception:  # one batch's trouble must not stop the others'
        logger.exception("batch %s: a background step failed (it is tried again)", batch_id)


def spawn(gw: Gateway, batch_id: str) -> None:
    """Advance the batch in the background, unless this process is at it already."""
    task = _running.get(batch_id)
    if task is not None and not task.done():
        return
    task = asyncio.create_task(_advance_logged(gw, batch_id), name=f"mpq-batch-{batch_id}")
    _running[batch_id] = task

    def forget(done: asyncio.Task[None]) -> None:
        if _running.get(batch_id) is done:
            del _running[batch_id]

    task.add_done_callback(forget)


async def run_finalizer(gw: Gateway) -> None:
    objects = batch_objects(gw)
    try:
        while True:
            try:
                for batch_id in await objects.open_ids():
                    spawn(gw, batch_id)
            except Exception:  # e.g. Redis away for longer than the client rides out
                logger.exception("batch finalizer: could not list the open batches")
            await asyncio.sleep(TICK_S)
    finally:
        tasks = list(_running.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
