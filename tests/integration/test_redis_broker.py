"""Contract of the broker transport (core/internals/redis_broker.py) with the kombu pinned in
pyproject.toml: one sync client per channel, and a channel whose broker went away while
its BRPOP waited closes cleanly, twice (Celery closes it again after kombu did)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kombu import Connection, Consumer, Queue

from core.celery_app import REDIS_TRANSPORT
from core.embedded_redis import EmbeddedRedis

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def server() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis() as embedded:
        yield embedded


def connect(url: str) -> Connection:
    return Connection(url, transport=REDIS_TRANSPORT, transport_options={
        "global_keyprefix": "mpq-broker-test:"})


def test_the_channel_keeps_one_client_per_pool(server: EmbeddedRedis) -> None:
    with connect(server.url) as connection:
        channel = connection.default_channel
        first = channel._create_client()
        assert channel._create_client() is first
        with channel.conn_or_acquire() as client:  # how kombu acks and records unacked
            assert client is first
        channel._pool = None  # what a reconnect does: a new pool, so a new client
        assert channel._create_client() is not first


def test_a_channel_closes_twice_after_its_broker_died_during_brpop(
    server: EmbeddedRedis,
) -> None:
    """As a worker with free slots has it: a BRPOP sent, its reply awaited by the event
    loop, when the broker goes away."""
    connection = connect(server.url)
    channel = connection.channel()
    queue = Queue("mpq-broker-test-q", channel=channel)
    queue.declare()
    Consumer(channel, [queue], accept=["json"]).consume()
    poller = connection.transport.cycle
    poller.add(channel)
    poller.on_poll_start()  # sends the BRPOP; the event loop would read its reply
    assert channel._in_poll
    server.stop()

    channel.close()  # kombu's Connection.collect closes it once …
    assert channel.closed
    channel.close()  # … and Celery's connection.close() again: neither may raise
