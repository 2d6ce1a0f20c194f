"""Putting jobs on the queue: records first (pipelined), then one small message per job
carrying only its id, with a one-line summary that Flower shows as the task's args.

Why messages for a Redis broker are written to Redis directly: `send_task` costs 0.6-0.7 ms
per message here (about 1,500 messages/s), spent in Celery's and kombu's routing, declaring
and publishing code and in two round trips, one for the message and one for its `task-sent`
event. On Redis a task message is only a JSON envelope LPUSHed onto a list named after the
queue, and an event the same kind of envelope PUBLISHed on a channel. So we build each one
with Celery's and kombu's own code and write 1,000 jobs' worth per round trip through the
broker channel's own Redis client, which adds `global_keyprefix` as it does for kombu: about
13,000 messages/s with their events. Unlike `send_task`, a failed round trip is not retried
(it raises, as `send_task` does once its retries run out).

What we rely on in kombu's Redis format (tests/integration/test_publish.py compares our
messages with the ones `send_task` writes):
- a message is the JSON of the channel's `prepare_message(...)` after its
  `_inplace_augment_message` (body in base64, `body_encoding`, `delivery_tag`,
  `delivery_info` {exchange, routing_key}), as `basic_publish` does;
- a queue with a direct exchange is published through the anonymous exchange, so its
  messages go to the list named after the queue (priority 0 has no suffix);
- an event is PUBLISHed on the channel's topic for the `celeryev` fanout exchange.
Other cases go through `send_task`: other brokers (e.g. RabbitMQ), compression, routes that
use an exchange or set a priority, and publish signals with receivers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from celery import Celery, signals
from celery.events import Event
from celery.utils.time import utcoffset
from kombu.entity import maybe_delivery_mode
from kombu.serialization import dumps as serialize
from kombu.utils.json import dumps as json_dumps
from kombu.utils.uuid import uuid

from worker.contract import JobRecord
from worker.store import JobStore
from worker.tasks import TASK_NAMES

SUMMARY_TEXT_MAX = 40
PUBLISH_CHUNK = 1_000  # messages per round trip to a Redis broker
# Records stored and published per round, the first round small: the first jobs start
# after ~35 ms, not after the whole input is stored (0.26 s for 5,000 lines here).
ENQUEUE_FIRST_ROUND = 100
ENQUEUE_ROUND = 1_000
KWARGSREPR = "{}"
SENT_EVENT = "task-sent"
SENT_ROUTING_KEY = "task.sent"  # the dispatcher routes an event by its type, "-" as "."


def job_summary(record: JobRecord) -> str:
    """custom_id, proxy, model, batch and job id — never the prompt or a secret. The short,
    telling parts come first: Flower's args column shows only the start."""
    parts = []
    if record.custom_id:
        parts.append(f"custom_id={record.custom_id[:SUMMARY_TEXT_MAX]}")
    parts.append(f"proxy={record.proxy}")
    model = record.request.get("model")
    if isinstance(model, str) and model:
        parts.append(f"model={model[:SUMMARY_TEXT_MAX]}")
    if record.batch_id:
        parts.append(f"batch={record.batch_id}")
    parts.append(f"job={record.id}")
    return " ".join(parts)


def publish(celery: Celery, records: Sequence[JobRecord]) -> None:
    """Send one message per job over one producer connection: pipelined on Redis."""
    if not records:
        return
    with celery.producer_or_acquire() as producer:
        routes = direct_routes(celery, producer, records)
        if routes is None:
            send_each(celery, producer, records)
        else:
            write_pipelined(celery, producer, records, routes)


def send_each(celery: Celery, producer: Any, records: Sequence[JobRecord]) -> None:
    """The general path: `send_task` per job, for any broker."""
    for record in records:
        celery.send_task(
            TASK_NAMES[record.kind], args=[record.id], argsrepr=job_summary(record),
            kwargsrepr=KWARGSREPR, producer=producer,
        )


# -- the Redis path -------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    """Where `send_task` would put a task's message: a queue reached by its name."""

    queue: str
    delivery_mode: int


