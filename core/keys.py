"""Every Redis key mpq uses, built in one place.

Layout (``P`` is the prefix, ``mpq:`` by default)::

    P job:{id}              hash    the job record
    P job:{id}:chunks       stream  streamed output, one entry per chunk
    P job:{id}:vectors      hash    an embeddings job's vectors: raw float32, in pieces
    P batch:{id}            hash    counts per status, batch status
    P batch:{id}:jobs       list    job ids in input order
    P batch:{id}:events     stream  one entry per finished job
    P batch:{id}:invalid    list    input lines refused at submission
    P batch:{id}:pending:{proxy}  list  a batch's lines for one proxy not given to the broker yet
    P batches               zset    batch ids by creation time
    P jobs:open             zset    jobs not final yet, by when last seen waiting
    P jobs:cancels          string  bumped by every cancel
    P proxy:{name}          hash    cached proxy state
    P proxies               set     names of the proxies cached as present
    P rl:{name}:{part}      any     rate-limiter state (buckets, leases, cool-down)
    P reader:{id}:wake      stream  wakes one stream reader's blocking read
    P lock:{name}           string  distributed locks
    P feed:flows            zset    "{batch}:{proxy}" flows with pending lines, by virtual time
    P feed:clock            string  the feeder's virtual time (core/lua/feed_lines.lua)
    P feed:inflight         zset    batch lines given to the broker, not final yet, by when
    P feed:by_proxy         hash    how many of those each proxy has
    P feed:pause:{proxy}    string  the proxy is not fed until this key expires
    P feed:cap:{proxy}      string  lines in flight at which the proxy last ran out of permits
    P feed:workers          zset    worker processes by when their registration expires
    P feed:slots            hash    each registered worker process's slots
    P metrics               hash    counters for the metrics exporter
    P gw:key:{digest}       string  a gateway API key's id, by the key's SHA-256
    P gw:keys               hash    gateway API key ids to their description (JSON)
    P gw:file:{id}          hash    a gateway file: its OpenAI file object and owner
    P gw:file:{id}:data     list    a gateway file's content, in pieces
    P gw:files:{owner}      zset    one API key's files by creation time
    P gw:batch:{id}         hash    a gateway batch: its OpenAI batch object and owner
    P gw:batches:{owner}    zset    one API key's batches by creation time
    P gw:batches:open       zset    gateway batches not ended yet, by expiry time
    P gw:interactive        zset    the gateway's direct-call jobs in flight, by start time
    P broker:{queue}        list    Celery's Redis broker: a queue's messages (priority 0)
    P broker:{queue}\\x06\\x16{step} list  the same queue's messages of a priority step > 0
    P broker:unacked        hash    Celery's Redis broker: messages taken, not acked yet
    P broker:…              any     the rest of the broker's keys (kombu names them)
"""

from __future__ import annotations

from dataclasses import dataclass

# A proxy's rate-limiter keys in the order limiter.lua takes them (its KEYS).
LIMITER_PARTS = ("rpm", "tpm", "tps", "tph", "tpd", "leases", "cooldown")
LimiterKeys = tuple[str, ...]

# kombu's Redis transport names the list of a queue's messages of priority step p > 0 with
# this between the queue's name and p (its Channel.sep and _q_for_pri).
BROKER_PRIORITY_SEPARATOR = "\x06\x16"

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

    def job_vectors(self, job_id: str) -> str:
        """An embeddings job's vectors as bytes (core/embeddings.py), kept as long as its
        record."""
        return f"{self.job(job_id)}:vectors"

    def batch(self, batch_id: str) -> str:
        return f"{self.prefix}batch:{_part(batch_id, 'batch id')}"

    def batch_jobs(self, batch_id: str) -> str:
        return f"{self.batch(batch_id)}:jobs"

    def batch_events(self, batch_id: str) -> str:
        return f"{self.batch(batch_id)}:events"

    def batch_invalid(self, batch_id: str) -> str:
        """Input lines refused at submission, kept for the batch's errors file."""
        return f"{self.batch(batch_id)}:invalid"

    def batch_pending(self, batch_id: str, proxy: str) -> str:
        """A batch's lines for one proxy that the feeder has not given to the broker yet
        (core/feed.py), in input order."""
        return f"{self.batch(batch_id)}:pending:{_part(proxy, 'proxy name')}"

    def feed(self, name: str) -> str:
        """The feeder's own keys (core/feed.py): flows, clock, inflight, workers, slots."""
        return f"{self.prefix}feed:{_part(name, 'feed key')}"

    def feed_proxy(self, name: str, proxy: str) -> str:
        """The feeder's per-proxy keys: `pause` and `cap`."""
        return f"{self.feed(name)}:{_part(proxy, 'proxy name')}"

    def batches(self) -> str:
        """Index of batches by creation time (a sorted set)."""
        return f"{self.prefix}batches"

    def proxy(self, name: str) -> str:
        return f"{self.prefix}proxy:{_part(name, 'proxy name')}"

    def proxies(self) -> str:
        """The names of the proxies cached as present (core/proxy_entries.py)."""
        return f"{self.prefix}proxies"

    def limiter(self, name: str) -> LimiterKeys:
        """A proxy's rate-limiter state, in the order of ``LIMITER_PARTS``."""
        base = f"{self.prefix}rl:{_part(name, 'proxy name')}"
        return tuple(f"{base}:{part}" for part in LIMITER_PARTS)

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

    def gateway_key(self, digest: str) -> str:
        """A gateway API key's id, found by the SHA-256 of the key (the key is not kept)."""
        return f"{self.prefix}gw:key:{_part(digest, 'key digest')}"

    def gateway_keys(self) -> str:
        return f"{self.prefix}gw:keys"

    def gateway_file(self, file_id: str) -> str:
        return f"{self.prefix}gw:file:{_part(file_id, 'file id')}"

    def gateway_file_data(self, file_id: str) -> str:
        return f"{self.gateway_file(file_id)}:data"

    def gateway_files(self, owner: str) -> str:
        return f"{self.prefix}gw:files:{_part(owner, 'owner')}"

    def gateway_batch(self, batch_id: str) -> str:
        return f"{self.prefix}gw:batch:{_part(batch_id, 'batch id')}"

    def gateway_batches(self, owner: str) -> str:
        return f"{self.prefix}gw:batches:{_part(owner, 'owner')}"

    def gateway_open_batches(self) -> str:
        return f"{self.prefix}gw:batches:open"

    def gateway_interactive(self) -> str:
        return f"{self.prefix}gw:interactive"

    def metrics(self) -> str:
        """The hash of counters the workers add to and the exporter reads."""
        return f"{self.prefix}metrics"

    def broker_prefix(self) -> str:
        """kombu's ``global_keyprefix``: every key of the Redis broker starts with it."""
        return f"{self.prefix}broker:"

    def broker_queue(self, queue: str, priority: int = 0) -> str:
        """A broker queue's list of messages of one priority step (core/dispatch.py: the
        interactive lane is 0, the queue's own list; batch lines are 9)."""
        key = f"{self.broker_prefix()}{_part(queue, 'queue name')}"
        return f"{key}{BROKER_PRIORITY_SEPARATOR}{priority}" if priority else key

    def broker_unacked(self) -> str:
        """The broker's hash of messages delivered but not acked yet."""
        return f"{self.broker_prefix()}unacked"
