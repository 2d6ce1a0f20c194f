"""mpq's settings: one pydantic-settings model read at entrypoints (env prefix `MPQ_`).

The ModelProxy connection itself (endpoints, credentials) uses the official SDK's
environment names through `modelproxy.Config`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.redaction import mask_url

# Settings whose value is a URL that may carry a password in its user-info.
URL_SETTINGS = frozenset({"redis_url", "broker_url"})


class Settings(BaseSettings):
    """Every setting, its environment variable (`MPQ_` + upper-case name) and default."""

    model_config = SettingsConfigDict(env_prefix="MPQ_", extra="ignore", frozen=True)

    redis_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("MPQ_REDIS_URL", "REDIS_URL"),
        description="Job store (and default broker). Unset: an embedded Valkey is started.",
    )
    broker_url: str | None = Field(
        default=None, description="Celery broker; defaults to redis_url (amqp:// works too)."
    )
    key_prefix: str = Field(default="mpq:", description="Prefix of every Redis key of mpq.")
    result_ttl_s: int = Field(default=7 * 24 * 3600, gt=0, description="Retention of results.")

    max_attempts: int = Field(default=5, ge=1, description="Attempts per job, first included.")
    backoff_base_s: float = Field(default=1.0, gt=0, description="First retry delay.")
    backoff_max_s: float = Field(default=60.0, gt=0, description="Cap of the retry delay.")
    request_timeout_s: float = Field(
        default=120.0, gt=0, description="Per read (and write) of an upstream request."
    )
    # Hard limits of one attempt; a job past one fails at once, without a retry.
    attempt_timeout_s: float = Field(
        default=600.0, gt=0,
        description="An inference attempt's upstream call in all, streamed or not: past it "
        "the job fails (a per-read timeout never ends a slow drip).",
    )
    max_response_bytes: int = Field(
        default=10 * 1024 * 1024, gt=0,
        description="A non-streamed reply's body (decoded): past it the job fails.",
    )
    max_stream_bytes: int = Field(
        default=64 * 1024 * 1024, gt=0,
        description="A streamed reply's body (decoded, all events): past it the job fails.",
    )
    max_stream_chunks: int = Field(
        default=100_000, gt=0,
        description="A streamed reply's events (SSE chunks): past it the job fails.",
    )

    worker_slots: int = Field(
        default=500, ge=1, description="Jobs in flight per worker process (threads pool)."
    )
    worker_processes: int = Field(
        default=0, ge=0,
        description="Worker processes one `mpq worker` runs; 0: one per usable core.",
    )
    prefetch_multiplier: int = Field(default=1, ge=1, description="Celery prefetch per slot.")
    lines_per_message: int = Field(
        default=8, ge=1, le=64,
        description="Batch lines the feeder puts in one broker message (run side by side).",
    )
    visibility_timeout_s: int = Field(
        default=30, ge=5,
        description="Redis broker: unacked messages of a dead worker come back after this.",
    )
    lease_s: float = Field(
        default=15.0, gt=0, description="A running job's lease; renewed while it runs."
    )
    cancel_check_s: float = Field(
        default=0.5, gt=0, description="How often a running job looks for a cancel."
    )
    permit_max_wait_s: float = Field(
        default=10.0, ge=0,
        description="Wait this long in a slot for a rate-limit permit, else requeue the job.",
    )
    requeue_max_delay_s: float = Field(
        default=10.0, gt=0,
        description="Longest countdown of a requeued job (kept under the visibility timeout).",
    )
    default_cooldown_s: float = Field(
        default=1.0, gt=0, description="Shared cool-down after a 429 without Retry-After."
    )

    requests_per_minute: int | None = Field(default=None, gt=0, description="Per proxy.")
    tokens_per_minute: int | None = Field(default=None, gt=0, description="Per proxy.")
    max_concurrency: int | None = Field(default=None, gt=0, description="Per proxy.")

    modelproxy_api_key: SecretStr | None = Field(
        default=None,
        description="Inbound API key of the proxies (Authorization: Bearer), for workers "
        "without an AgentRun key pair.",
    )
    orphan_check_s: float = Field(
        default=30.0, gt=0, description="How often a worker looks for jobs whose message was lost."
    )
    orphan_grace_s: float = Field(
        default=120.0, gt=0,
        description="A job not seen progressing this long gets a new message if no unacked one "
        "names it and its last was published this long before its queue's oldest (or the queue "
        "is empty).",
    )
    proxy_cache_s: float = Field(default=60.0, gt=0, description="Max age of a cached proxy.")
    refresh_interval_s: float = Field(default=60.0, gt=0, description="Beat: proxy refresh.")
    chunk_flush_ms: int = Field(
        default=0, ge=0,
        description="A worker writes the streamed chunks of all its jobs together, at most "
        "once per this many ms (0: at once; chunks that come while a write is under way go "
        "with the next one).",
    )

    task_events: bool = Field(
        default=False,
        description="Workers send task events from the start. Off: `mpq flower` turns them on "
        "while it runs (they cost ~1/3 of a busy worker's CPU).",
    )
    flower_address: str = Field(
        default="127.0.0.1", description="Flower binds here (non-loopback needs auth)."
    )
    flower_port: int = Field(default=5555, ge=0, le=65535, description="Flower's port.")
    flower_user: str = Field(default="mpq", min_length=1, description="Flower login.")
    flower_password: SecretStr | None = Field(
        default=None,
        description="Flower password; unset: a random one is generated and printed.",
    )
    metrics_address: str = Field(
        default="127.0.0.1", description="`mpq metrics` (Prometheus exporter) binds here."
    )
    metrics_port: int = Field(default=9640, ge=0, le=65535, description="Exporter port.")

    gateway_address: str = Field(
        default="127.0.0.1",
        description="`mpq gateway` (the OpenAI-compatible API) binds here; a non-loopback "
        "address needs API keys.",
    )
    gateway_port: int = Field(default=9650, ge=0, le=65535, description="The gateway's port.")
    gateway_default_proxy: str | None = Field(
        default=None,
        description="Gateway: the proxy of a request whose model no proxy claims (unset: such "
        "a request is refused).",
    )
    gateway_max_interactive: int = Field(
        default=1000, ge=1,
        description="Gateway: direct calls in flight at once; past it they get 429 with "
        "Retry-After.",
    )
    gateway_call_timeout_s: float = Field(
        default=900.0, gt=0,
        description="Gateway: longest wait of a direct call for its job (then 504, job "
        "cancelled).",
    )
    gateway_max_file_bytes: int = Field(
        default=200 * 1024 * 1024, gt=0, description="Gateway: largest upload (OpenAI's limit)."
    )
    gateway_max_file_lines: int = Field(
        default=50_000, gt=0, description="Gateway: most requests in one batch input file."
    )
    gateway_webhook_hosts: str = Field(
        default="",
        description="Gateway: comma-separated host names a batch's completion webhook may call "
        "(empty: webhooks are refused).",
    )

    def environment(self) -> dict[str, str]:
        """The variables that give another process these settings, secrets in clear: for a
        child's environment, never for a screen or a log."""
        env: dict[str, str] = {}
        for name, value in self.model_dump(exclude_none=True).items():
            shown = value.get_secret_value() if isinstance(value, SecretStr) else value
            env[f"MPQ_{name.upper()}"] = str(shown)
        return env

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        """As pydantic's, with the URLs' user-info masked: settings end up in logs."""
        for name, value in super().__repr_args__():
            masked = name in URL_SETTINGS and isinstance(value, str)
            yield name, mask_url(value) if masked else value

    @field_validator("key_prefix")
    @classmethod
    def _prefix_ends_with_colon(cls, value: str) -> str:
        if not value.endswith(":"):
            raise ValueError("key_prefix must end with ':'")
        return value
