"""Bytes split into pieces whose Redis allocations have no slack, for values kept as hash
fields (an embeddings job's vectors).

Why: Redis allocates a value with jemalloc, which rounds every request up to a size class
(multiples of 16 up to 128, then four classes per doubling: 1024, 1280, 1536, 1792, 2048,
…), so a value can cost up to 25% more than its bytes: 16 KiB of vectors in one string cost
20 KiB (measured with MEMORY USAGE). A piece whose allocation is exactly a class costs its
bytes; each piece after the first leaves a remainder under a quarter of it, so a few pieces
cover any length, at ~32 bytes of hash entry each.

What this relies on (tests/integration/test_embeddings_end_to_end.py measures the result on
Redis 7 with jemalloc and on the embedded Valkey, whose libc malloc rounds to 16 bytes):
- jemalloc's size classes, as above;
- a hash field's value is an sds string: its bytes, a header (3 bytes under 256, 5 under
  64 KiB, 9 beyond) and a NUL, allocated at exactly that size.
"""

from __future__ import annotations

# Below this the remainder goes as one last piece: a few bytes of slack at most.
SMALL_PIECE = 128
_QUANTUM = 16
_SDS_HEADERS = (3, 5, 9)


def _sds_header(length: int) -> int:
    return 3 if length < 1 << 8 else 5 if length < 1 << 16 else 9


def _class_at_most(size: int) -> int:
    """The largest jemalloc size class not above `size` (which is at least SMALL_PIECE)."""
    step = max(1 << (size.bit_length() - 3), _QUANTUM)
    return size // step * step


def _fitted(remaining: int) -> int:
    """The longest piece of at most `remaining` bytes whose allocation is a whole class."""
    size_class = _class_at_most(remaining + _sds_header(remaining) + 1)
    for header in _SDS_HEADERS:
        piece = size_class - header - 1
        if _sds_header(piece) == header:
            return min(piece, remaining)
    return remaining  # not reached: one of the headers always matches


def piece_lengths(total: int) -> list[int]:
    """Lengths of consecutive pieces that make up `total` bytes, largest first."""
    lengths: list[int] = []
    while total > 0:
        piece = total if total < SMALL_PIECE else _fitted(total)
        lengths.append(piece)
        total -= piece
    return lengths


def split(data: bytes) -> list[bytes]:
    """`data` in pieces of `piece_lengths`."""
    pieces: list[bytes] = []
    start = 0
    for length in piece_lengths(len(data)):
        pieces.append(data[start:start + length])
        start += length
    return pieces
