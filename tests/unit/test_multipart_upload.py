"""The streaming multipart reader: whatever the pieces the body arrives in (a boundary or a
CRLF split across two, one byte at a time), it gives the same parts and the same bytes."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.multipart_upload import (
    FieldTooLargeError,
    MultipartError,
    MultipartReader,
    Part,
    form_boundary,
)

BOUNDARY = b"3f9a0c5e7d1b"


def body(parts: Sequence[tuple[str, str | None, bytes]], boundary: bytes = BOUNDARY) -> bytes:
    """A multipart/form-data body as clients write it: (name, filename, data) per part."""
    out = bytearray()
    for name, filename, data in parts:
        out += b"--" + boundary + b"\r\n"
        out += f'Content-Disposition: form-data; name="{name}"'.encode()
        if filename is not None:
            out += f'; filename="{filename}"\r\nContent-Type: application/octet-stream'.encode()
        out += b"\r\n\r\n" + data + b"\r\n"
    return bytes(out + b"--" + boundary + b"--\r\n")


def split(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    points = sorted({0, len(data), *(cut % (len(data) + 1) for cut in cuts)})
    return [data[start:end] for start, end in itertools.pairwise(points)]


async def stream(pieces: Sequence[bytes]) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


async def read_all(pieces: Sequence[bytes]) -> list[tuple[Part, bytes]]:
    reader = MultipartReader(stream(pieces), BOUNDARY)
    found = []
    while (part := await reader.next_part()) is not None:
        found.append((part, b"".join([piece async for piece in reader.data()])))
    return found


# Content that looks like the multipart framing: CRLFs, dashes, the boundary without its
# leading CRLF, and a boundary prefix that stops short. A client picks a boundary that its
# content does not hold, so content with the whole delimiter is left out.
TRICKY = [b"", b"\r\n", b"\r", b"\n", b"--", b"\r\n--", b"--" + BOUNDARY,
          b"\r\n--" + BOUNDARY[:-1], b"\r\n--" + BOUNDARY[:5] + b"x", b'{"a": 1}\r\n']
CONTENT = st.lists(st.one_of(st.sampled_from(TRICKY), st.binary(max_size=40)),
                   max_size=12).map(b"".join).filter(lambda c: b"\r\n--" + BOUNDARY not in c)


@settings(max_examples=300, deadline=None)
@given(content=CONTENT, file_first=st.booleans(),
       purpose=st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\r"),
                       min_size=1, max_size=20),
       cuts=st.lists(st.integers(min_value=0), max_size=12))
def test_any_split_gives_the_same_parts(content: bytes, purpose: str, file_first: bool,
                                        cuts: list[int]) -> None:
    parts = [("file", "in.jsonl", content), ("purpose", None, purpose.encode())]
    if not file_first:
        parts.reverse()
    found = asyncio.run(read_all(split(body(parts), cuts)))
    assert [(part.name, part.filename, data) for part, data in found] == parts
    assert [part.content_type for part, _ in found] == [
        "application/octet-stream" if filename else None for _, filename, _ in parts]


@pytest.mark.parametrize("piece_bytes", [1, 2, 3, 7, len(BOUNDARY) + 3, 64, 4096, 10**6])
def test_fixed_piece_sizes(piece_bytes: int) -> None:
    content = b"\r\n".join(b'{"custom_id": "%d"}' % i for i in range(300)) + b"\r\n--"
    data = body([("purpose", None, b"batch"), ("file", "a.jsonl", content)])
    pieces = [data[i:i + piece_bytes] for i in range(0, len(data), piece_bytes)]
    found = asyncio.run(read_all(pieces))
    assert [(part.name, data) for part, data in found] == [("purpose", b"batch"),
                                                           ("file", content)]


def test_pieces_are_bounded_by_the_body_chunks() -> None:
    """The reader buffers no more than the chunk it was given."""
    content = b"x" * 100_000
    data = body([("file", "a.jsonl", content)])

    async def largest_piece() -> int:
        reader = MultipartReader(stream(split(data, range(0, len(data), 1000))), BOUNDARY)
        assert await reader.next_part() is not None
        return max([len(piece) async for piece in reader.data()])

    assert asyncio.run(largest_piece()) <= 1000


def test_next_part_skips_the_unread_rest() -> None:
    async def names() -> list[str]:
        reader = MultipartReader(stream([body([("file", "f", b"a" * 5000),
                                               ("purpose", None, b"batch")])]), BOUNDARY)
        seen = []
        while (part := await reader.next_part()) is not None:
            seen.append(part.name)
        return seen

    assert asyncio.run(names()) == ["file", "purpose"]


def test_a_field_longer_than_its_limit_is_refused() -> None:
    async def read() -> str:
        reader = MultipartReader(stream([body([("purpose", None, b"b" * 100)])]), BOUNDARY)
        assert await reader.next_part() is not None
        return await reader.text("purpose", 10)

    with pytest.raises(FieldTooLargeError, match="'purpose'"):
        asyncio.run(read())


@pytest.mark.parametrize(("pieces", "message"), [
    ([], "before its closing boundary"),
    ([body([("file", "f", b"abc")])[:-20]], "before its closing boundary"),
    ([body([("file", "f", b"abc")]).replace(b"--\r\n", b"")], "before its closing"),
    ([b"not multipart at all"], "malformed"),
    ([body([("file", "f", b"abc")]).replace(b'form-data; name="file"', b"attachment")],
     "no Content-Disposition"),
])
def test_malformed_bodies_are_refused(pieces: list[bytes], message: str) -> None:
    with pytest.raises(MultipartError, match=message):
        asyncio.run(read_all(pieces))


def test_boundary_from_content_type() -> None:
    assert form_boundary('multipart/form-data; boundary="ab cd"') == b"ab cd"
    assert form_boundary(f"Multipart/Form-Data; boundary={BOUNDARY.decode()}") == BOUNDARY
    for wrong in (None, "application/json", "multipart/form-data"):
        with pytest.raises(MultipartError):
            form_boundary(wrong)
