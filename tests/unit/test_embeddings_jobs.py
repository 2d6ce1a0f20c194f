"""Embeddings jobs without servers: batch lines and their checks, how vectors are packed for
the store and read back, the allocation-fitted pieces, the job summary and the token
estimate."""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.contract import JobKind, JobRecord, JobStatus
from core.dispatch import TASK_NAMES, job_summary, queue_for
from core.embeddings import (
    embeddings_response,
    input_count,
    pack,
    packed,
    stored_result,
    unpack,
)
from core.internals.alloc_fit import SMALL_PIECE, piece_lengths, split
from producer.batch_format import EMBEDDING_INPUTS_MAX, check_request, output_line, parse_batch
from producer.embeddings import complete, embeddings_of
from worker.inference import _estimate, _used_tokens
from worker.ratelimit import estimate_input_tokens

URL = "/v1/embeddings"
BOUNDED = settings(max_examples=200, deadline=None)
float32s = st.floats(width=32, allow_nan=False, allow_infinity=False)


def line(custom_id: str = "e", **body: Any) -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": URL,
                       "body": {"input": "hello", **body}})


def b64(values: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()


# ---- batch lines ---------------------------------------------------------------------------


@pytest.mark.parametrize("body", [
    {"input": "one text"},
    {"input": ["a", "b", "c"]},
    {"input": ["x"] * EMBEDDING_INPUTS_MAX},
    {"input": [1, 2, 3]},
    {"input": [[1, 2], [3]]},
    {"input": "t", "dimensions": 64, "encoding_format": "base64", "model": "m", "user": "u"},
    {"input": "t", "encoding_format": "float", "stream": False},
    {"input": "t", "dimensions": None},
])
def test_accepted_embeddings_bodies(body: dict[str, Any]) -> None:
    parsed = parse_batch([json.dumps({"custom_id": "e", "method": "POST", "url": URL,
                                      "body": body})], "p")
    assert parsed.ok, parsed.errors
    assert parsed.lines[0].kind == JobKind.EMBEDDINGS
    assert parsed.lines[0].body == body


INPUT_RULE = ('"body.input" must be a non-empty string, or a non-empty list of non-empty '
              "strings, of token ids, or of non-empty token id lists")


@pytest.mark.parametrize(("body", "reason"), [
    ({"dimensions": 3}, '"body.input" is missing'),
    ({"input": ""}, f'{INPUT_RULE}, not ""'),
    ({"input": []}, f"{INPUT_RULE}, not an array"),
    ({"input": None}, f"{INPUT_RULE}, not null"),
    ({"input": 7}, f"{INPUT_RULE}, not 7"),
    ({"input": [True]}, f"{INPUT_RULE}, not an array"),
    ({"input": ["a", ""]}, '"body.input[1]" must be a non-empty string, not ""'),
    ({"input": ["a", 3]}, '"body.input[1]" must be a non-empty string, not 3'),
    ({"input": ["x"] * (EMBEDDING_INPUTS_MAX + 1)},
     f'"body.input" has {EMBEDDING_INPUTS_MAX + 1} items, the limit is {EMBEDDING_INPUTS_MAX}'),
    ({"input": [1, -2]}, '"body.input" must be a list of token ids (integers from 0), '
                         "not an array"),
    ({"input": [1, "a"]}, '"body.input" must be a list of token ids (integers from 0), '
                          "not an array"),
    ({"input": [[1], []]}, '"body.input[1]" must be a non-empty list of token ids (integers '
                           "from 0), not an array"),
    ({"input": [[1], "a"]}, '"body.input[1]" must be a non-empty list of token ids (integers '
                            'from 0), not "a"'),
    ({"input": [{"text": "a"}]}, '"body.input[0]" must be a non-empty string or a list of '
                                 "token ids, not an object"),
    ({"input": "t", "dimensions": 0}, '"body.dimensions" must be a positive integer, not 0'),
    ({"input": "t", "dimensions": 2.5},
     '"body.dimensions" must be a positive integer, not 2.5'),
    ({"input": "t", "encoding_format": "hex"},
     '"body.encoding_format" must be "float" or "base64", not "hex"'),
    ({"input": "t", "model": 3}, '"body.model" must be a string, not 3'),
    ({"input": "t", "stream": True}, '"body.stream" does not apply to embeddings: leave it out'),
])
def test_refused_embeddings_bodies(body: dict[str, Any], reason: str) -> None:
    raw = json.dumps({"custom_id": "e", "method": "POST", "url": URL, "body": body})
    parsed = parse_batch([raw], "p")
    assert [(e.line_no, e.custom_id, e.reason) for e in parsed.errors] == [(1, "e", reason)]


def test_bad_lines_are_reported_by_number_among_good_ones() -> None:
    lines = [line("a"), line("b", input=""), "", line("c", input=["ok"]),
             line("d", dimensions=-1), line("e", encoding_format="base64")]
    parsed = parse_batch(lines, "p")
    assert [entry.custom_id for entry in parsed.lines] == ["a", "c", "e"]
    assert [str(error) for error in parsed.errors] == [
        f'line 2: {INPUT_RULE}, not ""',
        'line 5: "body.dimensions" must be a positive integer, not -1',
    ]


def test_a_single_job_is_checked_by_the_same_rules() -> None:
    check_request(JobKind.EMBEDDINGS, {"input": ["a", "b"], "encoding_format": "base64"})
    with pytest.raises(ValueError, match=r'"body.input\[0\]" must be a non-empty string'):
        check_request(JobKind.EMBEDDINGS, {"input": ["", "b"]})
    with pytest.raises(ValueError, match="does not apply to embeddings"):
        check_request(JobKind.EMBEDDINGS, {"input": "a", "stream": True})


# ---- packing and reading back --------------------------------------------------------------


def test_input_count() -> None:
    assert [input_count(value) for value in
            ("a", ["a", "b"], [1, 2, 3], [[1], [2, 3]], [], None, 5)] == [1, 2, 1, 2, 0, 0, 0]


def test_packed_takes_base64_as_it_is_and_packs_floats() -> None:
    values = [0.5, -1.25, 3.0]
    raw = struct.pack("<3f", *values)
    assert packed(b64(values)) == raw
    assert packed(values) == raw
    with pytest.raises(ValueError, match="not valid base64"):
        packed("not base64!")
    with pytest.raises(ValueError, match="5 bytes is not float32 values"):
        packed(base64.b64encode(b"12345").decode())


def test_pack_needs_vectors_of_one_length() -> None:
    assert pack([[1.0, 2.0], b64([3.0, 4.0])]) == (struct.pack("<4f", 1, 2, 3, 4), 2)
    assert pack([]) == (b"", 0)
    with pytest.raises(ValueError, match="different lengths: 4 and 8 bytes"):
        pack([[1.0], [1.0, 2.0]])


def test_unpack_checks_the_size() -> None:
    with pytest.raises(ValueError, match="stored vectors are 12 bytes, not 2 x 8"):
        unpack(b"\0" * 12, 2, 2, "float")


@BOUNDED
@given(st.integers(1, 8).flatmap(
    lambda dims: st.lists(st.lists(float32s, min_size=dims, max_size=dims), min_size=1,
                          max_size=6)))
def test_vectors_come_back_exactly_in_either_encoding(vectors: list[list[float]]) -> None:
    blob, dims = pack([b64(vector) for vector in vectors])
    assert len(blob) == 4 * dims * len(vectors)
    assert unpack(blob, len(vectors), dims, "float") == vectors
    assert unpack(blob, len(vectors), dims, "base64") == [b64(vector) for vector in vectors]


def embeddings_record(request: dict[str, Any], vectors: list[list[float]]) -> tuple[
        JobRecord, bytes]:
    blob, dims = pack(vectors)
    usage = {"prompt_tokens": 5, "total_tokens": 5}
    result = stored_result("m1", usage, len(vectors), dims)
    record = JobRecord(id="j1", kind=JobKind.EMBEDDINGS, proxy="p", request=request,
                       status=JobStatus.SUCCEEDED, custom_id="c", result=result, usage=usage)
    return record, blob


@pytest.mark.parametrize("encoding", [None, "float", "base64"])
def test_a_record_reads_back_as_openais_answer(encoding: str | None) -> None:
    vectors = [[0.5, 0.25], [1.0, -2.0]]
    request = {"input": ["a", "b"]} | ({"encoding_format": encoding} if encoding else {})
    record, blob = embeddings_record(request, vectors)
    done = complete(record, blob)
    shown = vectors if encoding != "base64" else [b64(vector) for vector in vectors]
    assert done.result == {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in
                 enumerate(shown)],
        "model": "m1",
        "usage": {"prompt_tokens": 5, "total_tokens": 5},
    }
    assert list(done.result) == ["object", "data", "model", "usage"]  # OpenAI's order
    assert embeddings_of(done) == shown
    assert output_line(done)["response"]["body"] == done.result
    assert record.result is not None
    assert "data" not in record.result  # the stored record is left as it was


