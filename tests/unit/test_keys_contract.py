"""Pure tests of the key layout and the job contract."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from core.contract import (
    FINAL,
    BatchRecord,
    BatchStatus,
    ChunkEntry,
    JobKind,
    JobRecord,
    JobStatus,
    new_id,
)
from core.keys import LIMITER_PARTS, Keys


def test_keys_layout() -> None:
    keys = Keys()
    assert keys.job("j1") == "mpq:job:j1"
    assert keys.job_chunks("j1") == "mpq:job:j1:chunks"
    assert keys.batch("b1") == "mpq:batch:b1"
    assert keys.batch_jobs("b1") == "mpq:batch:b1:jobs"
    assert keys.batch_events("b1") == "mpq:batch:b1:events"
    assert keys.proxy("p1") == "mpq:proxy:p1"
    assert keys.proxies() == "mpq:proxies"
    assert keys.limiter("p1") == ("mpq:rl:p1:rpm", "mpq:rl:p1:tpm", "mpq:rl:p1:tps",
                                  "mpq:rl:p1:tph", "mpq:rl:p1:tpd",
                                  "mpq:rl:p1:leases", "mpq:rl:p1:cooldown")
    assert keys.lock("refresh") == "mpq:lock:refresh"
    assert keys.metrics() == "mpq:metrics"
    assert keys.broker_prefix() == "mpq:broker:"
    assert keys.broker_queue("inference") == "mpq:broker:inference"
    assert keys.broker_queue("inference", 0) == "mpq:broker:inference"
    assert keys.broker_queue("inference", 9) == "mpq:broker:inference\x06\x169"
    assert keys.broker_unacked() == "mpq:broker:unacked"
    assert keys.open_jobs() == "mpq:jobs:open"
    assert keys.cancels() == "mpq:jobs:cancels"
    assert keys.reader_wake("r1") == "mpq:reader:r1:wake"
    assert keys.pattern() == "mpq:*"


def test_keys_custom_prefix() -> None:
    assert Keys("t42:").job("x") == "t42:job:x"


@pytest.mark.parametrize("prefix", ["", "mpq", "mpq:x"])
def test_keys_prefix_must_end_with_colon(prefix: str) -> None:
    with pytest.raises(ValueError, match="end with ':'"):
        Keys(prefix)


@pytest.mark.parametrize("bad", ["", "a:b", ":"])
def test_keys_reject_ids_that_could_name_other_keys(bad: str) -> None:
    keys = Keys()
    for build in (keys.job, keys.batch, keys.proxy, keys.lock):
        with pytest.raises(ValueError, match="no ':'"):
            build(bad)
    with pytest.raises(ValueError, match="no ':'"):
        keys.limiter(bad)


def test_status_final_set() -> None:
    assert {s for s in JobStatus if s.is_final} == FINAL
    assert JobStatus.FINAL is FINAL
    assert len(JobStatus) == 6  # FINAL is not a member
    assert {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED} == FINAL


def test_kind_values_and_management() -> None:
    assert JobKind("chat") is JobKind.CHAT
    assert not JobKind.RESPONSES.is_management
    assert not JobKind.EMBEDDINGS.is_management
    assert all(k.is_management for k in JobKind if k.value.startswith("mgmt_"))
    assert len(JobKind) == 10


def _full_record() -> JobRecord:
    return JobRecord(
        kind=JobKind.CHAT,
        proxy="p1",
        request={"messages": [{"role": "user", "content": "héllo ✓"}], "stream": True},
        status=JobStatus.FAILED,
        attempt=3,
        result={"choices": []},
        error="boom",
        errors=["first", 'second: with "quotes"'],
        usage={"total_tokens": 12},
        batch_id="b1",
        custom_id="line-7",
        created_at=1.5,
        started_at=2.25,
        finished_at=1700000000.123456,
        worker="w@host",
    )


def test_record_round_trip() -> None:
    record = _full_record()
    raw = record.to_redis()
    assert all(isinstance(v, str) for v in raw.values())
    assert raw["status"] == "failed"
    assert raw["attempt"] == "3"
    assert json.loads(raw["errors"]) == record.errors
    assert JobRecord.from_redis(raw) == record


def test_record_round_trip_from_bytes() -> None:
    record = _full_record()
    raw = {k.encode(): v.encode() for k, v in record.to_redis().items()}
    assert JobRecord.from_redis(raw) == record


def test_record_none_fields_are_absent() -> None:
    record = JobRecord(kind=JobKind.MGMT_GET, proxy="p", request={})
    raw = record.to_redis()
    absent = {"result", "error", "usage", "batch_id", "custom_id", "started_at", "finished_at"}
    assert absent.isdisjoint(raw)
    assert raw["errors"] == "[]"
    back = JobRecord.from_redis(raw)
    assert back == record
    assert back.status is JobStatus.QUEUED


def test_record_ignores_unknown_fields() -> None:
    raw = JobRecord(kind=JobKind.CHAT, proxy="p", request={}).to_redis()
    assert JobRecord.from_redis({**raw, "added_later": "x"}).proxy == "p"


def test_record_rejects_bad_kind() -> None:
    with pytest.raises(ValidationError):
        JobRecord.from_redis({"id": "x", "kind": "nope", "proxy": "p", "request": "{}"})


def test_new_id_is_key_safe() -> None:
    ids = {new_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(i.isalnum() for i in ids)


def test_batch_from_redis() -> None:
    raw = {
        b"total": b"5",
        b"queued": b"1",
        b"succeeded": b"3",
        b"cancelled": b"1",
        b"status": b"finished",
        b"created_at": b"1.0",
        b"finished_at": b"2.0",
    }
    batch = BatchRecord.from_redis("b1", raw)
    assert batch.total == 5
    assert batch.counts[JobStatus.RUNNING] == 0
    assert batch.done == 4
    assert batch.status is BatchStatus.FINISHED
    assert batch.finished_at == 2.0


def test_batch_defaults() -> None:
    batch = BatchRecord.from_redis("b1", {"total": "2", "queued": "2"})
    assert batch.status is BatchStatus.IN_PROGRESS
    assert batch.done == 0
    assert batch.finished_at is None


@pytest.mark.parametrize("kind", ["delta", "done", "error"])
def test_chunk_round_trip(kind: str) -> None:
    entry = ChunkEntry.model_validate({"attempt": 2, "seq": 7, "kind": kind, "data": '{"a":1}'})
    raw = entry.to_redis()
    assert raw == {"attempt": "2", "seq": "7", "kind": kind, "data": '{"a":1}'}
    assert ChunkEntry.from_redis({k.encode(): v.encode() for k, v in raw.items()}) == entry
    assert entry.payload() == {"a": 1}


def test_chunk_rejects_unknown_kind() -> None:
    with pytest.raises(ValidationError):
        ChunkEntry.model_validate({"attempt": 1, "seq": 0, "kind": "partial", "data": "1"})


def test_the_layout_in_the_docstring_is_what_keys_builds() -> None:
    """Every key the builders make is listed in the module's layout, and nothing else is."""
    import core.keys  # its docstring is what is tested

    keys = Keys("P:")
    built = {
        keys.job("{id}"), keys.job_chunks("{id}"), keys.job_vectors("{id}"), keys.batch("{id}"),
        keys.batch_jobs("{id}"), keys.batch_events("{id}"), keys.batch_invalid("{id}"),
        keys.batches(), keys.open_jobs(), keys.cancels(), keys.proxy("{name}"), keys.proxies(),
        keys.reader_wake("{id}"), keys.lock("{name}"), keys.metrics(),
        keys.broker_queue("{queue}"), keys.broker_unacked(), keys.broker_prefix() + "…",
        keys.broker_queue("{queue}", 9).replace("\x06\x169", r"\x06\x16{step}"),
        keys.gateway_key("{digest}"), keys.gateway_keys(), keys.gateway_file("{id}"),
        keys.gateway_file_data("{id}"), keys.gateway_files("{owner}"),
        keys.gateway_batch("{id}"), keys.gateway_batches("{owner}"),
        keys.gateway_open_batches(), keys.gateway_interactive(),
        keys.batch_pending("{id}", "{proxy}"), keys.feed_proxy("pause", "{proxy}"),
        keys.feed_proxy("cap", "{proxy}"),
        *(keys.feed(name) for name in ("flows", "clock", "inflight", "by_proxy", "workers",
                                       "slots")),
        *(key.replace(part, "{part}") for key, part in
          zip(keys.limiter("{name}"), LIMITER_PARTS, strict=True)),
    }
    doc = core.keys.__doc__ or ""
    listed = {"P:" + line.split()[1] for line in doc.splitlines()
              if line.strip().startswith("P ")}
    assert listed == built
