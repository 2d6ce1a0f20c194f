"""Properties of the job contract (`core.contract`) and the key layout (`core.keys`).

- Every valid `JobRecord`, `BatchRecord` (as the store writes it) and `ChunkEntry` comes back
  unchanged from its Redis hash, as text or as bytes (with or without `decode_responses`).
- Every hash value is text Redis can store (UTF-8).
- A hash that is not a valid record raises pydantic's `ValidationError`, never anything else.
- `Keys` refuses ids that are empty or contain ':', and keys of different things never
  collide.
"""

from __future__ import annotations

import json
import string
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from core.contract import (
    ALL_PROXIES,
    FINAL,
    PROXY_NAME_PATTERN,
    BatchRecord,
    BatchStatus,
    ChunkEntry,
    JobKind,
    JobRecord,
    JobStatus,
)
from core.keys import Keys

BOUNDED = settings(max_examples=200, deadline=None)
RECORDS = settings(max_examples=100, deadline=None)  # records with nested JSON cost more

# Text a producer can hand over: any Unicode scalar value (no lone surrogates), NUL included.
text = st.text(st.characters(codec="utf-8"), max_size=40)
# Lone surrogates, as `json.loads('"\\ud800"')` or a surrogateescape'd argv produce them.
# (Built from code points: hypothesis' text() leaves surrogates out.)
any_text = st.lists(st.integers(0xD800, 0xDFFF).map(chr) | st.characters(codec="utf-8"),
                    max_size=20).map("".join)
timestamps = st.floats(min_value=0, max_value=4e9, allow_nan=False)
json_scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
                | st.floats(allow_nan=False, allow_infinity=False) | text)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(text, children, max_size=4),
    max_leaves=12,
)
json_objects = st.dictionaries(text, json_values, max_size=6)
proxy_names = st.from_regex(PROXY_NAME_PATTERN, fullmatch=True)


@st.composite
def job_fields(draw: st.DrawFn, strings: st.SearchStrategy[str] = text) -> dict[str, Any]:
    def maybe(strategy: st.SearchStrategy[Any]) -> Any:
        return draw(st.none() | strategy)

    return dict(
        id=draw(strings.filter(bool)),
        kind=draw(st.sampled_from(JobKind)),
        proxy=draw(proxy_names),
        request=draw(json_objects),
        status=draw(st.sampled_from(JobStatus)),
        attempt=draw(st.integers(0, 2**40)),
        result=maybe(json_objects),
        error=maybe(strings),
        errors=draw(st.lists(strings, max_size=4)),
        usage=maybe(json_objects),
        batch_id=maybe(strings),
        custom_id=maybe(strings),
        created_at=draw(timestamps),
        started_at=maybe(timestamps),
        finished_at=maybe(timestamps),
        worker=maybe(strings),
    )


def job_records() -> st.SearchStrategy[JobRecord]:
    return job_fields().map(lambda fields: JobRecord(**fields))


def as_bytes(raw: dict[str, str]) -> dict[bytes, bytes]:
    return {k.encode(): v.encode() for k, v in raw.items()}


# ---- JobRecord ------------------------------------------------------------------------------


@RECORDS
@given(job_records())
def test_job_record_round_trips(record: JobRecord) -> None:
    raw = record.to_redis()
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in raw.items())
    assert JobRecord.from_redis(raw) == record
    assert JobRecord.from_redis(as_bytes(raw)) == record
    # None is an absent field, never the text "None".
    absent = {name for name, value in record if value is None}
    assert absent.isdisjoint(raw)


@RECORDS
@given(job_records())
def test_job_record_json_fields_are_compact_json(record: JobRecord) -> None:
    raw = record.to_redis()
    for name in JobRecord.JSON_FIELDS & raw.keys():
        assert json.loads(raw[name]) == getattr(record, name)
        assert "\n" not in raw[name]


def _has_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        return any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    return isinstance(value, list) and any(_has_surrogate(v) for v in value)


@RECORDS
@given(job_fields(strings=any_text))
def test_a_record_is_storable_or_refused(fields: dict[str, Any]) -> None:
    """Redis clients encode text as UTF-8, so a record whose text has a lone surrogate must
    be refused when it is built, never fail at the write (one batch line with
    `"custom_id": "\\ud800"` would otherwise fail the whole batch's write)."""
    try:
        record = JobRecord(**fields)
    except ValidationError:
        assert any(_has_surrogate(value) for value in fields.values())
        return
    for value in record.to_redis().values():
        value.encode("utf-8")


