"""A deterministic synthetic embedding model: the same model and input always give the same
unit vector, and different inputs give unrelated ones.

An input's components come from SHAKE-256 seeded with sha256(model, NUL, the input): a text
as itself, a token array as its JSON, each tagged so a text never meets a token array's
vector. The stream's prefix does not depend on its length, so a vector shortened by the
request's `dimensions` is the full one truncated and renormalised, as OpenAI's are.
Components are float32 values, so the float and base64 encodings carry the same numbers.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import struct
from collections.abc import Sequence

from emulator.synthetic import count_tokens

DEFAULT_EMBEDDING_DIMENSIONS = 256
# Wider than any real embedding model (3,072 is common); keeps a full batch cheap to make.
MAX_EMBEDDING_DIMENSIONS = 8192
# Most inputs one request may embed, as OpenAI allows.
MAX_EMBEDDING_INPUTS = 2048

EmbeddingItem = str | Sequence[int]


def _canonical(item: EmbeddingItem) -> bytes:
    if isinstance(item, str):
        # surrogatepass: JSON may carry lone surrogate escapes ("\ud800"), which UTF-8 refuses.
        return b"text\x00" + item.encode("utf-8", "surrogatepass")
    return b"tokens\x00" + json.dumps(list(item), separators=(",", ":")).encode()


def unit_vector(model: str, item: EmbeddingItem, dimensions: int) -> list[float]:
    """The embedding of `item` by `model`, `dimensions` long, of (float32) unit length."""
    seed = hashlib.sha256(model.encode("utf-8", "surrogatepass") + b"\x00" + _canonical(item))
    raw = hashlib.shake_256(seed.digest()).digest(4 * dimensions)
    # Shifted by a half, no component is 0: even a 1-dimensional vector has a direction.
    halves = [value + 0.5 for value in struct.unpack(f"<{dimensions}i", raw)]
    norm = math.hypot(*halves)
    return _float32([value / norm for value in halves])


def _float32(values: list[float]) -> list[float]:
    return list(struct.unpack(f"<{len(values)}f", struct.pack(f"<{len(values)}f", *values)))


def to_base64(vector: list[float]) -> str:
    """OpenAI's `encoding_format: "base64"`: the little-endian float32 bytes."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def from_base64(text: str) -> list[float]:
    raw = base64.b64decode(text, validate=True)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def input_tokens(item: EmbeddingItem) -> int:
    """A text's tokens by the emulator's rule (see `synthetic`); a token array's length."""
    return count_tokens(item) if isinstance(item, str) else len(item)