def test_embeddings_response_without_its_vectors_fails_clearly() -> None:
    record, _ = embeddings_record({"input": "a"}, [[1.0, 2.0]])
    assert record.result is not None
    with pytest.raises(ValueError, match="stored vectors are 0 bytes"):
        embeddings_response(record.result, record.request, None)


# ---- allocation-fitted pieces --------------------------------------------------------------


def jemalloc_class(size: int) -> int:
    """The smallest jemalloc size class of at least `size` bytes, counted up naively."""
    size_class = 16
    while size_class < size:
        step = 16 if size_class < 128 else 1 << (size_class.bit_length() - 3)
        size_class += step
    return size_class


def allocation(piece: int) -> int:
    header = 3 if piece < 256 else 5 if piece < 65536 else 9
    return piece + header + 1


@BOUNDED
@given(st.integers(0, 3_000_000))
def test_pieces_cover_the_bytes_and_fill_their_allocations(total: int) -> None:
    lengths = piece_lengths(total)
    assert sum(lengths) == total
    assert all(length > 0 for length in lengths)
    fitted = [n for n in lengths if n >= SMALL_PIECE]
    assert all(allocation(n) == jemalloc_class(allocation(n)) for n in fitted)
    assert len(lengths) <= 8
    # Slack: the headers, and the last piece if it is a small one.
    assert sum(jemalloc_class(allocation(n)) for n in lengths) - total <= 10 * len(lengths) + 32


