"""The proxy cache's format in Redis, shared by its writer (worker/proxy_cache.py) and its
readers (the workers, the gateway's proxy directory).

One hash per proxy at ``keys.proxy(name)``, fields:

- ``props``: the proxy's wire JSON;
- ``status`` and ``model`` (the name callers address), from ``props``;
- ``fetched_at``: Redis ``TIME`` in seconds, taken just before the fetch;
- ``state``: ``present``, or ``vanished`` for a proxy the server no longer knows (a short
  negative cache; the entry then expires).

The set ``keys.proxies()`` names the proxies whose entry is present, so a reader lists them
without scanning the keyspace. The writer adds a name in the same pipeline that writes a
present entry and removes it in the one that marks the entry vanished or deletes it. The two
are not one transaction, so a reader skips listed names whose entry is vanished or gone, and
a present entry missing from the set comes back with its next write (every refresh rewrites
every listed proxy's entry).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

PROPS = "props"
STATUS = "status"
MODEL = "model"
FETCHED_AT = "fetched_at"
STATE = "state"
PRESENT = "present"
VANISHED = "vanished"


@dataclass(frozen=True, slots=True)
class StoredEntry:
    """One proxy's entry as stored; ``props`` is None when the proxy vanished."""

    fetched_at: float
    props: str | None


def present_fields(props: str, status: str | None, model: str,
                   fetched_at: float) -> dict[str, str]:
    """Every field of a present entry (all are rewritten, so no stale one survives)."""
    return {PROPS: props, STATUS: status or "", MODEL: model, FETCHED_AT: repr(fetched_at),
            STATE: PRESENT}


def vanished_fields(fetched_at: float) -> dict[str, str]:
    """The fields that mark an entry vanished (the rest is left as it was)."""
    return {STATE: VANISHED, FETCHED_AT: repr(fetched_at)}


def decode_entry(fields: Mapping[str, str]) -> StoredEntry | None:
    """The entry in a hash's fields (decoded); None when there are none (no entry).
    Raises `ValueError` when the fields are not an entry of this format."""
    if not fields:
        return None
    try:
        fetched_at = float(fields[FETCHED_AT])
        state = fields[STATE]
        if state == VANISHED:
            return StoredEntry(fetched_at, None)
        if state == PRESENT:
            return StoredEntry(fetched_at, fields[PROPS])
    except KeyError as exc:
        raise ValueError(f"no {exc.args[0]!r} field") from None
    raise ValueError(f"unknown state {state!r}")
