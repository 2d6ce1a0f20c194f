"""The Redis broker transport of kombu, with a repair for a broker that goes away and a
fix for a hot spot.

One client per channel: kombu builds a new redis-py client for every ack, every unacked
record and every event it publishes (`conn_or_acquire`), and building one (its response
callback table) cost ~15 % of a busy worker's CPU. A client is thread-safe (each command
takes a connection from the pool), so the channel keeps one per pool.

kombu 5.7 (with Celery 5.7): when the connection drops while a BRPOP is waiting (the worker
has free slots), `Channel.close` raises on reading that BRPOP's reply before it marks the
channel closed; `Connection.collect` swallows that, drops the transport, and Celery's next
`connection.close()` closes the channel again: restoring its unacked messages then needs
the dropped transport and raises AttributeError, which Celery does not ignore: "Unrecoverable
error", the worker shuts down. Reading the reply here, ignoring connection errors, lets the
first close finish.
"""

from __future__ import annotations

from queue import Empty
from typing import Any

from kombu.transport import redis


class Channel(redis.Channel):  # type: ignore[misc]
    _sync_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)
        pool = self.pool  # a new one after a reconnect: then a new client too
        if self._sync_client is None or self._sync_client.connection_pool is not pool:
            self._sync_client = super()._create_client()
        return self._sync_client

    def close(self) -> None:
        if self._in_poll:
            try:
                self._brpop_read()
            except (Empty, *self.connection_errors):
                pass  # the server is gone: there is no reply to read
        super().close()


class Transport(redis.Transport):  # type: ignore[misc]
    Channel = Channel