def test_split_keeps_the_order() -> None:
    data = bytes(range(256)) * 36
    assert b"".join(split(data)) == data
    assert [len(piece) for piece in split(data)] == piece_lengths(len(data)) == [8186, 1018, 12]


# ---- dispatch and the token estimate -------------------------------------------------------


def test_embeddings_jobs_have_their_task_and_a_summary_with_inputs() -> None:
    record = JobRecord(id="j1", kind=JobKind.EMBEDDINGS, proxy="p", batch_id="b1",
                       custom_id="c1", request={"input": ["a"] * 12, "model": "m1"})
    assert TASK_NAMES[JobKind.EMBEDDINGS] == "mpq.inference.embeddings"
    assert queue_for(JobKind.EMBEDDINGS) == "inference"
    assert job_summary(record) == "custom_id=c1 proxy=p model=m1 inputs=12 batch=b1 job=j1"
    tokens = record.model_copy(update={"request": {"input": [1, 2, 3]}, "batch_id": None})
    assert job_summary(tokens) == "custom_id=c1 proxy=p inputs=1 lane=interactive job=j1"


def test_input_tokens_are_estimated_without_an_output_allowance() -> None:
    assert estimate_input_tokens("abcd" * 10) == 10
    assert estimate_input_tokens(["ab", "abcde"]) == 1 + 2
    assert estimate_input_tokens([1, 2, 3]) == 3
    assert estimate_input_tokens([[1, 2], [3]]) == 3
    assert estimate_input_tokens(None) == 0


def test_the_permit_counts_input_tokens_and_settles_on_prompt_tokens() -> None:
    body = {"model": "m", "input": ["abcd" * 3, "ab"], "encoding_format": "base64"}
    assert _estimate(JobKind.EMBEDDINGS, body) == 3 + 1  # no completion allowance
    usage = {"prompt_tokens": 7, "total_tokens": 9}
    assert _used_tokens(JobKind.EMBEDDINGS, usage) == 7
    assert _used_tokens(JobKind.CHAT, usage) == 9
