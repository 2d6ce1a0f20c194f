"""Which failures are retried, and after how long (pure)."""

from __future__ import annotations

import random

from modelproxy.errors import HTTPError, ModelProxyError

_RNG = random.Random()


def should_retry(exc: BaseException) -> bool:
    """Only our retryable errors (429, 408, 5xx, timeouts, resets, cut streams);
    never 400/401/403/404, validation, or an unknown exception."""
    return isinstance(exc, ModelProxyError) and exc.retryable


def retry_after_s(exc: BaseException) -> float | None:
    return exc.retry_after_s if isinstance(exc, HTTPError) else None


def retry_delay_s(
    failures: int,
    *,
    base_s: float,
    max_s: float,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Delay before the next attempt after `failures` failed ones (1 = first failure).

    The server's Retry-After wins exactly; otherwise exponential backoff capped at
    `max_s`, with equal jitter (half fixed, half random) so retries spread out."""
    if retry_after is not None:
        return retry_after
    ceiling_s = min(max_s, base_s * 2.0 ** max(failures - 1, 0))
    return ceiling_s / 2 + (rng or _RNG).uniform(0, ceiling_s / 2)


def describe(exc: BaseException, attempt: int) -> str:
    """One line for the job record: the attempt and the upstream's own message."""
    return f"attempt {attempt}: {type(exc).__name__}: {exc}"
