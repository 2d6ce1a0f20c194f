"""Pure tests of the lanes: which jobs are interactive, and what each broker gets."""

from __future__ import annotations

from core.celery_app import celery_config, consumed_queues
from core.contract import JobKind, JobRecord
from core.dispatch import (
    INFERENCE_QUEUE,
    MANAGEMENT_QUEUE,
    TASK_NAMES,
    Lane,
    broker_queue_names,
    job_summary,
    lane_of,
    message_for,
    message_priority,
)
from core.settings import Settings

RABBITMQ = "amqp://guest:guest@127.0.0.1:5672//"


def chat(batch_id: str | None = None) -> JobRecord:
    return JobRecord(id="j1", kind=JobKind.CHAT, proxy="p", batch_id=batch_id, request={})


def test_a_job_without_a_batch_is_interactive_and_a_batch_line_is_not() -> None:
    assert lane_of(chat()) == Lane.INTERACTIVE
    assert lane_of(chat("b1")) == Lane.BATCH
    assert job_summary(chat()) == "proxy=p lane=interactive job=j1"
    assert job_summary(chat("b1")) == "proxy=p batch=b1 job=j1"


def test_interactive_goes_first_on_each_broker() -> None:
    # kombu's Redis transport: lowest first; an AMQP queue with x-max-priority: highest.
    assert message_priority(Lane.INTERACTIVE, redis=True) < message_priority(Lane.BATCH,
                                                                            redis=True)
    assert message_priority(Lane.INTERACTIVE, redis=False) > message_priority(Lane.BATCH,
                                                                             redis=False)
    assert message_for(chat("b1")).priority == 9
    assert message_for(chat()).priority == 0
    assert message_for(chat(), redis=False).priority == 1


def test_redis_keeps_its_queue_names() -> None:
    config = celery_config(Settings(redis_url="redis://127.0.0.1:1/0"))
    assert [q.name for q in config["task_queues"]] == [INFERENCE_QUEUE, MANAGEMENT_QUEUE]
    assert all(not q.queue_arguments for q in config["task_queues"])
    assert config["task_routes"][TASK_NAMES[JobKind.CHAT]] == {"queue": INFERENCE_QUEUE}
    assert consumed_queues(Settings(redis_url="redis://127.0.0.1:1/0"),
                           "inference,management") == "inference,management"


def test_amqp_takes_a_new_priority_queue_for_inference() -> None:
    """A queue keeps the arguments it was first declared with: an older `inference` queue
    cannot gain x-max-priority, so lanes need a queue of their own."""
    settings = Settings(redis_url="redis://127.0.0.1:1/0", broker_url=RABBITMQ)
    config = celery_config(settings)
    queues = {q.name: q.queue_arguments for q in config["task_queues"]}
    assert queues == {"inference.lanes": {"x-max-priority": 1}, MANAGEMENT_QUEUE: None}
    assert config["task_default_queue"] == "inference.lanes"
    assert config["task_routes"][TASK_NAMES[JobKind.EMBEDDINGS]] == {"queue": "inference.lanes"}
    assert config["task_routes"][TASK_NAMES[JobKind.MGMT_GET]] == {"queue": MANAGEMENT_QUEUE}
    assert consumed_queues(settings, "inference,management") == "inference.lanes,management"
    assert broker_queue_names("management", redis=False) == "management"
