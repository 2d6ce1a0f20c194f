"""What the emulator does: latencies, lifecycle delays, reply lengths, embedding dimensions,
faults. Changed at run time through `PUT /_emulator/settings`, and per proxy through
`PUT /_emulator/proxies/{name}/faults` and `PUT /_emulator/proxies/{name}/reply`."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from emulator.embeddings import DEFAULT_EMBEDDING_DIMENSIONS, MAX_EMBEDDING_DIMENSIONS
from emulator.synthetic import MAX_REPLY_TOKENS

Dimensions = Annotated[int, Field(ge=1, le=MAX_EMBEDDING_DIMENSIONS)]


class Faults(BaseModel):
    """Rates are probabilities per request in [0, 1]."""

    model_config = ConfigDict(extra="forbid")

    error_500_rate: float = Field(default=0.0, ge=0, le=1)
    error_503_rate: float = Field(default=0.0, ge=0, le=1)
    error_429_rate: float = Field(default=0.0, ge=0, le=1)
    retry_after_s: float = Field(default=1.0, ge=0)
    # A slow answer sleeps `slow_s` before the first byte (past the client's timeout).
    slow_rate: float = Field(default=0.0, ge=0, le=1)
    slow_s: float = Field(default=30.0, ge=0)
    # A cut stream sends `cut_after_chunks` chunks, then drops the connection without [DONE].
    cut_stream_rate: float = Field(default=0.0, ge=0, le=1)
    cut_after_chunks: int = Field(default=2, ge=0)
    # Runaway answers, to try a client's limits; shares of requests like the error rates
    # (drip first, then huge body, then endless stream). A drip never ends: a stream sends
    # one token chunk every `drip_s`, a non-streamed reply one space (JSON whitespace) every
    # `drip_s` and never its body.
    drip_rate: float = Field(default=0.0, ge=0, le=1)
    drip_s: float = Field(default=5.0, gt=0)
    # A huge body is `huge_body_bytes` long (chunked, no Content-Length): a non-streamed
    # reply padded with a long `padding` string, a stream led by a long SSE comment.
    huge_body_rate: float = Field(default=0.0, ge=0, le=1)
    huge_body_bytes: int = Field(default=200 * 1024 * 1024, ge=0)
    # An endless stream sends its token chunks over and over, as fast as it can, never [DONE].
    endless_stream_rate: float = Field(default=0.0, ge=0, le=1)

    def any(self) -> bool:
        return self.any_runaway() or any(
            rate > 0
            for rate in (
                self.error_500_rate,
                self.error_503_rate,
                self.error_429_rate,
                self.slow_rate,
                self.cut_stream_rate,
            )
        )

    def any_runaway(self) -> bool:
        return any(
            rate > 0 for rate in (self.drip_rate, self.huge_body_rate, self.endless_stream_rate)
        )


class EmulatorSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Lifecycle: CREATING/UPDATING -> READY, DELETING -> gone, after these delays.
    create_delay_s: float = Field(default=0.5, ge=0)
    update_delay_s: float = Field(default=0.5, ge=0)
    delete_delay_s: float = Field(default=0.5, ge=0)
    # Synthetic model: time to first token and time per output token.
    ttft_s: float = Field(default=0.0, ge=0)
    tpot_s: float = Field(default=0.0, ge=0)
    # Synthetic model: a reply's length in tokens. `reply_tokens` fixes it (e.g. 500 for a
    # long stream); unset, it varies between half of `default_completion_tokens` and that.
    # Either way the request's max_tokens (max_completion_tokens, max_output_tokens) caps it.
    default_completion_tokens: int = Field(default=16, ge=1, le=MAX_REPLY_TOKENS)
    reply_tokens: int | None = Field(default=None, ge=1, le=MAX_REPLY_TOKENS)
    # Synthetic embeddings: each model's vector length, by the model name a request resolves
    # to (the proxy config has no field for it); other models get the default.
    embedding_dimensions: dict[str, Dimensions] = Field(default_factory=dict)
    default_embedding_dimensions: Dimensions = DEFAULT_EMBEDDING_DIMENSIONS
    faults: Faults = Field(default_factory=Faults)
    seed: int = 0

    def dimensions_of(self, model: str) -> int:
        return self.embedding_dimensions.get(model, self.default_embedding_dimensions)


class ReplyLength(BaseModel):
    """A proxy's own reply length (`/_emulator/proxies/{name}/reply`), in place of the
    emulator's `reply_tokens`: null lets its replies vary in length. The request's max_tokens
    still caps it."""

    model_config = ConfigDict(extra="forbid")

    reply_tokens: int | None = Field(default=None, ge=1, le=MAX_REPLY_TOKENS)
