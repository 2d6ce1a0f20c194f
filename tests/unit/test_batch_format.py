"""OpenAI Batch input parsing and output lines: tables, then hypothesis properties."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.contract import PROXY_NAME_PATTERN, PROXY_NAME_RULE, JobKind, JobRecord, JobStatus
from producer.batch_format import (
    CUSTOM_ID_MAX_CHARS,
    BatchLine,
    LineError,
    ParsedBatch,
    error_code,
    error_line,
    error_line_for_invalid,
    output_line,
    parse_batch,
)

CHAT_URL = "/v1/chat/completions"
RESPONSES_URL = "/v1/responses"
NO_PROXY = 'no proxy: pass --proxy or set "proxy" on the line'
BOUNDED = settings(max_examples=200, deadline=None)
proxy_names = st.from_regex(PROXY_NAME_PATTERN, fullmatch=True)


def chat_line(custom_id: str = "a", **overrides: Any) -> dict[str, Any]:
    line: dict[str, Any] = {
        "custom_id": custom_id,
        "method": "POST",
        "url": CHAT_URL,
        "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
    }
    line.update(overrides)
    return line


def responses_line(custom_id: str = "r", **overrides: Any) -> dict[str, Any]:
    line: dict[str, Any] = {
        "custom_id": custom_id,
        "method": "POST",
        "url": RESPONSES_URL,
        "body": {"model": "m", "input": "hello"},
    }
    line.update(overrides)
    return line


def with_body(line: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {**line, "body": {**line["body"], **fields}}


def dumps(obj: Any) -> str:
    return json.dumps(obj) + "\n"


def only_error(raw: str | bytes, default_proxy: str | None = "p", **kwargs: Any) -> LineError:
    parsed = parse_batch([raw], default_proxy, **kwargs)
    assert parsed.lines == []
    assert len(parsed.errors) == 1
    return parsed.errors[0]


# ---- good input ----------------------------------------------------------------------------


def test_good_file_with_both_kinds():
    chat, resp = chat_line("c1"), responses_line("r1")
    parsed = parse_batch([dumps(chat), dumps(resp)], "proxy-a")
    assert parsed.ok
    assert parsed.errors == []
    assert parsed.lines == [
        BatchLine(line_no=1, custom_id="c1", kind=JobKind.CHAT, body=chat["body"], proxy="proxy-a"),
        BatchLine(2, "r1", JobKind.RESPONSES, resp["body"], "proxy-a"),
    ]


def test_per_line_proxy_overrides_the_default_and_stands_alone():
    lines = [dumps(chat_line("a", proxy="px")), dumps(chat_line("b"))]
    assert [line.proxy for line in parse_batch(lines, "dflt").lines] == ["px", "dflt"]
    parsed = parse_batch(lines, None)
    assert [line.proxy for line in parsed.lines] == ["px"]
    assert [(e.line_no, e.custom_id, e.reason) for e in parsed.errors] == [(2, "b", NO_PROXY)]


def test_a_bad_proxy_name_refuses_its_line_only():
    lines = [dumps(chat_line("a", proxy="ok-1")), dumps(chat_line("b", proxy="x:y")),
             dumps(chat_line("c")), dumps(chat_line("d", proxy="a*b?"))]
    parsed = parse_batch(lines, "dflt_2")
    assert [(line.line_no, line.proxy) for line in parsed.lines] == [(1, "ok-1"), (3, "dflt_2")]
    assert [(e.line_no, e.custom_id, e.reason) for e in parsed.errors] == [
        (2, "b", f'proxy name "x:y" is not valid: {PROXY_NAME_RULE}'),
        (4, "d", f'proxy name "a*b?" is not valid: {PROXY_NAME_RULE}'),
    ]
    # A bad default refuses the lines that fall back on it, not those naming their own.
    parsed = parse_batch(lines[:1] + lines[2:3], "bad name")
    assert [line.line_no for line in parsed.lines] == [1]
    assert [str(e) for e in parsed.errors] == [
        f'line 2: proxy name "bad name" is not valid: {PROXY_NAME_RULE}'
    ]


@BOUNDED
@given(st.text(min_size=1) | proxy_names)
def test_a_line_proxy_is_taken_exactly_when_it_follows_the_rule(name):
    parsed = parse_batch([dumps(chat_line("a", proxy=name))], None)
    if PROXY_NAME_PATTERN.fullmatch(name):
        assert [line.proxy for line in parsed.lines] == [name]
    else:
        [error] = parsed.errors
        assert error.reason.startswith("proxy name ")
        assert error.reason.endswith(f" is not valid: {PROXY_NAME_RULE}")
        error.reason.encode("utf-8")  # storable, shown, whatever the name held


def test_blank_lines_are_skipped_but_counted():
    lines = ["\n", dumps(chat_line("a")), "   \t\r\n", "", dumps(chat_line("b", url="/x"))]
    parsed = parse_batch(lines, "p")
    assert [line.line_no for line in parsed.lines] == [2]
    assert [error.line_no for error in parsed.errors] == [5]


def test_bytes_input_and_crlf():
    parsed = parse_batch([dumps(chat_line("é")).encode(), b"\r\n", b"  \n"], "p")
    assert parsed.ok
    assert [line.custom_id for line in parsed.lines] == ["é"]


def test_utf8_bom_on_the_first_line_is_ignored():
    parsed = parse_batch([b"\xef\xbb\xbf" + dumps(chat_line()).encode()], "p")
    assert parsed.ok
    assert len(parsed.lines) == 1


@pytest.mark.parametrize(
    "line",
    [
        chat_line(method="post"),
        chat_line(extra_key=1, metadata={"x": 1}),
        with_body(chat_line(), max_tokens=5, max_completion_tokens=7, temperature=0, n=1),
        with_body(chat_line(), temperature=2.0, stream=False, model=None, n=None),
        with_body(
            chat_line(),
            messages=[
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "hi"}]},
                {"role": "assistant", "content": None, "tool_calls": [{"id": "t"}]},
                {"role": "assistant", "tool_calls": [{"id": "t2"}]},
                {"role": "tool", "content": "42", "tool_call_id": "t"},
            ],
        ),
        {k: v for k, v in chat_line().items() if k != "body"}
        | {"body": {"messages": [{"role": "user", "content": "no model"}]}},
        with_body(responses_line(), input=[{"role": "user", "content": "hi"}]),
        with_body(responses_line(), max_output_tokens=1, temperature=1.5),
    ],
)
def test_accepted_lines(line):
    parsed = parse_batch([dumps(line)], "p")
    assert parsed.ok, parsed.errors
    assert parsed.lines[0].body == line["body"]


# ---- bad lines -----------------------------------------------------------------------------

BAD_LINES = [
    # (line, custom_id in the error, reason)
    ("[1, 2]", None, "must be a JSON object, not an array"),
    ('"text"', None, "must be a JSON object, not a string"),
    ("{}", None, '"custom_id" must be a string, not null'),
    (chat_line(7), None, '"custom_id" must be a string, not a number'),
    (chat_line(""), None, '"custom_id" must not be empty'),
    (
        chat_line("x" * (CUSTOM_ID_MAX_CHARS + 1)),
        None,
        f'"custom_id" is {CUSTOM_ID_MAX_CHARS + 1} characters long, the limit is 512',
    ),
    (
        {k: v for k, v in chat_line().items() if k != "method"},
        "a",
        '"method" is missing; it must be "POST"',
    ),
    (chat_line(method="GET"), "a", '"method" must be "POST", not "GET"'),
    (chat_line(method=None), "a", '"method" must be "POST", not null'),
    (
        chat_line(url="/v1/completions"),
        "a",
        '"url" must be /v1/chat/completions, /v1/responses or /v1/embeddings, '
        'not "/v1/completions"',
    ),
    (
        chat_line(url="/chat/completions"),
        "a",
        '"url" must be /v1/chat/completions, /v1/responses or /v1/embeddings, '
        'not "/chat/completions"',
    ),
    (
        {k: v for k, v in chat_line().items() if k != "url"},
        "a",
        '"url" is missing; it must be /v1/chat/completions, /v1/responses or /v1/embeddings',
    ),
    (
        chat_line(url=["x"]),
        "a",
        '"url" must be /v1/chat/completions, /v1/responses or /v1/embeddings, not an array',
    ),
    (chat_line(proxy=""), "a", '"proxy" must be a non-empty string, not ""'),
    (chat_line(proxy=3), "a", '"proxy" must be a non-empty string, not 3'),
    (chat_line(proxy="a:b"), "a", f'proxy name "a:b" is not valid: {PROXY_NAME_RULE}'),
    (chat_line(proxy="p*"), "a", f'proxy name "p*" is not valid: {PROXY_NAME_RULE}'),
    (chat_line(proxy="p?"), "a", f'proxy name "p?" is not valid: {PROXY_NAME_RULE}'),
    (chat_line(proxy="my proxy"), "a", f'proxy name "my proxy" is not valid: {PROXY_NAME_RULE}'),
    (chat_line(proxy="-p"), "a", f'proxy name "-p" is not valid: {PROXY_NAME_RULE}'),
    (chat_line(proxy="p" * 65), "a", f'proxy name "{"p" * 64}…" is not valid: {PROXY_NAME_RULE}'),
    (chat_line(proxy="\ud800"), "a", f'proxy name "\\ud800" is not valid: {PROXY_NAME_RULE}'),
    (chat_line(proxy="\x1b[2J"), "a", f'proxy name "\\u001b[2J" is not valid: {PROXY_NAME_RULE}'),
    ({k: v for k, v in chat_line().items() if k != "body"}, "a", '"body" is missing'),
    (chat_line(body="hi"), "a", '"body" must be an object, not a string'),
    (chat_line(body={}), "a", '"body.messages" is missing'),
    (
        with_body(chat_line(), messages=[]),
        "a",
        '"body.messages" must be a non-empty list, not an array',
    ),
    (
        with_body(chat_line(), messages="hi"),
        "a",
        '"body.messages" must be a non-empty list, not "hi"',
    ),
    (
        with_body(chat_line(), messages=["hi"]),
        "a",
        '"body.messages[0]" must be an object, not a string',
    ),
    (
        with_body(chat_line(), messages=[{"role": "user", "content": "x"}, {"content": "y"}]),
        "a",
        '"body.messages[1].role" must be one of system, developer, user, assistant, tool, '
        "function, not null",
    ),
    (
        with_body(chat_line(), messages=[{"role": "narrator", "content": "y"}]),
        "a",
        '"body.messages[0].role" must be one of system, developer, user, assistant, tool, '
        'function, not "narrator"',
    ),
    (
        with_body(chat_line(), messages=[{"role": "user", "content": []}]),
        "a",
        '"body.messages[0].content" must be a string, a non-empty list of parts or null, '
        "not an array",
    ),
    (
        with_body(chat_line(), messages=[{"role": "user", "content": [{"type": "text"}]}]),
        "a",
        '"body.messages[0].content[0].text" must be a string',
    ),
    (
        with_body(responses_line("a"), input=["just text"]),
        "a",
        '"body.input[0]" must be an object with a string "type" or "role", not "just text"',
    ),
    (
        with_body(chat_line(), messages=[{"role": "user", "content": None}]),
        "a",
        '"body.messages[0].content" may be null only for an assistant or function message',
    ),
    (
        with_body(chat_line(), messages=[{"role": "user"}]),
        "a",
        '"body.messages[0].content" may be null only for an assistant or function message',
    ),
    (
        with_body(chat_line(), messages=[{"role": "user", "content": 5}]),
        "a",
        '"body.messages[0].content" must be a string, a non-empty list of parts or null, '
        "not 5",
    ),
    (
        with_body(chat_line(), messages=[{"role": "user", "content": ["hi"]}]),
        "a",
        '"body.messages[0].content[0]" must be an object with a string "type"',
    ),
    (
        with_body(chat_line(), stream=True),
        "a",
        "streaming is not supported in batches; use `mpq chat --stream`",
    ),
    (
        with_body(responses_line("a"), stream=True),
        "a",
        "streaming is not supported in batches; use `mpq chat --stream`",
    ),
    (with_body(chat_line(), stream="yes"), "a", '"body.stream" must be a boolean, not "yes"'),
    (with_body(chat_line(), model=4), "a", '"body.model" must be a string, not 4'),
    (
        with_body(chat_line(), max_tokens=0),
        "a",
        '"body.max_tokens" must be a positive integer, not 0',
    ),
    (
        with_body(chat_line(), max_tokens=1.5),
        "a",
        '"body.max_tokens" must be a positive integer, not 1.5',
    ),
    (
        with_body(chat_line(), max_completion_tokens=True),
        "a",
        '"body.max_completion_tokens" must be a positive integer, not a boolean',
    ),
    (
        with_body(responses_line("a"), max_output_tokens="9"),
        "a",
        '"body.max_output_tokens" must be a positive integer, not "9"',
    ),
    (
        with_body(chat_line(), temperature=2.5),
        "a",
        '"body.temperature" must be a number from 0 to 2, not 2.5',
    ),
    (
        with_body(chat_line(), temperature=-0.1),
        "a",
        '"body.temperature" must be a number from 0 to 2, not -0.1',
    ),
    (
        with_body(chat_line(), n=2),
        "a",
        '"body.n" must be 1 or absent (a batch request returns one choice), not 2',
    ),
    (responses_line("a", body={}), "a", '"body.input" is missing'),
    (
        with_body(responses_line("a"), input=""),
        "a",
        '"body.input" must be a non-empty string or list, not ""',
    ),
    (
        with_body(responses_line("a"), input=[]),
        "a",
        '"body.input" must be a non-empty string or list, not an array',
    ),
    (
        with_body(responses_line("a"), input=3),
        "a",
        '"body.input" must be a non-empty string or list, not 3',
    ),
]


@pytest.mark.parametrize(("line", "custom_id", "reason"), BAD_LINES)
def test_refused_lines(line, custom_id, reason):
    raw = line if isinstance(line, str) else json.dumps(line)
    error = only_error(raw)
    assert (error.line_no, error.custom_id, error.reason) == (1, custom_id, reason)
    assert str(error) == f"line 1: {reason}"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("{", "not valid JSON: Expecting property name enclosed in double quotes (column 2)"),
        ("not json", "not valid JSON: Expecting value (column 1)"),
        ('{"a": 1} x', "not valid JSON: Extra data (column 10)"),
        ('{"temperature": NaN}', "not valid JSON: NaN is not allowed in JSON"),
        ('{"x": -Infinity}', "not valid JSON: -Infinity is not allowed in JSON"),
        ('{"x": 1e999}', "not valid JSON: number 1e999 is out of range"),
        ("[" * 100_000, "not valid JSON: nested too deeply"),
        (b"\xff{}", "not valid UTF-8: byte 0xff at offset 0"),
        (b'{"custom_id": "\xc3"}', "not valid UTF-8: byte 0xc3 at offset 15"),
        ("{\ud800}", "not valid UTF-8: unpaired surrogate at character 1"),
    ],
)
def test_undecodable_lines(raw, reason):
    error = only_error(raw)
    assert (error.custom_id, error.reason) == (None, reason)


def test_huge_integer_is_an_error_not_an_exception():
    error = only_error('{"x": ' + "9" * 5000 + "}")
    assert error.reason.startswith("not valid JSON: ")


def test_oversized_line():
    raw = dumps(with_body(chat_line(), pad="x" * 200))
    size = len(raw.encode()) - 1  # the newline does not count
    assert parse_batch([raw], "p", max_line_bytes=size).ok
    error = only_error(raw, max_line_bytes=size - 1)
    assert error.reason == f"too long: {size} bytes, the limit is {size - 1}"
    assert only_error(raw.encode(), max_line_bytes=size - 1).reason == error.reason


def test_oversized_counts_bytes_not_characters():
    raw = json.dumps(chat_line("é" * 10), ensure_ascii=False)
    assert only_error(raw, max_line_bytes=len(raw)).reason.startswith("too long: ")


def test_duplicates_name_the_first_line():
    lines = [
        dumps(chat_line("x")),
        dumps(chat_line("y")),
        dumps(chat_line("x")),
        dumps(responses_line("x")),
    ]
    parsed = parse_batch(lines, "p")
    assert [line.line_no for line in parsed.lines] == [1, 2]
    assert [str(error) for error in parsed.errors] == [
        'line 3: duplicate custom_id "x" (first on line 1)',
        'line 4: duplicate custom_id "x" (first on line 1)',
    ]
    assert all(error.custom_id == "x" for error in parsed.errors)


def test_duplicate_of_an_invalid_line_is_still_a_duplicate():
    parsed = parse_batch([dumps(chat_line("x", url="/bad")), dumps(chat_line("x"))], "p")
    assert parsed.lines == []
    assert [error.reason for error in parsed.errors][1] == (
        'duplicate custom_id "x" (first on line 1)'
    )


def test_errors_and_lines_keep_input_order():
    lines = [dumps(chat_line(str(i), url="/bad" if i % 2 else CHAT_URL)) for i in range(6)]
    parsed = parse_batch(lines, "p")
    assert [line.custom_id for line in parsed.lines] == ["0", "2", "4"]
    assert [error.custom_id for error in parsed.errors] == ["1", "3", "5"]
    assert not parsed.ok


def test_empty_input_is_ok():
    assert parse_batch([], None) == ParsedBatch(lines=[], errors=[])
    assert parse_batch([], None).ok


# ---- output lines --------------------------------------------------------------------------


def record(status: JobStatus, **fields: Any) -> JobRecord:
    return JobRecord(
        id="j1", kind=JobKind.CHAT, proxy="p", request={}, status=status, custom_id="c", **fields
    )


def test_output_line_for_a_success():
    body = {"id": "chatcmpl-1", "choices": [], "usage": {"total_tokens": 3}}
    line = output_line(record(JobStatus.SUCCEEDED, result=body, upstream_request_id="req_9"))
    assert line == {
        "id": "batch_req_j1",
        "custom_id": "c",
        "response": {"status_code": 200, "request_id": "req_9", "body": body},
        "error": None,
    }
    assert json.loads(json.dumps(line)) == line


def test_output_line_without_an_upstream_request_id_gives_the_job_id():
    line = output_line(record(JobStatus.SUCCEEDED, result={}))
    assert line["response"]["request_id"] == "j1"


def test_output_line_refuses_an_unsuccessful_job():
    with pytest.raises(ValueError, match="failed"):
        output_line(record(JobStatus.FAILED, error="x"))


@pytest.mark.parametrize(
    ("status", "error", "code", "message"),
    [
        (
            JobStatus.FAILED,
            "attempt 2: APITimeoutError: timed out",
            "APITimeoutError",
            "attempt 2: APITimeoutError: timed out",
        ),
        (JobStatus.FAILED, "attempt 1: StreamInterruptedError: cut", "StreamInterruptedError",
         None),
        (JobStatus.FAILED, "ProxyNotFoundError: no", "ProxyNotFoundError", None),
        (JobStatus.FAILED, "worker lost the job", "failed", None),
        (JobStatus.FAILED, "attempt 3: something odd happened", "failed", None),
        (JobStatus.FAILED, None, "failed", "failed"),
    ],
)
def test_error_line_without_an_upstream_answer(status, error, code, message):
    line = error_line(record(status, error=error))
    assert line == {
        "id": "batch_req_j1",
        "custom_id": "c",
        "response": None,
        "error": {"code": code, "message": message or error},
    }


UPSTREAM_ERRORS = [
    (400, {"message": "bad model", "type": "invalid_request_error", "param": "model",
           "code": "model_not_found"}),
    (503, {"message": "unavailable", "type": "server_error", "param": None,
           "code": "service_unavailable"}),
]


@pytest.mark.parametrize(("status", "upstream_error"), UPSTREAM_ERRORS)
def test_error_line_of_an_upstream_answer_is_that_answer(status, upstream_error):
    """4xx or 5xx alike: the upstream answered, so the line has its `response`, no `error`."""
    failed = record(JobStatus.FAILED, error=f"attempt 1: HTTP {status}", upstream_status=status,
                    upstream_error=upstream_error, upstream_request_id="req_1")
    assert error_line(failed) == {
        "id": "batch_req_j1",
        "custom_id": "c",
        "response": {"status_code": status, "request_id": "req_1",
                     "body": {"error": upstream_error}},
        "error": None,
    }


def test_error_line_of_an_upstream_answer_without_request_id_gives_the_job_id():
    failed = record(JobStatus.FAILED, error="x", upstream_status=400,
                    upstream_error=UPSTREAM_ERRORS[0][1])
    assert error_line(failed)["response"]["request_id"] == "j1"


@pytest.mark.parametrize("error", [None, "attempt 1: ServerError: HTTP 500"])
@pytest.mark.parametrize(("code", "message"), [
    ((), "This request was cancelled before it completed."),
    (("batch_cancelled",), "This request was cancelled before it completed."),
    (("batch_expired",),
     "This request could not be executed before the completion window expired."),
])
def test_error_line_of_a_cancelled_job(error, code, message):
    """Never an upstream answer, whatever its earlier attempts met."""
    line = error_line(record(JobStatus.CANCELLED, error=error), *code)
    assert line == {
        "id": "batch_req_j1",
        "custom_id": "c",
        "response": None,
        "error": {"code": code[0] if code else "batch_cancelled", "message": message},
    }
    assert error_code(record(JobStatus.CANCELLED)) == "batch_cancelled"


def test_error_line_refuses_a_success():
    with pytest.raises(ValueError, match="succeeded"):
        error_line(record(JobStatus.SUCCEEDED, result={}))


def test_error_line_for_invalid():
    error = LineError(line_no=7, custom_id="q", reason='"url" must be …')
    assert error_line_for_invalid(error) == {
        "id": None,
        "custom_id": "q",
        "response": None,
        "error": {"code": "invalid_request", "message": 'line 7: "url" must be …', "line": 7},
    }
    assert error_line_for_invalid(LineError(2, None, "x"))["custom_id"] is None


# ---- properties ----------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=10,
)
messages = st.lists(
    st.fixed_dictionaries(
        {
            "role": st.sampled_from(["system", "developer", "user", "assistant"]),
            "content": st.text()
            | st.lists(
                st.fixed_dictionaries({"type": st.just("text"), "text": st.text()}),
                min_size=1, max_size=3,
            ),
        }
    ),
    min_size=1,
    max_size=4,
)
knobs = st.fixed_dictionaries(
    {},
    optional={
        "model": st.text(),
        "max_tokens": st.integers(min_value=1),
        "max_completion_tokens": st.integers(min_value=1, max_value=10**9),
        "max_output_tokens": st.integers(min_value=1, max_value=10**9),
        "temperature": st.floats(min_value=0, max_value=2),
        "n": st.just(1),
        "stream": st.just(False),
        "metadata": json_values,
    },
)
chat_bodies = st.tuples(messages, knobs).map(lambda mk: {"messages": mk[0], **mk[1]})
input_items = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant"]),
                                     "content": st.text()}) | st.fixed_dictionaries(
    {"type": st.just("message")}, optional={"content": json_values})
responses_inputs = st.text(min_size=1) | st.lists(input_items, min_size=1, max_size=3)
responses_bodies = st.tuples(responses_inputs, knobs).map(lambda ik: {"input": ik[0], **ik[1]})
custom_ids = st.text(min_size=1, max_size=CUSTOM_ID_MAX_CHARS)


@st.composite
def valid_lines(draw: st.DrawFn, custom_id: str | None = None) -> dict[str, Any]:
    kind = draw(st.sampled_from([JobKind.CHAT, JobKind.RESPONSES]))
    line: dict[str, Any] = {
        "custom_id": custom_id if custom_id is not None else draw(custom_ids),
        "method": draw(st.sampled_from(["POST", "post", "Post"])),
        "url": CHAT_URL if kind is JobKind.CHAT else RESPONSES_URL,
        "body": draw(chat_bodies if kind is JobKind.CHAT else responses_bodies),
    }
    if draw(st.booleans()):
        line["proxy"] = draw(proxy_names)
    return line


# Lines shaped like the format with random values, so the checks past JSON get exercised.
fuzzy_lines = st.fixed_dictionaries(
    {},
    optional={
        "custom_id": custom_ids | json_values,
        "method": st.sampled_from(["POST", "GET"]) | json_values,
        "url": st.sampled_from([CHAT_URL, RESPONSES_URL]) | json_values,
        "proxy": st.text() | json_values,
        "body": st.fixed_dictionaries(
            {},
            optional={
                "messages": st.lists(
                    st.dictionaries(st.sampled_from(["role", "content"]), json_values),
                    max_size=3,
                )
                | json_values,
                "input": json_values,
                "stream": json_values,
                "n": json_values,
                "temperature": json_values,
                "max_tokens": json_values,
            },
        )
        | json_values,
    },
).map(json.dumps)


def is_blank(raw: str | bytes, line_no: int) -> bool:
    try:
        text = raw.decode() if isinstance(raw, bytes) else raw
    except UnicodeDecodeError:
        return False
    return not (text.removeprefix("\ufeff") if line_no == 1 else text).strip()


@BOUNDED
@given(st.lists(st.text() | st.binary() | fuzzy_lines, max_size=12), st.none() | st.text())
def test_any_input_never_raises_and_every_line_lands_once(raw_lines, default_proxy):
    parsed = parse_batch(raw_lines, default_proxy)
    expected = {n for n, raw in enumerate(raw_lines, start=1) if not is_blank(raw, n)}
    line_nos = [line.line_no for line in parsed.lines]
    error_nos = [error.line_no for error in parsed.errors]
    assert sorted(line_nos + error_nos) == sorted(expected)
    assert line_nos == sorted(line_nos)
    assert error_nos == sorted(error_nos)
    for error in parsed.errors:
        assert str(error).startswith(f"line {error.line_no}: ")
        assert json.dumps(error_line_for_invalid(error))


@BOUNDED
@given(st.lists(valid_lines(), min_size=1, max_size=6), st.booleans(), proxy_names)
def test_valid_lines_parse_and_keep_custom_id_kind_and_body(lines, as_bytes, default_proxy):
    unique = list({line["custom_id"]: line for line in lines}.values())
    raw = [json.dumps(line) + "\n" for line in unique]
    parsed = parse_batch([r.encode() for r in raw] if as_bytes else raw, default_proxy)
    assert parsed.ok, parsed.errors
    assert len(parsed.lines) == len(unique)
    for n, (line, got) in enumerate(zip(unique, parsed.lines, strict=True), start=1):
        assert got.line_no == n
        assert got.custom_id == line["custom_id"]
        assert got.kind == (JobKind.CHAT if line["url"] == CHAT_URL else JobKind.RESPONSES)
        assert got.body == line["body"]
        assert got.proxy == line.get("proxy", default_proxy)


MUTATIONS: list[tuple[str, Any]] = [
    ("url", "/v1/completions"),
    ("method", "GET"),
    ("body", []),
    ("stream", True),
    ("n", 3),
    ("temperature", 9),
]


@st.composite
def mixed_files(draw: st.DrawFn) -> list[str]:
    """Valid and broken lines with unique custom_ids, plus junk without one."""
    ids = draw(st.lists(custom_ids, unique=True, max_size=6))
    out = []
    for custom_id in ids:
        line = draw(valid_lines(custom_id))
        mutation = draw(st.none() | st.sampled_from(MUTATIONS))
        if mutation is not None:
            key, value = mutation
            target = line if key in {"url", "method", "body"} else line["body"]
            target[key] = value
        out.append(json.dumps(line))
    junk = st.sampled_from(["not json", "[1]", "{}", "", "  ", '{"custom_id": 1}'])
    out += draw(st.lists(junk, max_size=4))
    return out


def outcome(parsed: ParsedBatch) -> Counter[tuple[Any, ...]]:
    good = [
        ("ok", line.custom_id, line.kind, json.dumps(line.body, sort_keys=True), line.proxy)
        for line in parsed.lines
    ]
    bad = [("error", error.custom_id, error.reason) for error in parsed.errors]
    return Counter(good + bad)


@BOUNDED
@given(mixed_files(), st.randoms(use_true_random=False), st.none() | st.just("dflt"))
def test_shuffling_lines_preserves_the_results(lines, rng, default_proxy):
    before = outcome(parse_batch(lines, default_proxy))
    shuffled = list(lines)
    rng.shuffle(shuffled)
    assert outcome(parse_batch(shuffled, default_proxy)) == before
