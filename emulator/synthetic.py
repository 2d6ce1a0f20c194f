"""A deterministic synthetic model: the same prompt, seed and length always give the same reply.

Tokenizer rule (used for prompts, replies and usage everywhere in the emulator): a token is
either a maximal run of word characters (`\\w+`: letters, digits, underscore) or a single
character that is neither a word character nor whitespace (punctuation, symbols).
Whitespace separates tokens and is never one. So `"Hello, world!"` is 4 tokens.

A reply is drawn from a fixed vocabulary by a hash of (prompt, seed). Its natural length is
`length` tokens when one is set (up to `MAX_REPLY_TOKENS`: long streams), otherwise between
half of `natural_max` and `natural_max` (short replies). `max_tokens` cuts it short: a prefix of
the natural reply, finish_reason "length". Each piece is exactly one token: words after the
first carry their leading space, punctuation carries none.
"""

from __future__ import annotations

import hashlib
import random
import re
from functools import lru_cache
from typing import Any, Literal, NamedTuple

TOKEN_RE = re.compile(r"\w+|[^\w\s]")
DEFAULT_NATURAL_MAX = 16
# Enough for the longest replies real models give; generating one takes ~0.1 s.
MAX_REPLY_TOKENS = 65_536
# Short replies are cached whole; longer ones are made afresh, and only as far as max_tokens.
_CACHED_MAX_TOKENS = 256

VOCABULARY = (
    "the", "model", "proxy", "answers", "every", "request", "with", "a", "short", "reply",
    "tokens", "flow", "through", "gateway", "at", "steady", "pace", "queue", "worker", "limits",
    "rate", "window", "stream", "chunk", "usage", "prompt", "completion", "latency", "budget",
    "retry", "after", "backoff", "cloud", "region", "endpoint", "service", "policy", "time",
    "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "river", "stone", "light", "blue",
    "green", "quiet", "bright", "small", "large", "ready", "often", "never", "always", "and",
    "or", "of", "to", "in", "on",
)  # fmt: skip


FinishReason = Literal["stop", "length"]


class Completion(NamedTuple):
    pieces: list[str]
    finish_reason: FinishReason


def count_tokens(text: str) -> int:
    return len(TOKEN_RE.findall(text))


def prompt_text(value: Any) -> str:
    """The text of chat `messages`, a Responses `input`, or any nesting of their parts.

    Roles and other fields are not text; parts are joined with newlines."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "\n".join(text for text in (prompt_text(item) for item in value) if text)
    if isinstance(value, dict):
        for key in ("content", "text", "output"):
            if key in value:
                return prompt_text(value[key])
    return ""


def prompt_tokens(value: Any) -> int:
    """Tokens of chat `messages` or a Responses `input`, by the rule in the module docstring."""
    return count_tokens(prompt_text(value))


def complete(
    prompt: str,
    max_tokens: int | None,
    seed: int,
    natural_max: int = DEFAULT_NATURAL_MAX,
    *,
    length: int | None = None,
) -> Completion:
    """The reply to `prompt`: `length` tokens when given, else between half of `natural_max`
    and `natural_max`; cut to `max_tokens` with finish_reason "length"."""
    low, high = _bounds(natural_max, length)
    digest = _digest(prompt, seed)
    if high <= _CACHED_MAX_TOKENS:
        natural = _cached_reply(digest, low, high)
        total = len(natural)
        pieces = list(natural if max_tokens is None else natural[: max(0, max_tokens)])
    else:
        pieces, total = _reply(digest, low, high, max_tokens)
    return Completion(pieces, "length" if len(pieces) < total else "stop")


def generate(
    prompt: str,
    max_tokens: int | None,
    seed: int,
    natural_max: int = DEFAULT_NATURAL_MAX,
    *,
    length: int | None = None,
) -> list[str]:
    """Token pieces whose concatenation is the reply; see `complete` for the finish reason."""
    return complete(prompt, max_tokens, seed, natural_max, length=length).pieces


def _bounds(natural_max: int, length: int | None) -> tuple[int, int]:
    if length is not None:
        exact = min(max(1, length), MAX_REPLY_TOKENS)
        return exact, exact
    high = min(max(1, natural_max), MAX_REPLY_TOKENS)
    return (high + 1) // 2, high


def _digest(prompt: str, seed: int) -> int:
    # surrogatepass: JSON may carry lone surrogate escapes ("\ud800"), which UTF-8 refuses.
    data = f"{seed}\x00{prompt}".encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


@lru_cache(maxsize=4096)  # keyed by a digest, not the prompt, so big prompts are not kept
def _cached_reply(digest: int, low: int, high: int) -> tuple[str, ...]:
    return tuple(_reply(digest, low, high, None)[0])


def _reply(digest: int, low: int, high: int, limit: int | None) -> tuple[list[str], int]:
    """The first `limit` pieces (all when None) of the natural reply, and its length (drawn
    first, even when fixed, so the replies of a varying length stay as they always were)."""
    rng = random.Random(digest)
    length = rng.randint(low, high)
    count = length if limit is None else max(0, min(length, limit))
    pieces: list[str] = []
    capital = True
    for index in range(count):
        if index == length - 1 and index > 0:
            pieces.append(".")
        elif index > 0 and pieces[-1][-1].isalpha() and rng.random() < 0.12:
            pieces.append(rng.choice(",."))
            capital = pieces[-1] == "."
        else:
            word = rng.choice(VOCABULARY)
            word = word.capitalize() if capital else word
            pieces.append(word if index == 0 else f" {word}")
            capital = False
    return pieces, length
