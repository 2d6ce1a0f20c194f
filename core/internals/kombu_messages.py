"""Task messages written to a Redis broker directly, as Celery's `send_task` would write them.

Why: `send_task` costs 0.6-0.7 ms per message, spent in Celery's and kombu's routing,
declaring and publishing code and in two round trips (the message and its `task-sent`
event). On Redis a task message is only a JSON envelope LPUSHed onto a list named after the
queue, and an event the same kind of envelope PUBLISHed on a channel. So we build each one
with Celery's and kombu's own code and write 1,000 per round trip through the broker
channel's own Redis client, which adds `global_keyprefix` as it does for kombu: about
13,000 messages/s with their events. Unlike `send_task`, a failed round trip is not retried
(it raises, as `send_task` does once its retries run out).

What this relies on in kombu's Redis transport (pinned in pyproject.toml; the contract test
tests/integration/test_publish.py compares our messages with the ones `send_task` writes):
- a message is the JSON of the channel's `prepare_message(...)` after its
  `_inplace_augment_message` (body in base64, `body_encoding`, `delivery_tag`,
  `delivery_info` {exchange, routing_key}), as `basic_publish` does;
- a queue with a direct exchange is published through the anonymous exchange, so its
  messages go to the list named after the queue, and a message of priority p > 0 to the
  list of p's step (the channel's `_q_for_pri`: the name, `\x06\x16` and the step; they
  are read steps first, lowest first);
- an event is PUBLISHed on the channel's topic for the `celeryev` fanout exchange.
Other cases return None from `direct_routes` and go through `send_task`: other brokers
(e.g. RabbitMQ), compression, routes that use an exchange or set a priority, and publish
signals with receivers.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from celery import Celery, signals
from celery.events import Event
from celery.utils.time import utcoffset
from kombu.entity import maybe_delivery_mode
from kombu.serialization import dumps as serialize
from kombu.utils.json import dumps as json_dumps
from kombu.utils.uuid import uuid

PUBLISH_CHUNK = 1_000  # messages per round trip to a Redis broker
SENT_EVENT = "task-sent"
SENT_ROUTING_KEY = "task.sent"  # the dispatcher routes an event by its type, "-" as "."


@dataclass(frozen=True)
class Route:
    """Where `send_task` would put a task's message: a queue reached by its name."""

    queue: str
    delivery_mode: int


@dataclass(frozen=True)
class Outgoing:
    """One task message to write: its task, positional args, Flower summary and message
    priority."""

    task: str
    args: list[Any]
    argsrepr: str
    kwargsrepr: str
    priority: int = 0


def direct_routes(celery: Celery, producer: Any, tasks: Iterable[str]) -> dict[str, Route] | None:
    """Each task name's route when every message can be written to Redis directly,
    else None. Declares the queues, as `send_task` does (once per connection)."""
    if not _writes_plain_redis_messages(celery, producer):
        return None
    routes: dict[str, Route] = {}
    for name in set(tasks):
        options = celery.amqp.router.route({}, name)
        queue = options.get("queue")
        if set(options) != {"queue"} or queue.exchange.type != "direct" or queue.expires:
            return None  # an exchange, priority or expiring queue: leave it to kombu
        producer.maybe_declare(queue)
        mode = queue.exchange.delivery_mode or celery.conf.task_default_delivery_mode
        routes[name] = Route(queue.name, maybe_delivery_mode(mode))
    return routes


def _writes_plain_redis_messages(celery: Celery, producer: Any) -> bool:
    hooked = signals.before_task_publish.receivers or signals.after_task_publish.receivers
    return (producer.connection.transport.driver_type == "redis"
            and not celery.conf.task_compression and not hooked)


def write_pipelined(celery: Celery, producer: Any, messages: Sequence[Outgoing],
                    routes: dict[str, Route]) -> None:
    """LPUSH the messages (and PUBLISH their task-sent events), a chunk per round trip.

    A failed chunk raises; messages of earlier chunks stay sent, as with `send_task`.
    """
    builder = TaskMessages.create(celery, producer.channel)
    events = SentEvents.create(celery, producer)
    with producer.channel.conn_or_acquire() as client, \
            client.pipeline(transaction=False) as pipe:
        for start in range(0, len(messages), PUBLISH_CHUNK):
            for message in messages[start:start + PUBLISH_CHUNK]:
                route = routes[message.task]
                envelope, sent_event = builder.envelope(message, route)
                # The list of the message's priority step, as the channel's `_put` picks it.
                pipe.lpush(producer.channel._q_for_pri(route.queue, message.priority), envelope)
                if events is not None and sent_event is not None:
                    events.add(pipe, sent_event, route.queue)
            pipe.execute()