@BOUNDED
@given(st.sampled_from(JobKind), any_text | proxy_names | st.just(ALL_PROXIES))
def test_a_new_record_needs_a_valid_proxy_name_a_stored_one_is_read(kind: JobKind,
                                                                    proxy: str) -> None:
    """The name rule holds when a job is made; a record stored before it stays readable."""
    allowed = PROXY_NAME_PATTERN.fullmatch(proxy) or (
        proxy == ALL_PROXIES and kind in {JobKind.MGMT_LIST, JobKind.MGMT_REFRESH})
    if allowed:
        JobRecord(kind=kind, proxy=proxy, request={})
    else:
        with pytest.raises(ValidationError, match=r"is not valid: use letters|surrogate"):
            JobRecord(kind=kind, proxy=proxy, request={})
    if not any(0xD800 <= ord(c) <= 0xDFFF for c in proxy):
        raw = {**JobRecord(kind=kind, proxy="p", request={}).to_redis(), "proxy": proxy}
        assert JobRecord.from_redis(raw).proxy == proxy


REQUIRED = ("kind", "proxy", "request")


@RECORDS
@given(job_records(), st.sampled_from(REQUIRED))
def test_job_record_without_a_required_field_is_invalid(record: JobRecord, name: str) -> None:
    raw = record.to_redis()
    del raw[name]
    with pytest.raises(ValidationError):
        JobRecord.from_redis(raw)


def _is_json_of(value: str, kind: type) -> bool:
    try:
        return isinstance(json.loads(value), kind)
    except (ValueError, RecursionError):
        return False


def _is_int_text(value: str) -> bool:
    try:
        int(value)
    except ValueError:
        return False
    return True


