"""Signing: AGENTRUN4 spec vectors, ACS3 captured official-SDK requests, httpx auth classes."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelproxy.auth import Acs3Auth, AgentrunRamAuth, ApiKeyAuth
from modelproxy.config import Config
from modelproxy.control import COLLECTION_PATH, proxy_path
from modelproxy.data import DataAPI
from modelproxy.signing import (
    acs3_headers,
    sign_acs3,
    sign_agentrun4,
    signed_header_names,
    verify_acs3,
    verify_agentrun4,
)
from modelproxy.signing.acs3 import EMPTY_SHA256, canonical_path, canonical_query

# Create, List, Get and Delete exactly as the official AgentRun SDK (0.0.54) sent them.
CAPTURES = Path(__file__).resolve().parents[1] / "fixtures" / "captured-official-sdk-requests.jsonl"
CAPTURE_AK = "AKIDEXAMPLE"
CAPTURE_SECRETS = {CAPTURE_AK: "secret-example"}

# --------------------------------------------------------------------------------------------
# AGENTRUN4-HMAC-SHA256 (spec §5.3 test vectors)

V_TIME = datetime(2026, 3, 6, 12, 0, 0, tzinfo=UTC)
V_HOST = "https://1431999136518149-ram.agentrun-data.cn-hangzhou.aliyuncs.com"
V_REGION = "cn-hangzhou"
V_SECRETS = {"ak": "secret"}

AGENTRUN4_VECTORS = [
    (
        "GET",
        f"{V_HOST}/sandboxes/sbx-xxx/health",
        {},
        "e1479ea1aec37e55f91d82b1ccc48df2feef04184a911f91a3e3fe0e27d02610",
    ),
    (
        "GET",
        f"{V_HOST}/path?foo=bar&zoo=",
        {},
        "2de34f2c0ef3d6f0f6460f994ee3fea8c940241fcc2ff2f008a776f1be9b4dba",
    ),
    (
        "POST",
        f"{V_HOST}/path?foo=bar&zoo=",
        {},
        "a0d4e04405ddf83d93cf8b30c6064c1a68a298cf95ca6ff56be04f515b98ddbe",
    ),
    (
        "POST",
        f"{V_HOST}/path?foo=bar&zoo=",
        {"content-type": "application/json"},
        "fdcde808b0dc7526d8083e681ca9a64728e5c1e67e4c92735dfb2268ecc71fb2",
    ),
]


def _sign_vector(method: str, url: str, extra: dict[str, str], **kw: Any) -> dict[str, str]:
    added = sign_agentrun4(method, url, extra, "ak", "secret", V_REGION, V_TIME, **kw)
    return {"host": httpx.URL(url).host, **extra, **added}


@pytest.mark.parametrize(("method", "url", "extra", "expected"), AGENTRUN4_VECTORS)
def test_agentrun4_vectors(method: str, url: str, extra: dict[str, str], expected: str) -> None:
    headers = _sign_vector(method, url, extra)
    auth = headers["Agentrun-Authorization"]
    assert auth.startswith("AGENTRUN4-HMAC-SHA256 Credential=ak/20260306/cn-hangzhou/agentrun/")
    assert auth.endswith(f",Signature={expected}")
    assert headers["x-acs-date"] == "2026-03-06T12:00:00Z"
    assert headers["x-acs-content-sha256"] == "UNSIGNED-PAYLOAD"
    assert verify_agentrun4(method, url, headers, V_SECRETS, V_REGION, now=V_TIME)


def test_agentrun4_signed_headers_list() -> None:
    headers = _sign_vector("POST", f"{V_HOST}/p", {"content-type": "application/json"})
    signed = "SignedHeaders=content-type;host;x-acs-content-sha256;x-acs-date,"
    assert signed in headers["Agentrun-Authorization"]


def test_agentrun4_sts_token_is_signed_and_returned() -> None:
    headers = _sign_vector("GET", f"{V_HOST}/p", {}, security_token="tok")
    assert headers["x-acs-security-token"] == "tok"
    assert "x-acs-security-token" in headers["Agentrun-Authorization"]
    assert verify_agentrun4("GET", f"{V_HOST}/p", headers, V_SECRETS, V_REGION, now=V_TIME)
    headers["x-acs-security-token"] = "tok2"
    assert not verify_agentrun4("GET", f"{V_HOST}/p", headers, V_SECRETS, V_REGION, now=V_TIME)


def _tamper_url(h: dict[str, str]) -> tuple[str, str, dict[str, str]]:
    return "POST", f"{V_HOST}/path?foo=baz&zoo=", h


AGENTRUN4_REJECTS: dict[str, Callable[[dict[str, str]], tuple[str, str, dict[str, str]]]] = {
    "method": lambda h: ("PUT", f"{V_HOST}/path?foo=bar&zoo=", h),
    "path": lambda h: ("POST", f"{V_HOST}/pbth?foo=bar&zoo=", h),
    "query": _tamper_url,
    "content-type": lambda h: (
        "POST",
        f"{V_HOST}/path?foo=bar&zoo=",
        {**h, "content-type": "application/jsoN"},
    ),
    "host": lambda h: ("POST", f"{V_HOST}/path?foo=bar&zoo=", {**h, "host": "evil.example"}),
    "no-auth": lambda h: (
        "POST",
        f"{V_HOST}/path?foo=bar&zoo=",
        {k: v for k, v in h.items() if k != "Agentrun-Authorization"},
    ),
    "garbage-auth": lambda h: (
        "POST",
        f"{V_HOST}/path?foo=bar&zoo=",
        {**h, "Agentrun-Authorization": "AGENTRUN4-HMAC-SHA256 nonsense"},
    ),
    "bad-date": lambda h: ("POST", f"{V_HOST}/path?foo=bar&zoo=", {**h, "x-acs-date": "x"}),
    "payload-hash": lambda h: (
        "POST",
        f"{V_HOST}/path?foo=bar&zoo=",
        {**h, "x-acs-content-sha256": EMPTY_SHA256},
    ),
}


@pytest.mark.parametrize("case", sorted(AGENTRUN4_REJECTS))
def test_agentrun4_verify_rejects_tampering(case: str) -> None:
    method, url, extra, _ = AGENTRUN4_VECTORS[3]
    headers = _sign_vector(method, url, extra)
    m, u, h = AGENTRUN4_REJECTS[case](headers)
    assert not verify_agentrun4(m, u, h, V_SECRETS, V_REGION, now=V_TIME)


def test_agentrun4_verify_key_region_and_skew() -> None:
    method, url, extra, _ = AGENTRUN4_VECTORS[3]
    headers = _sign_vector(method, url, extra)
    assert not verify_agentrun4(method, url, headers, {"ak": "other"}, V_REGION, now=V_TIME)
    assert not verify_agentrun4(method, url, headers, {"ak2": "secret"}, V_REGION, now=V_TIME)
    assert not verify_agentrun4(method, url, headers, V_SECRETS, "cn-beijing", now=V_TIME)
    assert verify_agentrun4(method, url, headers, V_SECRETS, None, now=V_TIME)
    late = V_TIME + timedelta(seconds=901)
    assert not verify_agentrun4(method, url, headers, V_SECRETS, V_REGION, now=late)
    assert verify_agentrun4(method, url, headers, V_SECRETS, V_REGION, max_skew_s=None, now=late)


def test_agentrun4_host_falls_back_to_url() -> None:
    headers = _sign_vector("GET", f"{V_HOST}/p", {})
    del headers["host"]
    assert verify_agentrun4("GET", f"{V_HOST}/p", headers, V_SECRETS, V_REGION, now=V_TIME)


# --------------------------------------------------------------------------------------------
# ACS3-HMAC-SHA256 (captured official SDK requests, spec Appendix B)


def _load_captures() -> list[dict[str, Any]]:
    return [json.loads(line) for line in CAPTURES.read_text().splitlines() if line.strip()]


@pytest.fixture(params=range(4), ids=["create", "list", "get", "delete"])
def capture(request: pytest.FixtureRequest) -> dict[str, Any]:
    captures = _load_captures()
    assert len(captures) == 4
    item: dict[str, Any] = captures[request.param]
    return item


def _unsigned(headers: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() != "authorization"}


def test_acs3_reproduces_captured_authorization(capture: dict[str, Any]) -> None:
    headers: dict[str, str] = capture["headers"]
    auth = sign_acs3(
        capture["method"],
        capture["path"],
        _unsigned(headers),
        capture["body"].encode(),
        CAPTURE_AK,
        CAPTURE_SECRETS[CAPTURE_AK],
    )
    assert auth == headers["Authorization"]


def test_acs3_signed_header_rule_matches_capture(capture: dict[str, Any]) -> None:
    names = signed_header_names(_unsigned(capture["headers"]), capture["body"].encode())
    claimed = capture["headers"]["Authorization"].split("SignedHeaders=")[1].split(",")[0]
    assert ";".join(names) == claimed


def test_acs3_verify_accepts_capture(capture: dict[str, Any]) -> None:
    assert verify_acs3(
        capture["method"],
        capture["path"],
        capture["headers"],
        capture["body"].encode(),
        CAPTURE_SECRETS,
    )


def _flip(text: str, index: int) -> str:
    """Change one character (keeps the length)."""
    ch = text[index]
    return text[:index] + ("b" if ch == "a" else "a") + text[index + 1 :]


def _reject_body(c: dict[str, Any]) -> tuple[str, dict[str, str], bytes]:
    body: str = c["body"]
    return c["path"], c["headers"], (_flip(body, len(body) // 2) if body else "x").encode()


def _reject_header(name: str) -> Callable[[dict[str, Any]], tuple[str, dict[str, str], bytes]]:
    def make(c: dict[str, Any]) -> tuple[str, dict[str, str], bytes]:
        headers = dict(c["headers"])
        headers[name] = _flip(headers[name], len(headers[name]) - 1)
        return c["path"], headers, c["body"].encode()

    return make


def _reject_path(c: dict[str, Any]) -> tuple[str, dict[str, str], bytes]:
    return _flip(c["path"], 20), c["headers"], c["body"].encode()


ACS3_REJECTS: dict[str, Callable[[dict[str, Any]], tuple[str, dict[str, str], bytes]]] = {
    "body": _reject_body,
    "path": _reject_path,
    "x-acs-date": _reject_header("x-acs-date"),
    "x-acs-action": _reject_header("x-acs-action"),
    "user-agent": _reject_header("user-agent"),
    "host": _reject_header("host"),
    "nonce": _reject_header("x-acs-signature-nonce"),
    "signature": _reject_header("Authorization"),
}


@pytest.mark.parametrize("case", sorted(ACS3_REJECTS))
def test_acs3_verify_rejects_one_changed_byte(capture: dict[str, Any], case: str) -> None:
    path, headers, body = ACS3_REJECTS[case](capture)
    assert not verify_acs3(capture["method"], path, headers, body, CAPTURE_SECRETS)


def test_acs3_verify_rejects_list_query_change() -> None:
    listing = _load_captures()[1]
    path = listing["path"].replace("status=READY", "status=READZ")
    assert not verify_acs3("GET", path, listing["headers"], b"", CAPTURE_SECRETS)


MALFORMED_AUTH = [
    "",
    "garbage",
    "ACS3-HMAC-SHA256",
    "ACS3-HMAC-SHA256 Credential=AKIDEXAMPLE",
    "ACS3-HMAC-SHA256 Credential=AKIDEXAMPLE,SignedHeaders=host,Signature=",
    "ACS3-HMAC-SHA256 Credential=AKIDEXAMPLE,SignedHeaders=x-acs-date;host,Signature=00",
    "ACS3-HMAC-SHA256 Credential=OTHER,SignedHeaders=host,Signature=00",
    "HMAC-SHA1 Credential=AKIDEXAMPLE,SignedHeaders=host,Signature=00",
]


@pytest.mark.parametrize("value", MALFORMED_AUTH)
def test_acs3_verify_rejects_malformed_authorization(value: str) -> None:
    get = _load_captures()[2]
    headers = {**get["headers"], "Authorization": value}
    assert not verify_acs3("GET", get["path"], headers, b"", CAPTURE_SECRETS)


def test_acs3_verify_rejects_unsigned_acs_header() -> None:
    get = _load_captures()[2]
    headers = {**get["headers"], "x-acs-security-token": "injected"}
    assert not verify_acs3("GET", get["path"], headers, b"", CAPTURE_SECRETS)


def test_acs3_verify_rejects_missing_signed_header() -> None:
    get = _load_captures()[2]
    headers = {k: v for k, v in get["headers"].items() if k != "user-agent"}
    assert not verify_acs3("GET", get["path"], headers, b"", CAPTURE_SECRETS)


def test_acs3_headers_shape() -> None:
    now = datetime(2026, 11, 30, 0, 6, 7, tzinfo=UTC)
    headers = acs3_headers("GetModelProxy", b"", "h.example", now=now, nonce="n1")
    assert headers == {
        "host": "h.example",
        "x-acs-version": "2025-09-10",
        "x-acs-action": "GetModelProxy",
        "x-acs-date": "2026-11-30T00:06:07Z",
        "x-acs-signature-nonce": "n1",
        "x-acs-content-sha256": EMPTY_SHA256,
    }
    fresh = acs3_headers(None, b"{}", "h.example")
    assert "x-acs-action" not in fresh
    assert len(fresh["x-acs-signature-nonce"]) == 32
    assert fresh["x-acs-signature-nonce"] != acs3_headers(None, b"", "h")["x-acs-signature-nonce"]


def test_acs3_headers_sts() -> None:
    headers = acs3_headers(None, b"", "h", security_token="tok", access_key_id="STS.ak")
    assert headers["x-acs-security-token"] == "tok"
    assert headers["x-acs-accesskey-id"] == "STS.ak"
    with pytest.raises(ValueError, match="access_key_id"):
        acs3_headers(None, b"", "h", security_token="tok")


def test_canonical_query_encoding() -> None:
    assert canonical_query("b=2&a=x+y&c=%2B&d=&e") == "a=x%20y&b=2&c=%2B&d=&e="
    assert canonical_query("k=%E4%B8%AD~-_.") == "k=%E4%B8%AD~-_."
    assert canonical_query("") == ""


def test_content_type_signed_only_with_body() -> None:
    headers = {"host": "h", "Content-Type": "application/json", "Content-Length": "2"}
    assert signed_header_names(headers, b"{}") == ["content-type", "host"]
    assert signed_header_names(headers, b"") == ["host"]


# --------------------------------------------------------------------------------------------
# httpx auth classes

AK, SK = "LTAIexampleKEY", "very-secret-value"
BASE = "https://agentrun.cn-hangzhou.aliyuncs.com"
DATA = "https://123-ram.agentrun-data.cn-hangzhou.aliyuncs.com/models/mp/v1"


def _acs3_handler(seen: list[httpx.Request]) -> Callable[[httpx.Request], httpx.Response]:
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        ok = verify_acs3(
            request.method,
            request.url.raw_path.decode(),
            request.headers,
            request.content,
            {AK: SK},
        )
        return httpx.Response(200 if ok else 401)

    return handle


def _ram_handler(seen: list[httpx.Request]) -> Callable[[httpx.Request], httpx.Response]:
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        ok = verify_agentrun4(
            request.method, str(request.url), request.headers, {AK: SK}, "cn-hangzhou"
        )
        return httpx.Response(200 if ok else 401)

    return handle


def test_acs3_auth_sync() -> None:
    seen: list[httpx.Request] = []
    transport = httpx.MockTransport(_acs3_handler(seen))
    with httpx.Client(base_url=BASE, transport=transport, auth=Acs3Auth(AK, SK)) as client:
        created = client.post(
            "/2025-09-10/agents/model-proxies",
            json={"modelProxyName": "mp 1"},
            extensions={"acs_action": "CreateModelProxy"},
        )
        listed = client.get(
            "/2025-09-10/agents/model-proxies",
            params={"pageNumber": 1, "status": "READY", "q": "a b+c"},
            extensions={"acs_action": "ListModelProxies"},
        )
    assert (created.status_code, listed.status_code) == (200, 200)
    assert seen[0].headers["x-acs-action"] == "CreateModelProxy"
    assert seen[0].headers["authorization"].startswith("ACS3-HMAC-SHA256 Credential=" + AK)
    assert "content-type;host;" in seen[0].headers["authorization"]
    assert seen[1].headers["x-acs-content-sha256"] == EMPTY_SHA256


async def test_acs3_auth_async_sts() -> None:
    seen: list[httpx.Request] = []
    transport = httpx.MockTransport(_acs3_handler(seen))
    auth = Acs3Auth(AK, SK, security_token="sts-token")
    async with httpx.AsyncClient(base_url=BASE, transport=transport, auth=auth) as client:
        response = await client.delete(
            "/2025-09-10/agents/model-proxies/mp-demo",
            extensions={"acs_action": "DeleteModelProxy"},
        )
    assert response.status_code == 200
    assert seen[0].headers["x-acs-security-token"] == "sts-token"
    assert seen[0].headers["x-acs-accesskey-id"] == AK
    assert "x-acs-security-token" in seen[0].headers["authorization"]


def test_acs3_auth_wrong_secret_is_refused() -> None:
    transport = httpx.MockTransport(_acs3_handler([]))
    with httpx.Client(base_url=BASE, transport=transport, auth=Acs3Auth(AK, "nope")) as client:
        assert client.get("/x").status_code == 401


def test_agentrun_ram_auth_sync() -> None:
    seen: list[httpx.Request] = []
    transport = httpx.MockTransport(_ram_handler(seen))
    auth = AgentrunRamAuth(AK, SK, "cn-hangzhou")
    with httpx.Client(transport=transport, auth=auth) as client:
        response = client.post(f"{DATA}/chat/completions?x=1", json={"model": "m"})
    assert response.status_code == 200
    authz = seen[0].headers["agentrun-authorization"]
    assert "SignedHeaders=content-type;host;x-acs-content-sha256;x-acs-date," in authz
    assert seen[0].headers["x-acs-content-sha256"] == "UNSIGNED-PAYLOAD"


async def test_agentrun_ram_auth_async_sts() -> None:
    seen: list[httpx.Request] = []
    transport = httpx.MockTransport(_ram_handler(seen))
    auth = AgentrunRamAuth(AK, SK, "cn-hangzhou", security_token="sts-token")
    async with httpx.AsyncClient(transport=transport, auth=auth) as client:
        response = await client.post(f"{DATA}/embeddings", json={"input": "hi"})
    assert response.status_code == 200
    assert seen[0].headers["x-acs-security-token"] == "sts-token"


def test_agentrun_ram_auth_wrong_region_is_refused() -> None:
    transport = httpx.MockTransport(_ram_handler([]))
    with httpx.Client(transport=transport, auth=AgentrunRamAuth(AK, SK, "cn-beijing")) as client:
        assert client.get(f"{DATA}/models").status_code == 401


API_KEY_CASES = [("Authorization", "Bearer k-123"), ("X-Api-Key", "k-123")]


def _recording(seen: list[httpx.Request]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    return httpx.MockTransport(handle)


@pytest.mark.parametrize(("header", "expected"), API_KEY_CASES)
def test_api_key_auth_sync(header: str, expected: str) -> None:
    seen: list[httpx.Request] = []
    auth = ApiKeyAuth("k-123", header=header)
    with httpx.Client(transport=_recording(seen), auth=auth) as client:
        client.get(f"{DATA}/models")
    assert seen[0].headers[header] == expected


@pytest.mark.parametrize(("header", "expected"), API_KEY_CASES)
async def test_api_key_auth_async(header: str, expected: str) -> None:
    seen: list[httpx.Request] = []
    auth = ApiKeyAuth("k-123", header=header)
    async with httpx.AsyncClient(transport=_recording(seen), auth=auth) as client:
        await client.get(f"{DATA}/models")
    assert seen[0].headers[header] == expected


def test_auth_reprs_redact_secrets() -> None:
    reprs = [
        repr(Acs3Auth(AK, SK, security_token="sts-token")),
        repr(AgentrunRamAuth(AK, SK, "cn-hangzhou", security_token="sts-token")),
        repr(ApiKeyAuth("k-123")),
    ]
    for text in reprs:
        assert SK not in text
        assert "sts-token" not in text
        assert "k-123" not in text
        assert AK not in text
        assert "redacted" in text


# --------------------------------------------------------------------------------------------
# Paths: signer and verifier build the canonical path with one function, so a name signs the
# same however the path escaped it on the way (clients, proxies and ASGI servers differ).

RESERVED = "!*'();:@&=+$,/?#[]% "
SUB_DELIMS = "!$&'()*+,;=:@"  # RFC 3986 allows these unescaped in a path segment
path_names = st.text(st.sampled_from(RESERVED) | st.characters(codec="utf-8"),
                     min_size=1, max_size=24)


def _lower_hex(text: str) -> str:
    return re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), text)


# How a server may receive the segment our client escaped with quote(name, safe="").
RECEIVED: dict[str, Callable[[str], str]] = {
    "as sent": lambda name: quote(name, safe=""),
    "sub-delims unescaped": lambda name: quote(name, safe=SUB_DELIMS),
    "lower-case hex": lambda name: _lower_hex(quote(name, safe="")),
}
PATHS = settings(max_examples=200, deadline=None)
DATA_ENDPOINT = "https://123-ram.agentrun-data.cn-hangzhou.aliyuncs.com"


def _acs3_signed_get(path: str) -> dict[str, str]:
    headers = acs3_headers("GetModelProxy", b"", "agentrun.cn-hangzhou.aliyuncs.com")
    headers["Authorization"] = sign_acs3("GET", path, headers, b"", AK, SK)
    return headers


@PATHS
@given(name=path_names, received=st.sampled_from(sorted(RECEIVED)))
def test_acs3_signature_survives_any_escaping_of_the_name(name: str, received: str) -> None:
    headers = _acs3_signed_get(proxy_path(name))  # the path our control client sends
    arrived = f"{COLLECTION_PATH}/{RECEIVED[received](name)}"
    assert verify_acs3("GET", arrived, headers, b"", {AK: SK})
    assert not verify_acs3("GET", f"{arrived}x", headers, b"", {AK: SK})


@PATHS
@given(name=path_names, received=st.sampled_from(sorted(RECEIVED)))
def test_agentrun4_signature_survives_any_escaping_of_the_name(name: str, received: str) -> None:
    sent = DataAPI(name, Config(data_endpoint=DATA_ENDPOINT)).base_url() + "/chat/completions"
    headers = {"host": httpx.URL(sent).netloc.decode(), "content-type": "application/json"}
    headers |= sign_agentrun4("POST", sent, headers, AK, SK, V_REGION, V_TIME)
    arrived = f"{DATA_ENDPOINT}/models/{RECEIVED[received](name)}/v1/chat/completions"
    assert verify_agentrun4("POST", arrived, headers, {AK: SK}, V_REGION, now=V_TIME)
    other = arrived.replace("/v1/", "/v2/")
    assert not verify_agentrun4("POST", other, headers, {AK: SK}, V_REGION, now=V_TIME)


def test_an_escaped_slash_is_not_a_separator() -> None:
    headers = _acs3_signed_get(proxy_path("a/b"))
    assert proxy_path("a/b").endswith("/a%2Fb")
    assert not verify_acs3("GET", f"{COLLECTION_PATH}/a/b", headers, b"", {AK: SK})
    assert canonical_path("/x/a%2fb/") == "/x/a%2Fb/"
    assert canonical_path("") == "/"
