"""The pure parts of gateway batches: completion windows, usage sums, the batch object's shape
and its Redis form, the webhook's allow-list and retry rules, input lines and error lists."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai.types import Batch

from gateway.batch_input import MAX_LISTED, InputCheck, batch_error, parse_line
from gateway.batch_objects import (
    BatchState,
    GatewayBatch,
    add_usage,
    request_counts,
    window_s,
    zero_usage,
)
from gateway.webhook import backoff_s, check_url, should_retry
from producer.batch_format import BatchLine, LineError


@pytest.mark.parametrize(("text", "seconds"), [
    ("24h", 86_400), ("1h", 3600), ("30m", 1800), ("90s", 90), ("48h", 172_800),
])
def test_completion_windows(text: str, seconds: int) -> None:
    assert window_s(text) == seconds


@pytest.mark.parametrize("text", ["", "24", "h", "0s", "-1h", "1.5h", "1d", " 24h", "24H",
                                  "1" * 12 + "s"])
def test_completion_windows_refused(text: str) -> None:
    with pytest.raises(ValueError, match="completion_window"):
        window_s(text)


CHAT_USAGE = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
              "prompt_tokens_details": {"cached_tokens": 2},
              "completion_tokens_details": {"reasoning_tokens": 1}}
RESPONSES_USAGE = {"input_tokens": 7, "output_tokens": 3, "total_tokens": 10,
                   "input_tokens_details": {"cached_tokens": 0},
                   "output_tokens_details": {"reasoning_tokens": 2}}
EMBEDDINGS_USAGE = {"prompt_tokens": 4, "total_tokens": 4}


@pytest.mark.parametrize(("usages", "expected"), [
    ([CHAT_USAGE], (10, 5, 15, 2, 1)),
    ([RESPONSES_USAGE], (7, 3, 10, 0, 2)),
    ([EMBEDDINGS_USAGE], (4, 0, 4, 0, 0)),
    ([CHAT_USAGE, RESPONSES_USAGE, EMBEDDINGS_USAGE], (21, 8, 29, 2, 3)),
    ([{"prompt_tokens": 2, "completion_tokens": 3}], (2, 3, 5, 0, 0)),  # total left out
    ([None, "x", {"prompt_tokens": True, "completion_tokens": "9"}], (0, 0, 0, 0, 0)),
])
def test_usage_is_summed_over_every_kind_of_answer(usages: list[Any],
                                                   expected: tuple[int, ...]) -> None:
    total = zero_usage()
    for usage in usages:
        add_usage(total, usage)
    assert (total["input_tokens"], total["output_tokens"], total["total_tokens"],
            total["input_tokens_details"]["cached_tokens"],
            total["output_tokens_details"]["reasoning_tokens"]) == expected


def batch(**fields: Any) -> GatewayBatch:
    return GatewayBatch(id="batch_abc", owner="key_1", endpoint="/v1/chat/completions",
                        input_file_id="file-1", completion_window="24h", created_at=1000.5,
                        expires_at=87400.5, **fields)


def test_the_object_has_openais_fields_and_validates_as_its_model() -> None:
    shown = batch(metadata={"a": "b"}).to_openai(request_counts(3, 1, 1))
    assert set(Batch.model_fields) - set(shown) == {"model"}
    parsed = Batch.model_validate(shown)
    assert parsed.status == "validating"
    assert (parsed.created_at, parsed.expires_at) == (1000, 87400)
    assert all(getattr(parsed, name) is None for name in (
        "in_progress_at", "finalizing_at", "completed_at", "failed_at", "expired_at",
        "cancelling_at", "cancelled_at", "output_file_id", "error_file_id", "errors"))
    assert parsed.request_counts is not None and parsed.request_counts.total == 3
    assert parsed.usage is not None and parsed.usage.total_tokens == 0


def test_frozen_counts_win_over_live_ones_and_errors_are_a_list() -> None:
    ended = batch(status=BatchState.FAILED, request_counts=request_counts(),
                  errors=[batch_error("empty_file", "no requests")])
    shown = ended.to_openai(request_counts(9, 9, 0))
    assert shown["request_counts"] == {"total": 0, "completed": 0, "failed": 0}
    assert shown["errors"] == {"object": "list", "data": [
        {"code": "empty_file", "message": "no requests", "param": None, "line": None}]}


def test_the_redis_form_round_trips() -> None:
    original = batch(status=BatchState.COMPLETED, completed_at=2000.25, expiring=True,
                     metadata={"webhook_url": "http://h/x"}, usage=zero_usage(),
                     request_counts=request_counts(2, 2, 0), output_file_id="file-o")
    fields = original.to_redis()
    assert "id" not in fields and "error_file_id" not in fields
    assert json.loads(fields["metadata"]) == {"webhook_url": "http://h/x"}
    assert GatewayBatch.from_redis("batch_abc", fields) == original
    assert original.webhook_url == "http://h/x"


@pytest.mark.parametrize("state", list(BatchState))
def test_ended_states(state: BatchState) -> None:
    assert state.ended == (state.value in ("failed", "completed", "expired", "cancelled"))


HOSTS = "hooks.example.com, 127.0.0.1,[::1]"


@pytest.mark.parametrize("url", ["https://hooks.example.com/done", "http://127.0.0.1:8080/x",
                                 "https://HOOKS.example.com/", "http://[::1]:9/"])
def test_webhook_urls_allowed(url: str) -> None:
    assert check_url(url, HOSTS) == url


@pytest.mark.parametrize(("url", "hosts", "reason"), [
    ("http://169.254.169.254/latest", HOSTS, "not allowed"),
    ("http://hooks.example.com.evil.net/", HOSTS, "not allowed"),
    ("ftp://127.0.0.1/x", HOSTS, "http or https"),
    ("/relative", HOSTS, "http or https"),
    ("http://127.0.0.1/x", "", "gateway_webhook_hosts is empty"),
])
def test_webhook_urls_refused(url: str, hosts: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        check_url(url, hosts)


@pytest.mark.parametrize(("status", "retried"), [
    (500, True), (503, True), (429, True), (408, True), (409, True), (400, False),
    (404, False), (301, False),
])
def test_webhook_retries(status: int, retried: bool) -> None:
    assert should_retry(status) is retried


def test_webhook_backoff_doubles_up_to_a_cap() -> None:
    waits = [backoff_s(retry) for retry in range(8)]
    assert 0.375 <= waits[0] <= 0.5
    assert all(wait <= 8.0 for wait in waits)
    assert waits[-1] >= 6.0


def test_lines_are_numbered_as_in_the_file() -> None:
    line = {"custom_id": "a", "method": "POST", "url": "/v1/embeddings",
            "body": {"input": "x"}}
    parsed = parse_line(7, json.dumps(line).encode())
    assert isinstance(parsed, BatchLine) and parsed.line_no == 7
    refused = parse_line(9, b'{"custom_id": "b"}')
    assert isinstance(refused, LineError) and str(refused).startswith("line 9:")
    assert parse_line(3, b"  ") is None


def test_error_lists_are_capped_and_say_how_many_more() -> None:
    found = InputCheck()
    for line in range(MAX_LISTED + 5):
        found.add(batch_error("invalid_request", "bad", line=line + 1))
    listed = found.listed()
    assert len(listed) == MAX_LISTED + 1
    assert listed[-1]["code"] == "too_many_errors" and "5 more" in listed[-1]["message"]
    assert not found.ok
