"""The Lua scripts of core/lua, and what their Python callers share."""

from __future__ import annotations

import functools
from pathlib import Path

_LUA_DIR = Path(__file__).with_name("lua")
ID_SLOT = "{id}"  # where job_common.lua's fill() puts an id into a key template
# Job hash field: when the job's newest message was published (ms). Stamped by every
# publish, requeue and feed, so the orphan sweep (worker/orphans.py) can tell whether that
# message may still wait in its queue.
PUBLISHED_MS = "published_ms"


@functools.cache
def lua_script(name: str, *, common: bool = True) -> str:
    """A script's text, after job_common.lua's helpers unless `common` is False."""
    script = (_LUA_DIR / name).read_text(encoding="utf-8")
    if not common:
        return script
    return (_LUA_DIR / "job_common.lua").read_text(encoding="utf-8") + "\n" + script


def text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
