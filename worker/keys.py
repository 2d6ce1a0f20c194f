"""Every Redis key mpq uses, built in one place.

Layout (``P`` is the prefix, ``mpq:`` by default)::

    P job:{id}              hash    the job record
    P job:{id}:chunks       stream  streamed output, one entry per chunk
    P batch:{id}            hash    counts per status, batch status
    P batch:{id}:jobs       list    job ids in input order
    P batch:{id}:events     stream  one entry per finished job
    P proxy:{name}          hash    cached proxy state
    P proxy:{name}:cooldown string  shared 429 cool-down
    P rl:{name}:{kind}      any     rate-limiter state
    P lock:{name}           string  distributed locks
"""

from __future__ import annotations

from dataclasses import dataclass

# Ids and names are joined with ':'; one containing ':' could name another key
# (job "x:chunks" would be the chunk stream of job "x").
_SEPARATOR = ":"


def _part(value: str, what: str) -> str:
    if not value or _SEPARATOR in value:
        raise ValueError(f"{what} must be non-empty and contain no ':' (got {value!r})")
    return value


@dataclass(frozen=True, slots=True)
class Keys:
    """Builds the Redis keys under one prefix."""

    prefix: str = "mpq:"

    def __post_init__(self) -> None:
        if not self.prefix.endswith(_SEPARATOR):
            raise ValueError(f"key prefix must end with ':' (got {self.prefix!r})")

    def pattern(self) -> str:
        """SCAN pattern matching every key under this prefix."""
        return f"{self.prefix}*"

    def job(self, job_id: str) -> str:
        return f"{self.prefix}job:{_part(job_id, 'job id')}"

    def job_chunks(self, job_id: str) -> str:
        return f"{self.job(job_id)}:chunks"

    def batch(self, batch_id: str) -> str:
        return f"{self.prefix}batch:{_part(batch_id, 'batch id')}"

    def batch_jobs(self, batch_id: str) -> str:
        return f"{self.batch(batch_id)}:jobs"

    def batch_events(self, batch_id: str) -> str:
        return f"{self.batch(batch_id)}:events"

    def batch_invalid(self, batch_id: str) -> str:
        """Input lines refused at submission, kept for the batch's errors file."""
        return f"{self.batch(batch_id)}:invalid"

    def batches(self) -> str:
        """Index of batches by creation time (a sorted set)."""
        return f"{self.prefix}batches"

    def proxy(self, name: str) -> str:
        return f"{self.prefix}proxy:{_part(name, 'proxy name')}"

    def proxy_cooldown(self, name: str) -> str:
        return f"{self.proxy(name)}:cooldown"

    def ratelimit(self, name: str, kind: str) -> str:
        return f"{self.prefix}rl:{_part(name, 'proxy name')}:{_part(kind, 'limit kind')}"

    def open_jobs(self) -> str:
        """Jobs not final yet, scored by when they were last seen waiting (ms)."""
        return f"{self.prefix}jobs:open"

    def cancels(self) -> str:
        """A counter bumped by every cancel: running attempts look for theirs when it moves."""
        return f"{self.prefix}jobs:cancels"

    def reader_wake(self, reader_id: str) -> str:
        """A stream reader's private wake-up stream (producer/stream_reader.py)."""
        return f"{self.prefix}reader:{_part(reader_id, 'reader id')}:wake"

    def lock(self, name: str) -> str:
        return f"{self.prefix}lock:{_part(name, 'lock name')}"
