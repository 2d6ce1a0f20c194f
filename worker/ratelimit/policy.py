"""Rate-limit policy: what the limits are and how big a request is. Pure, no I/O.

The Lua script (``limiter.lua``) only runs GCRA with the numbers computed here; the reading
of a proxy's declared policies, the choice of burst size, the merge of settings with the
declared limits and the token estimate all live in this module so they can be tested with
tables.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, PositiveInt

from modelproxy.models import ProxyConfigPolicies, ProxyConfigTokenRateLimiter

# A completion allowance for requests that do not cap their output; big enough for a
# typical chat answer, and reconcile() returns what was not used.
DEFAULT_COMPLETION_TOKENS = 256
# The usual rule of thumb for English text with OpenAI tokenizers.
CHARS_PER_TOKEN = 4
# Burst allowed from idle, as a fraction of one period's allowance. A small burst keeps
# any fixed or sliding window of the upstream within about (1 + ratio) x its limit, where a
# full-period burst (ratio 1) could let a window see twice the limit.
DEFAULT_BURST_RATIO = 0.1

# Request fields that carry the prompt (chat completions, Responses, legacy completions).
_PROMPT_FIELDS = ("messages", "input", "instructions", "prompt", "tools", "functions")
# Fields whose strings are binary payloads (base64 images, audio, files), not text tokens.
_BINARY_FIELDS = frozenset({"image_url", "file_data", "input_audio", "data", "b64_json"})
# Output caps, newest name first: Chat uses max_completion_tokens (max_tokens is the old
# name); Responses uses max_output_tokens.
_OUTPUT_CAP_FIELDS = ("max_completion_tokens", "max_output_tokens", "max_tokens")


class Limits(BaseModel):
    """Limits for one proxy; ``None`` means no limit of that kind."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    requests_per_minute: PositiveInt | None = None
    tokens_per_minute: PositiveInt | None = None
    tokens_per_second: PositiveInt | None = None
    tokens_per_hour: PositiveInt | None = None
    tokens_per_day: PositiveInt | None = None
    max_concurrency: PositiveInt | None = None


def _positive_int(value: object) -> int | None:
    # bool is an int subclass; a JSON `true` is not a count.
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


def _stricter(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


def merge_limits(settings: Limits, declared: Limits) -> Limits:
    """Combine our settings with the proxy's declared policies: the stricter value wins."""
    return Limits(**{
        name: _stricter(getattr(settings, name), getattr(declared, name))
        for name in Limits.model_fields
    })


def declared_limits(policies: ProxyConfigPolicies | None) -> Limits:
    """The limits a proxy's ``policies`` declare; zero, missing or not a number means none.

    ``tokenRateLimiter`` (tps/tpm/tph/tpd) and ``concurrencyLimit`` are the service's;
    ``requestRateLimiter.rpm`` is the emulator's extension, which the client keeps as an
    extra field under its wire name.
    """
    if policies is None:
        return Limits()
    tokens = policies.token_rate_limiter or ProxyConfigTokenRateLimiter()
    requests = (policies.model_extra or {}).get("requestRateLimiter")
    rpm = requests.get("rpm") if isinstance(requests, Mapping) else None
    return Limits(
        requests_per_minute=_positive_int(rpm),
        tokens_per_second=_positive_int(tokens.tps),
        tokens_per_minute=_positive_int(tokens.tpm),
        tokens_per_hour=_positive_int(tokens.tph),
        tokens_per_day=_positive_int(tokens.tpd),
        max_concurrency=_positive_int(policies.concurrency_limit),
    )


def _text_chars(value: object) -> int:
    """Characters of text in a JSON value, skipping binary payloads."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, Mapping):
        return sum(_text_chars(v) for k, v in value.items() if k not in _BINARY_FIELDS)
    if isinstance(value, Iterable) and not isinstance(value, bytes | bytearray):
        return sum(_text_chars(v) for v in value)
    return 0


def _completion_tokens(request: Mapping[str, Any]) -> int:
    for field in _OUTPUT_CAP_FIELDS:
        cap = _positive_int(request.get(field))
        if cap is not None:
            return cap
    return DEFAULT_COMPLETION_TOKENS


def estimate_tokens(request: Mapping[str, Any]) -> int:
    """Cheap upper-ish estimate of the tokens a chat-completions/Responses call will use.

    Prompt characters / 4 (rounded up) plus the output cap, or DEFAULT_COMPLETION_TOKENS
    when the request has none; ``n`` choices multiply the output. Real usage is settled
    afterwards with ``RateLimiter.reconcile``.
    """
    prompt_chars = sum(_text_chars(request.get(field)) for field in _PROMPT_FIELDS)
    choices = _positive_int(request.get("n")) or 1
    prompt_tokens = math.ceil(prompt_chars / CHARS_PER_TOKEN)
    return prompt_tokens + choices * _completion_tokens(request)


def estimate_input_tokens(input_: object) -> int:
    """Tokens of an embeddings ``input``, which produces no output: text by the rule of
    thumb of `estimate_tokens`, token ids as themselves. Usage settles it afterwards."""
    if isinstance(input_, str):
        return math.ceil(len(input_) / CHARS_PER_TOKEN)
    if isinstance(input_, list):
        return sum(estimate_input_tokens(item) for item in input_)
    return 1 if isinstance(input_, int) and not isinstance(input_, bool) else 0


class Gcra(NamedTuple):
    """GCRA parameters of one bucket."""

    interval_ms: float  # time one unit occupies at the steady rate
    burst: float  # units admitted back to back from idle (the bucket capacity)


class Buckets(NamedTuple):
    """The GCRA buckets of a proxy, in the order of their keys (``LIMITER_PARTS``) and of
    the script's arguments; ``None`` where that limit is not set."""

    rpm: Gcra | None
    tpm: Gcra | None
    tps: Gcra | None
    tph: Gcra | None
    tpd: Gcra | None

    def tokens(self) -> tuple[Gcra | None, ...]:
        """The token buckets (every bucket but ``rpm``), in order."""
        return self[1:]


def gcra(limit: int | None, period_s: float, burst_ratio: float) -> Gcra | None:
    """GCRA parameters for ``limit`` units per ``period_s``; at least one unit of burst."""
    if limit is None:
        return None
    return Gcra(interval_ms=period_s * 1000 / limit, burst=max(1.0, limit * burst_ratio))


def buckets(limits: Limits, burst_ratio: float = DEFAULT_BURST_RATIO) -> Buckets:
    if not 0 < burst_ratio <= 1:
        raise ValueError(f"burst_ratio must be in (0, 1], got {burst_ratio}")
    return Buckets(
        rpm=gcra(limits.requests_per_minute, 60, burst_ratio),
        tpm=gcra(limits.tokens_per_minute, 60, burst_ratio),
        tps=gcra(limits.tokens_per_second, 1, burst_ratio),
        tph=gcra(limits.tokens_per_hour, 3600, burst_ratio),
        tpd=gcra(limits.tokens_per_day, 86400, burst_ratio),
    )
