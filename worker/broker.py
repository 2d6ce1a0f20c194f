"""The Redis broker transport of kombu, with one repair for a broker that goes away.

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

from kombu.transport import redis


class Channel(redis.Channel):  # type: ignore[misc]
    def close(self) -> None:
        if self._in_poll:
            try:
                self._brpop_read()
            except (Empty, *self.connection_errors):
                pass  # the server is gone: there is no reply to read
        super().close()


class Transport(redis.Transport):  # type: ignore[misc]
    Channel = Channel