@dataclass(frozen=True)
class TaskMessages:
    """Builds the task messages `send_task` would write (its settings read once)."""

    amqp: Any
    channel: Any
    reply_to: str  # send_task's default: the sending thread's id
    serializer: str
    sent_event: bool

    @classmethod
    def create(cls, celery: Celery, channel: Any) -> TaskMessages:
        conf = celery.conf
        return cls(celery.amqp, channel, celery.thread_oid, conf.task_serializer,
                   bool(conf.task_send_sent_event))

    def envelope(self, message: Outgoing, route: Route) -> tuple[str, dict[str, Any] | None]:
        """One message's envelope, and the fields of its task-sent event (None without)."""
        headers, properties, body, sent_event = self.amqp.create_task_message(
            uuid(), message.task, message.args, None, reply_to=self.reply_to,
            create_sent_event=self.sent_event, argsrepr=message.argsrepr,
            kwargsrepr=message.kwargsrepr,
            ignore_result=None,  # as send_task passes it when the caller gives none
        )
        # send_task passes its remaining options on as properties, these two included.
        properties.update(argsrepr=message.argsrepr, kwargsrepr=message.kwargsrepr,
                          delivery_mode=route.delivery_mode)
        envelope = kombu_envelope(self.channel, body, serializer=self.serializer,
                                  headers=headers, properties=properties, exchange="",
                                  routing_key=route.queue, priority=message.priority)
        return envelope, sent_event


def kombu_envelope(channel: Any, body: Any, *, serializer: str, headers: dict[str, Any],
                   properties: dict[str, Any], exchange: str, routing_key: str,
                   priority: int = 0) -> str:
    """Serialize as `Producer.publish` does, wrap as the Redis channel's `basic_publish`
    does, and return the JSON that its `_put` / `_put_fanout` would write."""
    content_type, content_encoding, payload = serialize(body, serializer=serializer)
    message = channel.prepare_message(payload, priority, content_type, content_encoding,
                                      headers, properties)
    channel._inplace_augment_message(message, exchange, routing_key)
    text: str = json_dumps(message)
    return text


@dataclass(frozen=True)
class QueuedTask:
    """What a message waiting in a Redis queue says: its task's positional args, and the
    ETA of a countdown (None without one)."""

    args: list[Any]
    eta: datetime | None


def read_queued(text: str) -> QueuedTask | None:
    """Read a message as the Redis channel stores it (JSON envelope, base64 JSON body of
    `[args, kwargs, embed]`, `eta` among the headers); None for anything else."""
    try:
        envelope = json.loads(text)
        args = json.loads(base64.b64decode(envelope["body"]))[0]
        eta = envelope["headers"].get("eta")
        return QueuedTask(list(args), datetime.fromisoformat(eta) if eta else None)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return None


@dataclass(frozen=True)
class SentEvents:
    """The `task-sent` events `send_task` publishes (Flower shows a task from then on)."""

    channel: Any
    dispatcher: Any  # a disabled EventDispatcher: its host name, pid, clock and exchange
    topics: list[str]

    @classmethod
    def create(cls, celery: Celery, producer: Any) -> SentEvents | None:
        if not celery.conf.task_send_sent_event:
            return None
        dispatcher = celery.events.Dispatcher(producer.connection, enabled=False)
        channel = producer.channel
        exchange = dispatcher.exchange.name
        # kombu 5.7 may publish a fanout message on several topics; older kombu on one.
        many = getattr(channel, "_get_publish_topics", None)
        topics = (many(exchange, SENT_ROUTING_KEY) if many
                  else [channel._get_publish_topic(exchange, SENT_ROUTING_KEY)])
        return cls(channel, dispatcher, list(topics))

    def add(self, pipe: Any, fields: dict[str, Any], queue: str) -> None:
        """Queue the PUBLISH of one event on ``pipe`` (fields from `create_task_message`)."""
        d = self.dispatcher
        event = Event(SENT_EVENT, hostname=d.hostname, utcoffset=utcoffset(), pid=d.pid,
                      clock=d.clock.forward(),
                      **fields, queue=queue, exchange="", routing_key=queue)
        envelope = kombu_envelope(
            self.channel, event, serializer=d.serializer, headers=d.headers,
            properties={"delivery_mode": maybe_delivery_mode(d.delivery_mode)},
            exchange=d.exchange.name, routing_key=SENT_ROUTING_KEY,
        )
        for topic in self.topics:
            pipe.publish(topic, envelope)
