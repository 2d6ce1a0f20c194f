"""The job contract shared by worker and producer.

A job record lives in Redis as a flat hash of strings: scalar fields as plain
text (so Lua scripts and ``HGET`` read them directly), nested fields as JSON,
``None`` as an absent field. Nothing here touches Redis; `core.store` does.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
import uuid
from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, model_validator

# A hash reply: str or bytes keys and values, with or without decode_responses.
RedisHash = Mapping[Any, Any]
# Validation context of records read back from Redis (see `JobRecord._check_proxy`).
_STORED: dict[str, bool] = {"stored": True}


class JobKind(StrEnum):
    CHAT = "chat"
    RESPONSES = "responses"
    EMBEDDINGS = "embeddings"
    MGMT_CREATE = "mgmt_create"
    MGMT_UPDATE = "mgmt_update"
    MGMT_DELETE = "mgmt_delete"
    MGMT_GET = "mgmt_get"
    MGMT_LIST = "mgmt_list"
    MGMT_REFRESH = "mgmt_refresh"
    MGMT_WAIT = "mgmt_wait"

    @property
    def is_management(self) -> bool:
        return self.value.startswith("mgmt_")


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    # Set below: members cannot be named in the class body that defines them.
    FINAL: ClassVar[frozenset[JobStatus]]

    @property
    def is_final(self) -> bool:
        return self in JobStatus.FINAL


# The statuses a job never leaves; lua/job_common.lua lists the same three.
JobStatus.FINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
FINAL = JobStatus.FINAL


class BatchStatus(StrEnum):
    IN_PROGRESS = "in_progress"
    FINISHED = "finished"


def new_id() -> str:
    """A job or batch id: hex only, so it is safe in keys and SCAN patterns."""
    return uuid.uuid4().hex


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _storable(value: str) -> str:
    """Redis clients write text as UTF-8, which has no lone surrogates (JSON's "\\ud800"
    and surrogate-escaped argv bytes make them): refuse them here, not at the write."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"unpaired surrogate at character {exc.start}") from None
    return value


# Plain-text fields of a record (the JSON fields are stored escaped, so any str is fine there).
Text = Annotated[str, AfterValidator(_storable)]


# Proxy names: a conservative subset of what AgentRun accepts for resource names. They end up
# in URL paths, Redis keys, SCAN patterns and metric labels, so nothing that needs quoting.
PROXY_NAME_MAX_CHARS = 64
PROXY_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
PROXY_NAME_RULE = "use letters, digits, - and _ (at most 64), starting with a letter or digit"
# The proxy of jobs about every proxy (list, refresh): never a name, since '*' is not in it.
ALL_PROXIES = "*"
_ALL_PROXIES_KINDS = frozenset({JobKind.MGMT_LIST, JobKind.MGMT_REFRESH})


def _shown_name(name: str) -> str:
    """The name quoted for a message: escapes for controls and lone surrogates, cut short."""
    cut = name if len(name) <= PROXY_NAME_MAX_CHARS else name[:PROXY_NAME_MAX_CHARS] + "…"
    return json.dumps(cut, ensure_ascii=False).encode("utf-8", "backslashreplace").decode()


def check_proxy_name(name: object) -> str:
    """`name` if it follows the proxy name rule, else `ValueError` saying the rule."""
    if isinstance(name, str) and PROXY_NAME_PATTERN.fullmatch(name):
        return name
    shown = _shown_name(name) if isinstance(name, str) else type(name).__name__
    raise ValueError(f"proxy name {shown} is not valid: {PROXY_NAME_RULE}")


def check_job_proxy(kind: JobKind, proxy: str) -> str:
    """A job's proxy: a valid name, or `ALL_PROXIES` for the jobs about every proxy."""
    if proxy == ALL_PROXIES and kind in _ALL_PROXIES_KINDS:
        return proxy
    return check_proxy_name(proxy)


def decode_hash(raw: RedisHash) -> dict[str, str]:
    """Accept replies from clients with or without ``decode_responses``."""
    return {_text(k): _text(v) for k, v in raw.items()}


