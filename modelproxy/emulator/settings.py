"""What the emulator does: latencies, lifecycle delays, faults. Changed at run time through
`PUT /_emulator/settings` and `PUT /_emulator/proxies/{name}/faults`."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


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

    def any(self) -> bool:
        return any(
            rate > 0
            for rate in (
                self.error_500_rate,
                self.error_503_rate,
                self.error_429_rate,
                self.slow_rate,
                self.cut_stream_rate,
            )
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
    # Default completion length in tokens when the request sets no max_tokens.
    default_completion_tokens: int = Field(default=16, ge=1, le=4096)
    faults: Faults = Field(default_factory=Faults)
    seed: int = 0