def direct_routes(celery: Celery, producer: Any,
                  records: Sequence[JobRecord]) -> dict[str, Route] | None:
    """Each task name's route when every message can be written to Redis directly,
    else None. Declares the queues, as `send_task` does (once per connection)."""
    if not _writes_plain_redis_messages(celery, producer):
        return None
    routes: dict[str, Route] = {}
    for name in {TASK_NAMES[record.kind] for record in records}:
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


def write_pipelined(celery: Celery, producer: Any, records: Sequence[JobRecord],
                    routes: dict[str, Route]) -> None:
    """LPUSH the messages (and PUBLISH their task-sent events), a chunk per round trip.

    A failed chunk raises; messages of earlier chunks stay sent, as with `send_task`.
    """
    messages = TaskMessages.create(celery, producer.channel)
    events = SentEvents.create(celery, producer)
    with producer.channel.conn_or_acquire() as client, \
            client.pipeline(transaction=False) as pipe:
        for start in range(0, len(records), PUBLISH_CHUNK):
            for record in records[start:start + PUBLISH_CHUNK]:
                route = routes[TASK_NAMES[record.kind]]
                envelope, sent_event = messages.envelope(record, route)
                pipe.lpush(route.queue, envelope)
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

    def envelope(self, record: JobRecord, route: Route) -> tuple[str, dict[str, Any] | None]:
        """One job's message, and the fields of its task-sent event (None without)."""
        summary = job_summary(record)
        headers, properties, body, sent_event = self.amqp.create_task_message(
            uuid(), TASK_NAMES[record.kind], [record.id], None, reply_to=self.reply_to,
            create_sent_event=self.sent_event, argsrepr=summary, kwargsrepr=KWARGSREPR,
            ignore_result=None,  # as send_task passes it when the caller gives none
        )
        # send_task passes its remaining options on as properties, these two included.
        properties.update(argsrepr=summary, kwargsrepr=KWARGSREPR,
                          delivery_mode=route.delivery_mode)
        envelope = kombu_envelope(self.channel, body, serializer=self.serializer,
                                  headers=headers, properties=properties, exchange="",
                                  routing_key=route.queue)
        return envelope, sent_event


def kombu_envelope(channel: Any, body: Any, *, serializer: str, headers: dict[str, Any],
                   properties: dict[str, Any], exchange: str, routing_key: str) -> str:
    """Serialize as `Producer.publish` does, wrap as the Redis channel's `basic_publish`
    does, and return the JSON that its `_put` / `_put_fanout` would write."""
    content_type, content_encoding, payload = serialize(body, serializer=serializer)
    message = channel.prepare_message(payload, 0, content_type, content_encoding, headers,
                                      properties)
    channel._inplace_augment_message(message, exchange, routing_key)
    text: str = json_dumps(message)
    return text


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


async def enqueue(
    store: JobStore, celery: Celery, records: Sequence[JobRecord], batch_id: str | None = None
) -> list[JobRecord]:
    """Store the records and publish them in rounds: workers start on the first round while
    the others go in (a record always exists before its message).

    A batch cannot finish before the last round is in: with more than one round it is held
    open meanwhile, unless its producer holds it already (`open_batch`, then `seal_batch`
    after the last call). One round is written atomically and needs no hold.
    """
    several_rounds = len(records) > ENQUEUE_FIRST_ROUND
    held = batch_id is not None and several_rounds and await store.hold_batch(batch_id)
    stored: list[JobRecord] = []
    size = ENQUEUE_FIRST_ROUND
    while len(stored) < len(records):
        round_ = await store.create_jobs(records[len(stored):len(stored) + size], batch_id)
        await asyncio.to_thread(publish, celery, round_)
        stored += round_
        size = ENQUEUE_ROUND
    if held:
        assert batch_id is not None  # held only with a batch
        await store.seal_batch(batch_id)
    return stored


async def cancel_batch(store: JobStore, batch_id: str) -> int:
    """Cancel every job of a batch that is not final yet; returns how many were. The batch
    is sealed too: one whose producer died while adding jobs would never finish."""
    ids = await store.batch_job_ids(batch_id)
    results = await asyncio.gather(*(store.cancel(job_id) for job_id in ids))
    await store.seal_batch(batch_id)
    return sum(results)