class JobRecord(BaseModel):
    """One job: what to run, and what became of it."""

    model_config = ConfigDict(extra="ignore")

    JSON_FIELDS: ClassVar[frozenset[str]] = frozenset({"request", "result", "errors", "usage",
                                                       "upstream_error"})

    id: Text = Field(default_factory=new_id, min_length=1)
    kind: JobKind
    proxy: Text
    request: dict[str, Any]
    status: JobStatus = JobStatus.QUEUED
    attempt: int = Field(default=0, ge=0)
    result: dict[str, Any] | None = None
    error: Text | None = None
    errors: list[Text] = Field(default_factory=list)  # one per failed attempt, in order
    usage: dict[str, Any] | None = None
    # What the upstream said to the latest attempt: its request id (success or failure), and
    # when it refused the request, the HTTP status and its error object (OpenAI's `error`).
    upstream_request_id: Text | None = None
    upstream_status: int | None = None
    upstream_error: dict[str, Any] | None = None
    batch_id: Text | None = None
    custom_id: Text | None = None
    created_at: float = Field(default_factory=time.time)
    started_at: float | None = None  # start of the latest attempt
    finished_at: float | None = None
    worker: Text | None = None

    @model_validator(mode="after")
    def _check_proxy(self, info: ValidationInfo) -> Self:
        # New jobs only: a record stored before the rule stays readable (to show or cancel).
        if info.context is not _STORED:
            check_job_proxy(self.kind, self.proxy)
        return self

    def to_redis(self) -> dict[str, str]:
        """Flat hash fields; ``None`` fields are left out (HSET cannot store None)."""
        out: dict[str, str] = {}
        for name, value in self.model_dump(mode="json").items():
            if value is None:
                continue
            if name in self.JSON_FIELDS:
                out[name] = json.dumps(value, separators=(",", ":"))
            else:
                out[name] = str(value)
        return out

    @classmethod
    def from_redis(cls, raw: RedisHash) -> Self:
        fields: dict[str, Any] = decode_hash(raw)
        for name in cls.JSON_FIELDS & fields.keys():
            # Bad JSON is left as text, which validation refuses like any other bad value.
            with contextlib.suppress(ValueError, RecursionError):
                fields[name] = json.loads(fields[name])
        return cls.model_validate(fields, context=_STORED)


class BatchRecord(BaseModel):
    """A batch's progress, as kept in the ``batch:{id}`` hash."""

    id: str
    total: int = 0
    counts: dict[JobStatus, int] = Field(default_factory=dict)
    status: BatchStatus = BatchStatus.IN_PROGRESS
    created_at: float | None = None
    finished_at: float | None = None
    name: str | None = None  # e.g. the input file's name
    invalid: int = 0  # input lines refused at submission (not in total)
    submitting: bool = False  # its producer is still adding jobs (it cannot finish yet)
    priority: int = 1  # its weight when batches share the slots (core/feed.py)
    # Its share of the slots now, among the batches with lines waiting to run: set by
    # listings (`Client.batches`), None when it has none waiting.
    share: float | None = None

    @property
    def done(self) -> int:
        """How many jobs reached a final status."""
        return sum(self.counts.get(status, 0) for status in FINAL)

    @classmethod
    def from_redis(cls, batch_id: str, raw: RedisHash) -> Self:
        fields = decode_hash(raw)
        # Validated as text, so a bad counter is a ValidationError like any other field.
        counts = {status: fields.get(status.value, 0) for status in JobStatus}
        return cls.model_validate(
            {
                "id": batch_id,
                "total": fields.get("total", 0),
                "counts": counts,
                "status": fields.get("status", BatchStatus.IN_PROGRESS),
                "created_at": fields.get("created_at"),
                "finished_at": fields.get("finished_at"),
                "name": fields.get("name"),
                "invalid": fields.get("invalid", 0),
                "submitting": fields.get("sealed") == "0",
                "priority": fields.get("priority", 1),
            }
        )


ChunkKind = Literal["delta", "done", "error"]


class ChunkEntry(BaseModel):
    """One entry of a job's chunk stream; ``data`` is a JSON document as text.

    Every attempt numbers its chunks from ``seq`` 0, so a consumer that sees a
    new ``attempt`` knows the earlier attempt's output is void.
    """

    attempt: int = Field(ge=0)
    seq: int = Field(ge=0)
    kind: ChunkKind
    data: str = "null"

    def to_redis(self) -> dict[str, str]:
        return {
            "attempt": str(self.attempt),
            "seq": str(self.seq),
            "kind": self.kind,
            "data": self.data,
        }

    def payload(self) -> Any:
        """``data`` decoded."""
        return json.loads(self.data)

    @classmethod
    def from_redis(cls, raw: RedisHash) -> Self:
        return cls.model_validate(decode_hash(raw))
