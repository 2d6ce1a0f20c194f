"""Cluster-wide rate limiting of proxy calls: policy maths (``policy``) and the Redis
shell over one Lua script (``limiter``)."""

from worker.ratelimit.limiter import DEFAULT_POLL_MS, Permit, RateLimiter, Wait
from worker.ratelimit.policy import (
    DEFAULT_BURST_RATIO,
    DEFAULT_COMPLETION_TOKENS,
    Limits,
    estimate_input_tokens,
    estimate_tokens,
    merge_limits,
)

__all__ = [
    "DEFAULT_BURST_RATIO",
    "DEFAULT_COMPLETION_TOKENS",
    "DEFAULT_POLL_MS",
    "Limits",
    "Permit",
    "RateLimiter",
    "Wait",
    "estimate_input_tokens",
    "estimate_tokens",
    "merge_limits",
]