def _is_float_text(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


# Field -> a strategy of text that is never a valid value of it.
BAD_VALUES: dict[str, st.SearchStrategy[str]] = {
    "kind": text.filter(lambda v: v not in {k.value for k in JobKind}),
    "status": text.filter(lambda v: v not in {s.value for s in JobStatus}),
    "attempt": (st.integers(max_value=-1).map(str)
                | text.filter(lambda v: not _is_int_text(v) and not _is_float_text(v))),
    "request": text.filter(lambda v: not _is_json_of(v, dict)),
    "result": text.filter(lambda v: not _is_json_of(v, dict) and v != "null"),
    "usage": text.filter(lambda v: not _is_json_of(v, dict) and v != "null"),
    "errors": (text.filter(lambda v: not _is_json_of(v, list))
               | st.lists(st.integers() | st.none(), min_size=1).map(json.dumps)),
    "created_at": text.filter(lambda v: not _is_float_text(v)),
    "started_at": text.filter(lambda v: not _is_float_text(v)),
}


@st.composite
def invalid_job_hashes(draw: st.DrawFn) -> dict[str, str]:
    raw = draw(job_records()).to_redis()
    name = draw(st.sampled_from(sorted(BAD_VALUES)))
    raw[name] = draw(BAD_VALUES[name])
    return raw


@RECORDS
@given(invalid_job_hashes())
def test_invalid_job_hash_raises_validation_error(raw: dict[str, str]) -> None:
    with pytest.raises(ValidationError):
        JobRecord.from_redis(raw)


FIELD_NAMES = sorted(JobRecord.model_fields)


@BOUNDED
@given(st.dictionaries(st.sampled_from(FIELD_NAMES) | text, text | st.just("{}"), max_size=12))
def test_any_hash_gives_a_record_or_a_validation_error(raw: dict[str, str]) -> None:
    """Whatever is under a job key, reading it never fails in another way (a JSON error,
    a RecursionError …) that a caller would not expect."""
    try:
        record = JobRecord.from_redis(raw)
    except ValidationError:
        return
    assert JobRecord.from_redis(record.to_redis()) == record


@pytest.mark.parametrize("value", ["[" * 100_000, '{"a": ' * 5_000 + "1" + "}" * 5_000])
def test_deeply_nested_json_field_raises_validation_error(value: str) -> None:
    raw = JobRecord(kind=JobKind.CHAT, proxy="p", request={}).to_redis()
    with pytest.raises(ValidationError):
        JobRecord.from_redis({**raw, "request": value})


# ---- BatchRecord ----------------------------------------------------------------------------


@st.composite
def batch_hashes(draw: st.DrawFn) -> tuple[BatchRecord, dict[str, str]]:
    """A batch hash as `JobStore` writes it (counts by status value, HINCRBY-style integers,
    absent counters), and the record it stands for."""
    counts = draw(st.dictionaries(st.sampled_from(JobStatus), st.integers(0, 10**9)))
    record = BatchRecord(
        id=draw(text.filter(bool)),
        total=draw(st.integers(0, 10**9)),
        counts={status: counts.get(status, 0) for status in JobStatus},
        status=draw(st.sampled_from(BatchStatus)),
        created_at=draw(st.none() | timestamps),
        finished_at=draw(st.none() | timestamps),
        name=draw(st.none() | text),
        invalid=draw(st.integers(0, 10**6)),
    )
    raw = {"total": str(record.total), "status": record.status.value,
           "invalid": str(record.invalid)}
    raw.update({status.value: str(n) for status, n in counts.items()})
    for name in ("created_at", "finished_at", "name"):
        value = getattr(record, name)
        if value is not None:
            raw[name] = repr(value) if isinstance(value, float) else value
    return record, raw


@BOUNDED
@given(batch_hashes())
def test_batch_record_reads_what_the_store_writes(case: tuple[BatchRecord, dict[str, str]]) -> None:
    record, raw = case
    assert BatchRecord.from_redis(record.id, raw) == record
    assert BatchRecord.from_redis(record.id, as_bytes(raw)) == record
    assert record.done == sum(record.counts[s] for s in FINAL)


@BOUNDED
@given(batch_hashes(), st.sampled_from([*(s.value for s in JobStatus), "total", "invalid"]),
       text.filter(lambda v: not _is_int_text(v) and not _is_float_text(v)))
def test_invalid_batch_counter_raises_validation_error(
    case: tuple[BatchRecord, dict[str, str]], field: str, bad: str
) -> None:
    record, raw = case
    with pytest.raises(ValidationError):
        BatchRecord.from_redis(record.id, {**raw, field: bad})


@BOUNDED
@given(st.dictionaries(st.sampled_from([*(s.value for s in JobStatus), "total", "invalid",
                                        "status", "created_at", "finished_at", "name"]) | text,
                       text, max_size=10))
def test_any_batch_hash_gives_a_record_or_a_validation_error(raw: dict[str, str]) -> None:
    try:
        BatchRecord.from_redis("b1", raw)
    except ValidationError:
        return


# ---- ChunkEntry -----------------------------------------------------------------------------

chunk_kinds = st.sampled_from(["delta", "done", "error"])


@BOUNDED
@given(st.integers(0, 2**40), st.integers(0, 2**40), chunk_kinds, json_values)
def test_chunk_entry_round_trips(attempt: int, seq: int, kind: str, payload: Any) -> None:
    entry = ChunkEntry.model_validate(
        {"attempt": attempt, "seq": seq, "kind": kind, "data": json.dumps(payload)})
    raw = entry.to_redis()
    assert ChunkEntry.from_redis(raw) == entry
    assert ChunkEntry.from_redis(as_bytes(raw)) == entry
    assert entry.payload() == payload


@st.composite
def invalid_chunk_hashes(draw: st.DrawFn) -> dict[str, str]:
    raw = ChunkEntry.model_validate({"attempt": 1, "seq": 2, "kind": "delta"}).to_redis()
    name = draw(st.sampled_from(["attempt", "seq", "kind", "missing"]))
    if name == "missing":
        del raw[draw(st.sampled_from(["attempt", "seq", "kind"]))]
    elif name == "kind":
        raw["kind"] = draw(text.filter(lambda v: v not in {"delta", "done", "error"}))
    else:
        raw[name] = draw(st.integers(max_value=-1).map(str)
                         | text.filter(lambda v: not _is_int_text(v) and not _is_float_text(v)))
    return raw


@BOUNDED
@given(invalid_chunk_hashes())
def test_invalid_chunk_hash_raises_validation_error(raw: dict[str, str]) -> None:
    with pytest.raises(ValidationError):
        ChunkEntry.from_redis(raw)


# ---- Keys -----------------------------------------------------------------------------------

ids = text.filter(lambda v: v and ":" not in v)
bad_ids = st.just("") | st.builds(lambda a, b: f"{a}:{b}", text, text)
prefixes = st.text(string.ascii_letters + string.digits + "-_.", max_size=10).map(
    lambda p: f"{p}:")


def _builders(keys: Keys) -> dict[str, Any]:
    return {
        "job": keys.job, "job_chunks": keys.job_chunks, "batch": keys.batch,
        "batch_jobs": keys.batch_jobs, "batch_events": keys.batch_events,
        "batch_invalid": keys.batch_invalid, "proxy": keys.proxy,
        "lock": keys.lock, "reader_wake": keys.reader_wake,
        "limiter": lambda value: keys.limiter(value)[0],
        "broker_queue": keys.broker_queue,
    }


@BOUNDED
@given(prefixes, bad_ids, st.sampled_from(sorted(_builders(Keys()))))
def test_keys_refuse_empty_ids_and_colons(prefix: str, bad: str, builder: str) -> None:
    with pytest.raises(ValueError, match="no ':'"):
        _builders(Keys(prefix))[builder](bad)


@BOUNDED
@given(prefixes, ids, ids, st.sampled_from(sorted(_builders(Keys()))),
       st.sampled_from(sorted(_builders(Keys()))))
def test_keys_of_different_things_never_collide(
    prefix: str, first: str, second: str, kind_a: str, kind_b: str
) -> None:
    builders = _builders(Keys(prefix))
    key_a, key_b = builders[kind_a](first), builders[kind_b](second)
    assert key_a.startswith(prefix)
    assume((kind_a, first) != (kind_b, second))
    assert key_a != key_b


@BOUNDED
@given(text.filter(lambda p: not p.endswith(":")))
def test_keys_refuse_a_prefix_without_colon(prefix: str) -> None:
    with pytest.raises(ValueError, match="end with ':'"):
        Keys(prefix)
