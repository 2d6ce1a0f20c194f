"""`mpq metrics`: a Prometheus endpoint with mpq's own figures, where Flower has none.

Serves `http://127.0.0.1:9640/metrics` (MPQ_METRICS_ADDRESS / MPQ_METRICS_PORT):

- the counters the workers keep in `{prefix}metrics` (`worker.metrics`): jobs by kind and
  state, tokens by proxy and type, rate-limiter waits, upstream errors and 429s, stream
  chunks;
- `mpq_queue_length{queue,lane}`: messages waiting in the `inference` and `management`
  queues, per lane (interactive, batch; Redis broker: each lane is a list of its own, read
  under the broker's key prefix);
- `mpq_metrics_up`: 1 when Redis answered this scrape.

Each scrape costs one HGETALL and one pipelined LLEN. `mpq flower` adds the same collector
to Flower's own `/metrics`, so one scrape target can carry both.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import redis
import typer
from prometheus_client import CollectorRegistry, start_wsgi_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from redis.exceptions import RedisError

from core.celery_app import broker_url
from core.contract import RedisHash, decode_hash
from core.dispatch import QUEUES, REDIS_PRIORITIES, Lane
from core.keys import Keys
from core.settings import Settings
from producer.cli_common import EXIT_USAGE, fail
from worker.metrics import METRICS, decode_field

REDIS_CONNECT_TIMEOUT_S = 1.0
REDIS_TIMEOUT_S = 2.0
REDIS_BROKER_SCHEMES = frozenset({"redis", "rediss"})

LabelValues = tuple[str, ...]


def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, decode_responses=True,
                                socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S,
                                socket_timeout=REDIS_TIMEOUT_S)


@dataclass(frozen=True)
class BrokerQueues:
    """Where the Redis broker keeps the lists of our queues."""

    url: str
    keys: Keys

    @classmethod
    def from_settings(cls, settings: Settings) -> BrokerQueues | None:
        """None when the broker is not Redis (RabbitMQ has its own exporter)."""
        url = broker_url(settings)
        if urlparse(url).scheme not in REDIS_BROKER_SCHEMES:
            return None
        return cls(url, Keys(settings.key_prefix))


def counter_samples(raw: RedisHash) -> dict[str, dict[LabelValues, float]]:
    """The hash's fields grouped by metric, label values in the order of its spec."""
    grouped: dict[str, dict[LabelValues, float]] = {name: {} for name in METRICS}
    for field, value in decode_hash(raw).items():
        decoded = decode_field(field)
        if decoded is None:
            continue
        metric, labels = decoded
        spec = METRICS[metric]
        grouped[metric][tuple(labels[name] for name in spec.labels)] = int(value) * spec.scale
    return grouped


class MpqCollector:
    """A prometheus_client collector reading the cluster-wide counters at each scrape."""

    def __init__(self, settings: Settings) -> None:
        if not settings.redis_url:
            raise ValueError("no Redis: set MPQ_REDIS_URL (or REDIS_URL)")
        self._store = _client(settings.redis_url)
        self._key = Keys(settings.key_prefix).metrics()
        self._queues = BrokerQueues.from_settings(settings)
        self._broker = (None if self._queues is None else self._store
                        if self._queues.url == settings.redis_url else _client(self._queues.url))

    def describe(self) -> Iterator[Metric]:
        yield from self._counters({name: {} for name in METRICS})
        yield from self._gauges({}, up=True)

    def collect(self) -> Iterator[Metric]:
        try:
            counters = counter_samples(self._store.hgetall(self._key))
            lengths = self._queue_lengths()
        except RedisError:
            yield from self._gauges({}, up=False)
            return
        yield from self._counters(counters)
        yield from self._gauges(lengths, up=True)

    def _queue_lengths(self) -> dict[LabelValues, int]:
        if self._queues is None or self._broker is None:
            return {}
        lists = [(queue, lane) for queue in QUEUES for lane in Lane]
        pipe = self._broker.pipeline(transaction=False)
        for queue, lane in lists:
            pipe.llen(self._queues.keys.broker_queue(queue, REDIS_PRIORITIES[lane]))
        return dict(zip(lists, pipe.execute(), strict=True))

    @staticmethod
    def _counters(samples: dict[str, dict[LabelValues, float]]) -> Iterable[Metric]:
        for name, spec in METRICS.items():
            family = CounterMetricFamily(name, spec.help, labels=list(spec.labels))
            for values, amount in sorted(samples[name].items()):
                family.add_metric(list(values), amount)
            yield family

    @staticmethod
    def _gauges(lengths: dict[LabelValues, int], *, up: bool) -> Iterable[Metric]:
        queue = GaugeMetricFamily("mpq_queue_length", "Messages waiting in each queue, by "
                                  "lane (Redis broker).", labels=["queue", "lane"])
        for labels, length in sorted(lengths.items()):
            queue.add_metric(list(labels), length)
        yield queue
        yield GaugeMetricFamily("mpq_metrics_up", "1 when Redis answered this scrape.",
                                value=1 if up else 0)


@dataclass
class MetricsServer:
    """A running exporter; `port` is the bound one (useful with port 0)."""

    server: Any
    thread: threading.Thread
    address: str

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}/metrics"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def serve_metrics(settings: Settings, *, address: str | None = None,
                  port: int | None = None) -> MetricsServer:
    """Start the exporter in a background thread (own registry: mpq's figures only)."""
    registry = CollectorRegistry()
    registry.register(MpqCollector(settings))
    bind = settings.metrics_address if address is None else address
    bind_port = settings.metrics_port if port is None else port
    server, thread = start_wsgi_server(bind_port, addr=bind, registry=registry)
    return MetricsServer(server, thread, bind)


def metrics_command(
    address: str | None = typer.Option(
        None, help="Address to bind (default: MPQ_METRICS_ADDRESS or 127.0.0.1)."),
    port: int | None = typer.Option(
        None, min=0, help="Port (default: MPQ_METRICS_PORT or 9640)."),
) -> None:
    """Serve mpq's Prometheus metrics (jobs, tokens, rate-limit waits, 429s, chunks)."""
    settings = Settings()
    if not settings.redis_url:
        fail("no Redis: set MPQ_REDIS_URL (or REDIS_URL)", EXIT_USAGE)
    server = serve_metrics(settings, address=address, port=port)
    typer.echo(f"mpq metrics at {server.url}")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()


if __name__ == "__main__":
    typer.run(metrics_command)
