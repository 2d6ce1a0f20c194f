"""A deterministic synthetic model: the same prompt and seed always give the same reply.

Tokenizer rule (used for prompts, replies and usage everywhere in the emulator): a token is
either a maximal run of word characters (`\\w+`: letters, digits, underscore) or a single
character that is neither a word character nor whitespace (punctuation, symbols).
Whitespace separates tokens and is never one. So `"Hello, world!"` is 4 tokens.

A reply is drawn from a fixed vocabulary by a hash of (prompt, seed). Its natural length is
between half of `natural_max` and `natural_max` tokens; `max_tokens` cuts it short (a prefix
of the natural reply, finish_reason "length"). Each piece is exactly one token: words after
the first carry their leading space, punctuation carries none.
"""

from __future__ import annotations

import hashlib
import random
import re
from functools import lru_cache
from typing import Any, NamedTuple

TOKEN_RE = re.compile(r"\w+|[^\w\s]")
DEFAULT_NATURAL_MAX = 16

VOCABULARY = (
    "the", "model", "proxy", "answers", "every", "request", "with", "a", "short", "reply",
    "tokens", "flow", "through", "gateway", "at", "steady", "pace", "queue", "worker", "limits",
    "rate", "window", "stream", "chunk", "usage", "prompt", "completion", "latency", "budget",
    "retry", "after", "backoff", "cloud", "region", "endpoint", "service", "policy", "time",
    "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "river", "stone", "light", "blue",
    "green", "quiet", "bright", "small", "large", "ready", "often", "never", "always", "and",
    "or", "of", "to", "in", "on",
)  # fmt: skip


class Completion(NamedTuple):
    pieces: list[str]
    finish_reason: str  # "stop" or "length"


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
    prompt: str, max_tokens: int | None, seed: int, natural_max: int = DEFAULT_NATURAL_MAX
) -> Completion:
    natural = _natural_reply(_digest(prompt, seed), max(1, natural_max))
    if max_tokens is not None and max_tokens < len(natural):
        return Completion(list(natural[: max(0, max_tokens)]), "length")
    return Completion(list(natural), "stop")


def generate(
    prompt: str, max_tokens: int | None, seed: int, natural_max: int = DEFAULT_NATURAL_MAX
) -> list[str]:
    """Token pieces whose concatenation is the reply; see `complete` for the finish reason."""
    return complete(prompt, max_tokens, seed, natural_max).pieces


def _digest(prompt: str, seed: int) -> int:
    # surrogatepass: JSON may carry lone surrogate escapes ("\ud800"), which UTF-8 refuses.
    data = f"{seed}\x00{prompt}".encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


@lru_cache(maxsize=4096)  # keyed by a digest, not the prompt, so big prompts are not kept
def _natural_reply(digest: int, natural_max: int) -> tuple[str, ...]:
    rng = random.Random(digest)
    low = (natural_max + 1) // 2
    length = rng.randint(low, natural_max)
    pieces: list[str] = []
    capital = True
    for index in range(length):
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
    return tuple(pieces)
