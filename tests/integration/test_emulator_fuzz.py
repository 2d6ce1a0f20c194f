"""The emulator under fuzzing, over a real socket: schemathesis against its OpenAPI document,
then hand-written abuse (oversized, malformed, mislabelled and deeply nested bodies).

Every answer is a documented status with a conforming body and never a 5xx, except the
deliberate 500 of a duplicate create (the real service answers that); faults stay off. After
each piece of abuse the emulator still serves a normal request on a fresh connection, and
nothing it logs says "unexpected error".
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from polling import wait_until
from schemathesis import Case, CheckContext, CheckFunction, Response
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance
from schemathesis.specs.openapi.schemas import OpenApiSchema

from emulator.app import create_app
from emulator.server import EmulatorServer
from emulator.settings import EmulatorSettings

pytestmark = pytest.mark.timeout(120)

CONTROL = "/2025-09-10/agents/model-proxies"
ADMIN_SETTINGS = "/_emulator/settings"
READY_PROXY = "fuzz-ready"
FUZZ_EXAMPLES = 50  # per operation
# Faults off, no pacing, instant lifecycle: any 5xx or slow answer is the emulator's own.
BASELINE = EmulatorSettings(create_delay_s=0, update_delay_s=0, delete_delay_s=0)
REQUEST_TIMEOUT_S = 20.0
QUICK_S = 5.0  # an oversized or broken request is refused within this
JSON_TYPE = {"content-type": "application/json"}


class _ErrorLog(logging.Handler):
    """ERROR records of the emulator's loggers and uvicorn's (the server runs in a thread
    of this process, so its logging is ours to watch)."""

    WATCHED = ("emulator", "uvicorn.error")

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(self.WATCHED):
            self.records.append(record)


@pytest.fixture(scope="module")
def error_log() -> Iterator[_ErrorLog]:
    handler = _ErrorLog()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)


@pytest.fixture(scope="module")
def emulator(error_log: _ErrorLog) -> Iterator[EmulatorServer]:
    with EmulatorServer(settings=BASELINE) as server:
        created = httpx.post(f"{server.url}{CONTROL}", json={
            "modelProxyName": READY_PROXY,
            "proxyConfig": {"endpoints": [{"modelNames": ["m1"]}]},
        })
        created.raise_for_status()
        yield server


@pytest.fixture(autouse=True)
def _no_unexpected_errors(error_log: _ErrorLog) -> Iterator[None]:
    before = len(error_log.records)
    yield
    time.sleep(0.02)  # uvicorn logs an app's exception just after its 500 went out
    logged = [f"{r.name}: {r.getMessage()}" for r in error_log.records[before:]]
    assert not logged, f"the emulator logged unexpected errors: {logged}"


# ---- schemathesis ---------------------------------------------------------------------------

# Generated from the app's own document at import (schemathesis' fixture-based loader does not
# work with this pytest); the test below checks the live server serves the same document.
DOCUMENT = create_app().openapi()
schema: OpenApiSchema = schemathesis.openapi.from_dict(DOCUMENT)


def test_served_document_is_the_fuzzed_one(emulator: EmulatorServer) -> None:
    assert httpx.get(f"{emulator.url}/openapi.json").json() == DOCUMENT


def _is_duplicate_create(case: Case[Any], response: Response) -> bool:
    if case.method.upper() != "POST" or case.path != CONTROL or response.status_code != 500:
        return False
    body = json.loads(response.content)
    return bool(body.get("code") == "ResourceAlreadyExist"
                and "already exists" in body.get("message", ""))


def no_unexpected_server_error(ctx: CheckContext, response: Response,
                               case: Case[Any]) -> bool | None:
    """`not_a_server_error`, except the deliberate 500 of a duplicate create."""
    if _is_duplicate_create(case, response):
        return None
    return not_a_server_error(ctx, response, case)


def _restore_settings(url: str) -> None:
    """Undo whatever a fuzzed `PUT /_emulator/settings` set (latency, faults, delays)."""
    httpx.put(f"{url}{ADMIN_SETTINGS}", json=BASELINE.model_dump()).raise_for_status()


def _has_whole_decimal(value: Any) -> bool:
    if isinstance(value, float):
        return value.is_integer()
    if isinstance(value, dict):
        return any(_has_whole_decimal(item) for item in value.values())
    if isinstance(value, list):
        return any(_has_whole_decimal(item) for item in value)
    return False


def schema_valid_data_accepted(ctx: CheckContext, response: Response,
                               case: Case[Any]) -> bool | None:
    """`positive_data_acceptance`, except a 400 for a body with a decimal like 5.0: JSON
    Schema calls it an integer, the control plane wants a JSON integer there."""
    if response.status_code == 400 and _has_whole_decimal(case.body):
        return None
    return positive_data_acceptance(ctx, response, case)


def _excluded_checks(case: Case[Any]) -> list[CheckFunction]:
    # pydantic's lax mode (the admin routes, query parameters) takes 0/1 for a boolean and
    # false/true for an integer, so some "schema-violating" requests are rightly accepted.
    # `schema_valid_data_accepted` stands in for positive_data_acceptance.
    excluded: list[CheckFunction] = [
        not_a_server_error, negative_data_rejection, positive_data_acceptance
    ]
    return excluded


def _additional_checks(case: Case[Any]) -> list[CheckFunction]:
    checks: list[CheckFunction] = [no_unexpected_server_error]
    if not case.path.startswith("/models/"):
        # The data plane reads its body itself and the document does not describe it, so
        # "schema-valid" there says nothing (a missing body is rightly a 400).
        checks.append(schema_valid_data_accepted)
    return checks


@schema.parametrize()
@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_openapi_fuzz(case: Case[Any], emulator: EmulatorServer) -> None:
    try:
        case.call_and_validate(
            base_url=emulator.url,
            timeout=REQUEST_TIMEOUT_S,
            excluded_checks=_excluded_checks(case),
            additional_checks=_additional_checks(case),
        )
    finally:
        if case.path == ADMIN_SETTINGS and case.method.upper() == "PUT":
            _restore_settings(emulator.url)


# ---- hand-written abuse ---------------------------------------------------------------------


def _chat_url(server: EmulatorServer) -> str:
    return f"{server.url}/models/{READY_PROXY}/v1/chat/completions"


def _responses_url(server: EmulatorServer) -> str:
    return f"{server.url}/models/{READY_PROXY}/v1/responses"


def _embeddings_url(server: EmulatorServer) -> str:
    return f"{server.url}/models/{READY_PROXY}/v1/embeddings"


def _still_serves(server: EmulatorServer) -> None:
    """A fresh connection gets a normal answer on both planes."""
    with httpx.Client(timeout=REQUEST_TIMEOUT_S) as client:
        reply = client.post(_chat_url(server), json={
            "messages": [{"role": "user", "content": "still there?"}]})
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["message"]["content"]
        got = client.get(f"{server.url}{CONTROL}/{READY_PROXY}")
        assert got.status_code == 200, got.text
        assert got.json()["data"]["status"] == "READY"


def _send(method: str, url: str, content: bytes | Iterator[bytes],
          headers: dict[str, str] | None = JSON_TYPE) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    with httpx.Client(timeout=REQUEST_TIMEOUT_S) as client:
        response = client.request(method, url, content=content, headers=headers)
    return response, time.monotonic() - started


def _assert_client_error(response: httpx.Response, *allowed: int) -> None:
    where = (response.request.method, response.request.url.path, response.status_code,
             response.text[:300])
    assert 400 <= response.status_code < 500, where
    if allowed:
        assert response.status_code in allowed, where
    if response.status_code == 413:
        return  # refused before any handler ran, possibly as plain text: clear enough
    body = response.json()  # a JSON error body, not a bare text page
    assert isinstance(body, dict), where
    assert "error" in body or {"code", "message"} <= body.keys(), where


def test_oversized_chat_body_is_refused_quickly(emulator: EmulatorServer) -> None:
    body = json.dumps({"messages": [{"role": "user", "content": "word " * 4_000_000}]}).encode()
    assert len(body) > 20_000_000
    response, elapsed_s = _send("POST", _chat_url(emulator), body)
    _assert_client_error(response, 400, 413)
    assert elapsed_s < QUICK_S
    _still_serves(emulator)


def test_oversized_create_body_is_refused_quickly(emulator: EmulatorServer) -> None:
    body = json.dumps({
        "modelProxyName": "fuzz-huge",
        "description": "x" * 5_000_000,
        "proxyConfig": {"endpoints": [{"modelNames": ["m1"]}]},
    }).encode()
    response, elapsed_s = _send("POST", f"{emulator.url}{CONTROL}", body)
    _assert_client_error(response, 400, 413)
    assert elapsed_s < QUICK_S
    assert httpx.get(f"{emulator.url}{CONTROL}/fuzz-huge").status_code == 404
    _still_serves(emulator)


def test_oversized_chunked_body_is_refused(emulator: EmulatorServer) -> None:
    """No Content-Length to trust: a 20 MB body in chunks is counted as it arrives."""

    def chunks() -> Iterator[bytes]:
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(400):
            yield b"y" * 50_000
        yield b'"}]}'

    started = time.monotonic()
    try:
        response: httpx.Response | None = _send("POST", _chat_url(emulator), chunks())[0]
    except httpx.WriteError:
        response = None  # the server answered and closed before the last chunk went out
    if response is not None:
        _assert_client_error(response, 400, 413)
    assert time.monotonic() - started < QUICK_S
    _still_serves(emulator)


# Not a JSON object: refused by every route that takes a body.
NOT_AN_OBJECT = [
    b"",
    b"{",
    b"{not json",
    b'{"messages": [}',
    b"[]",
    b"null",
    b'"a string"',
    b"\xff\xfe\x00garbage",
    b'{"messages": [{"role": "user", "content": "hi"}]} trailing',
    b"NaN",
]


def _body_routes(server: EmulatorServer) -> list[tuple[str, str]]:
    return [("POST", _chat_url(server)), ("POST", _responses_url(server)),
            ("POST", _embeddings_url(server)), ("POST", f"{server.url}{CONTROL}"),
            ("PUT", f"{server.url}{CONTROL}/{READY_PROXY}")]


@pytest.mark.parametrize("body", NOT_AN_OBJECT, ids=lambda b: repr(b[:24]))
def test_malformed_json_gets_a_clear_400(emulator: EmulatorServer, body: bytes) -> None:
    for method, url in _body_routes(emulator):
        response, _ = _send(method, url, body)
        _assert_client_error(response, 400)
    _still_serves(emulator)


# Valid JSON objects with odd values: answered (200) or refused (4xx), never a 5xx.
ODD_CHAT_BODIES = {
    "infinite-max-tokens":
        b'{"max_tokens": 1e999999, "messages": [{"role": "user", "content": "x"}]}',
    "huge-max-tokens":
        b'{"max_tokens": 100000000000000000000000, "messages": [{"role": "user", "content": "x"}]}',
    "lone-surrogate": b'{"messages": [{"role": "user", "content": "\\ud800 lone surrogate"}]}',
    "nul-characters":
        b'{"messages": [{"role": "user", "content": "nul \\u0000 inside"}], "model": "\\u0000"}',
    "text-part-object":
        b'{"messages": [{"role": "user", "content": [{"type": "text", "text": {"x": [1]}}]}]}',
    "stream-not-boolean": b'{"messages": [{"role": "user", "content": "x"}], "stream": "yes"}',
    "stream-options-list":
        b'{"messages": [{"role": "user", "content": "x"}], "stream_options": []}',
    "duplicate-key": b'{"messages": [{"role": "user"}], "messages": []}',
}


@pytest.mark.parametrize("body", ODD_CHAT_BODIES.values(), ids=ODD_CHAT_BODIES.keys())
def test_odd_chat_values_never_break_the_emulator(emulator: EmulatorServer,
                                                   body: bytes) -> None:
    response, _ = _send("POST", _chat_url(emulator), body)
    if response.status_code != 200:
        _assert_client_error(response, 400)
    _still_serves(emulator)


# Valid JSON objects with odd embedding inputs: answered (200) or refused (4xx), never a 5xx.
ODD_EMBEDDING_BODIES = {
    "huge-token-id": b'{"input": [100000000000000000000000000000]}',
    "huge-dimensions": b'{"input": "x", "dimensions": 100000000000000000000000}',
    "lone-surrogate": b'{"input": ["\\ud800 lone surrogate"]}',
    "lone-surrogate-model": b'{"input": "x", "model": "\\ud800"}',
    "nested-too-deep": b'{"input": [[[1]]]}',
    "mixed-items": b'{"input": [[1], "a", 2]}',
    "float-dimensions": b'{"input": "x", "dimensions": 8.0}',
}


@pytest.mark.parametrize("body", ODD_EMBEDDING_BODIES.values(), ids=ODD_EMBEDDING_BODIES.keys())
def test_odd_embedding_values_never_break_the_emulator(emulator: EmulatorServer,
                                                        body: bytes) -> None:
    response, _ = _send("POST", _embeddings_url(emulator), body)
    if response.status_code != 200:
        _assert_client_error(response, 400)
    _still_serves(emulator)


WRONG_TYPES = ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
               "application/xml", "image/png"]


@pytest.mark.parametrize("content_type", WRONG_TYPES)
def test_wrong_content_type_gets_a_clear_4xx(emulator: EmulatorServer, content_type: str) -> None:
    chat = json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode()
    create = json.dumps({"modelProxyName": "fuzz-ct",
                         "proxyConfig": {"endpoints": [{"modelNames": ["m1"]}]}}).encode()
    for url, body in ((_chat_url(emulator), chat), (_responses_url(emulator), b'{"input": "hi"}'),
                      (_embeddings_url(emulator), b'{"input": "hi"}'),
                      (f"{emulator.url}{CONTROL}", create)):
        response, _ = _send("POST", url, body, {"content-type": content_type})
        _assert_client_error(response, 400, 415)
    assert httpx.get(f"{emulator.url}{CONTROL}/fuzz-ct").status_code == 404
    _still_serves(emulator)


def _nested(depth: int) -> str:
    return "[" * depth + "1" + "]" * depth


@pytest.mark.parametrize("depth", [300, 1_000, 100_000])
def test_deeply_nested_json_gets_a_clear_4xx(emulator: EmulatorServer, depth: int) -> None:
    """Nesting inside fields each plane keeps or ignores; answered (the extra data ignored)
    or refused with a 4xx, never a 5xx."""
    nested = _nested(depth)
    bodies = [
        ("POST", _chat_url(emulator),
         f'{{"messages": [{{"role": "user", "content": "x"}}], "metadata": {nested}}}'),
        ("POST", _chat_url(emulator),
         f'{{"messages": [{{"role": "user", "content": [{{"text": {nested}}}]}}]}}'),
        ("POST", _responses_url(emulator), f'{{"input": "x", "metadata": {nested}}}'),
        ("POST", f"{emulator.url}{CONTROL}",
         f'{{"modelProxyName": "fuzz-deep-{depth}", '
         f'"proxyConfig": {{"policies": {{"x": {nested}}}}}}}'),
        ("PUT", f"{emulator.url}{CONTROL}/{READY_PROXY}",
         f'{{"proxyConfig": {{"endpoints": [{{"modelNames": ["m1"]}}], '
         f'"policies": {{"x": {nested}}}}}}}'),
    ]
    for method, url, text in bodies:
        response, _ = _send(method, url, text.encode())
        if response.status_code != 200:
            _assert_client_error(response, 400, 413)
    _wait_ready(emulator, READY_PROXY)
    _still_serves(emulator)


def _wait_ready(server: EmulatorServer, name: str) -> None:
    def ready() -> bool:
        got: dict[str, Any] = httpx.get(f"{server.url}{CONTROL}/{name}").json()
        return bool(got.get("data", {}).get("status") == "READY")

    wait_until(ready, QUICK_S, what=f"{name} to be READY again")


def test_listing_still_works_after_the_abuse(emulator: EmulatorServer) -> None:
    """Whatever the abuse stored, every proxy can still be listed and read back."""
    listed = httpx.get(f"{emulator.url}{CONTROL}", params={"pageSize": 100},
                       timeout=REQUEST_TIMEOUT_S)
    assert listed.status_code == 200, listed.text[:300]
    for item in listed.json()["data"]["items"]:
        name = quote(item["modelProxyName"], safe="")
        got = httpx.get(f"{emulator.url}{CONTROL}/{name}", timeout=REQUEST_TIMEOUT_S)
        assert got.status_code == 200, (name, got.text[:300])
