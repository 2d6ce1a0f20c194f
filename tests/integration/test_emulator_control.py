"""The emulator's control plane and administration over a real socket, with plain httpx."""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from polling import wait_until

from emulator.admin_routes import SettingsPatch
from emulator.app import create_app
from emulator.auth import require_data_auth
from emulator.server import EmulatorServer, OpenBindError, run_forever
from emulator.settings import EmulatorSettings
from emulator.state import FAIL_CREATE_MARKER, FAIL_DELETE_MARKER, FAIL_UPDATE_MARKER
from modelproxy.signing.acs3 import acs3_headers, sign_acs3
from modelproxy.signing.agentrun4 import sign_agentrun4

BASE = "/2025-09-10/agents/model-proxies"
DELAY_S = 0.2
# Create, List, Get and Delete exactly as the official AgentRun SDK (0.0.54) sent them, signed
# with the example access key below.
CAPTURED = Path(__file__).resolve().parents[1] / "fixtures" / "captured-official-sdk-requests.jsonl"
CREDENTIALS = {"AKIDEXAMPLE": "secret-example"}
FAST = EmulatorSettings(create_delay_s=DELAY_S, update_delay_s=DELAY_S, delete_delay_s=DELAY_S)


@pytest.fixture
def server() -> Iterator[EmulatorServer]:
    with EmulatorServer(FAST) as srv:
        yield srv


@pytest.fixture
def client(server: EmulatorServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as c:
        yield c


def proxy_body(name: str, **extra: Any) -> dict[str, Any]:
    return {
        "modelProxyName": name,
        "cpu": 2,
        "memory": 4096,
        "proxyConfig": {"endpoints": [{"modelNames": ["qwen-max"], "modelServiceName": "svc"}]},
        **extra,
    }


def create(client: httpx.Client, name: str, **extra: Any) -> dict[str, Any]:
    response = client.post(BASE, json=proxy_body(name, **extra))
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


def wait_status(
    client: httpx.Client, name: str, want: str, timeout_s: float = 5.0
) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        response = client.get(f"{BASE}/{name}")
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()["data"]
        return data if data["status"] == want else None

    return wait_until(reached, timeout_s, what=f"{name} to be {want}")


def wait_gone(client: httpx.Client, name: str, timeout_s: float = 5.0) -> httpx.Response:
    def gone() -> httpx.Response | None:
        response = client.get(f"{BASE}/{name}")
        return response if response.status_code == 404 else None

    return wait_until(gone, timeout_s, what=f"{name} to be gone (404)")


def assert_error(response: httpx.Response, status: int, *needles: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"code", "message", "requestId"}
    assert body["requestId"] == response.headers["x-acs-request-id"]
    for needle in needles:
        assert needle in body["message"]
    return body


# ---------------------------------------------------------------- envelope and lifecycle


def test_create_answers_envelope_with_camel_case_fields(client: httpx.Client) -> None:
    response = client.post(BASE, json=proxy_body("mp-env", description="d", modelType="llm"))

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"code", "requestId", "data"}
    assert body["code"] == "SUCCESS"
    assert body["requestId"] == response.headers["x-acs-request-id"]
    uuid.UUID(body["requestId"])
    data = body["data"]
    assert data["modelProxyName"] == "mp-env"
    assert data["modelProxyId"]
    assert data["status"] == "CREATING"
    assert data["proxyMode"] == "single"  # derived from one endpoint
    assert (data["cpu"], data["memory"], data["modelType"]) == (2, 4096, "llm")
    assert data["proxyConfig"]["endpoints"][0]["modelNames"] == ["qwen-max"]
    datetime.strptime(data["createdAt"], "%Y-%m-%dT%H:%M:%S.%f%z")
    assert all("_" not in key for key in data)
    assert None not in data.values()


def test_unknown_create_fields_are_dropped(client: httpx.Client) -> None:
    data = create(client, "mp-extra", status="READY", bogusField=1)
    assert data["status"] == "CREATING"
    assert "bogusField" not in data


def test_create_goes_creating_then_ready(client: httpx.Client) -> None:
    assert create(client, "mp-life")["status"] == "CREATING"
    assert client.get(f"{BASE}/mp-life").json()["data"]["status"] == "CREATING"
    assert wait_status(client, "mp-life", "READY")["statusReason"] == ""


def test_update_goes_updating_then_ready_and_is_partial(client: httpx.Client) -> None:
    created = create(client, "mp-upd", description="before", workspaceId="ws-1")
    wait_status(client, "mp-upd", "READY")

    response = client.put(f"{BASE}/mp-upd", json={"description": "after", "cpu": 8})

    assert response.status_code == 200, response.text
    assert response.json()["data"]["status"] == "UPDATING"
    ready = wait_status(client, "mp-upd", "READY")
    assert ready["description"] == "after"
    assert ready["cpu"] == 2  # not updatable on the wire: ignored
    assert ready["proxyConfig"] == created["proxyConfig"]  # untouched by a partial update
    assert ready["workspaceId"] == "ws-1"
    assert ready["lastUpdatedAt"] > ready["createdAt"]


def test_update_replaces_proxy_config_whole(client: httpx.Client) -> None:
    create(client, "mp-cfg")
    wait_status(client, "mp-cfg", "READY")
    new_config = {"policies": {"numRetries": 3}}

    client.put(f"{BASE}/mp-cfg", json={"proxyConfig": new_config})

    assert wait_status(client, "mp-cfg", "READY")["proxyConfig"] == new_config


def test_delete_goes_deleting_then_gone(client: httpx.Client) -> None:
    create(client, "mp-del")
    wait_status(client, "mp-del", "READY")

    response = client.delete(f"{BASE}/mp-del")

    assert response.status_code == 200
    assert response.json()["data"]["status"] == "DELETING"
    assert_error(wait_gone(client, "mp-del"), 404, "model proxy mp-del does not exist")
    assert_error(client.delete(f"{BASE}/mp-del"), 404, "does not exist")


def test_create_failure_marker_ends_create_failed_with_reason(client: httpx.Client) -> None:
    create(client, "mp-cf", description=f"x {FAIL_CREATE_MARKER}")
    data = wait_status(client, "mp-cf", "CREATE_FAILED")
    assert data["statusReason"]


def test_update_and_delete_failure_markers(client: httpx.Client) -> None:
    create(client, "mp-uf")
    wait_status(client, "mp-uf", "READY")
    client.put(f"{BASE}/mp-uf", json={"description": FAIL_UPDATE_MARKER})
    assert wait_status(client, "mp-uf", "UPDATE_FAILED")["statusReason"]

    client.put(f"{BASE}/mp-uf", json={"description": FAIL_DELETE_MARKER})
    wait_status(client, "mp-uf", "READY")
    client.delete(f"{BASE}/mp-uf")
    assert wait_status(client, "mp-uf", "DELETE_FAILED")["statusReason"]


# ---------------------------------------------------------------- list


@pytest.fixture
def hundred_twenty(client: httpx.Client) -> list[str]:
    names = []
    for i in range(120):
        endpoints = [{"modelNames": ["a"]}, {"modelNames": ["b"]}] if i % 3 == 0 else [{}]
        body = proxy_body(f"mp-{i:03d}", workspaceId=f"ws-{i % 4}")
        body["proxyConfig"] = {"endpoints": endpoints}
        assert client.post(BASE, json=body).status_code == 200
        names.append(f"mp-{i:03d}")
    return names


def page(client: httpx.Client, **params: Any) -> dict[str, Any]:
    response = client.get(BASE, params=params)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


def test_list_pages_over_120_proxies(client: httpx.Client, hundred_twenty: list[str]) -> None:
    pages = [page(client, pageNumber=n, pageSize=50) for n in (1, 2, 3, 4)]

    assert [len(p["items"]) for p in pages] == [50, 50, 20, 0]
    assert {p["total"] for p in pages} == {120}
    assert [(p["pageNumber"], p["pageSize"]) for p in pages[:2]] == [(1, 50), (2, 50)]
    names = [item["modelProxyName"] for p in pages for item in p["items"]]
    assert names == hundred_twenty  # creation order, no duplicates
    default = page(client)
    assert (len(default["items"]), default["pageSize"], default["total"]) == (20, 20, 120)


def test_list_filters(client: httpx.Client, hundred_twenty: list[str]) -> None:
    assert page(client, proxyMode="multi", pageSize=100)["total"] == 40
    assert page(client, proxyMode="single")["total"] == 80
    assert page(client, workspaceId="ws-1")["total"] == 30
    assert page(client, workspaceIds="ws-1,ws-2")["total"] == 60
    assert page(client, workspaceIds="ws-1,ws-2", workspaceId="ws-2")["total"] == 30
    wait_until(lambda: page(client, status="READY")["total"] == 120, 5,
               what="all 120 proxies to be READY")
    assert page(client, status="READY", proxyMode="multi", workspaceId="ws-0")["total"] == 10
    create(client, "mp-new")
    assert [i["modelProxyName"] for i in page(client, status="CREATING")["items"]] == ["mp-new"]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"pageSize": 101}, "pageSize"),
        ({"pageSize": 0}, "pageSize"),
        ({"pageNumber": "abc"}, "pageNumber"),
        ({"proxyMode": "triple"}, "proxyMode"),
        ({"status": "DELETED"}, "status"),
    ],
)
def test_list_rejects_bad_parameters(
    client: httpx.Client, params: dict[str, Any], field: str
) -> None:
    assert_error(client.get(BASE, params=params), 400, field)


# ---------------------------------------------------------------- errors


def test_get_unknown_is_404(client: httpx.Client) -> None:
    body = assert_error(client.get(f"{BASE}/nope"), 404, "model proxy nope does not exist")
    assert body["code"]
    assert_error(client.put(f"{BASE}/nope", json={}), 404, "does not exist")


def test_duplicate_create_is_500_already_exists(client: httpx.Client) -> None:
    first = create(client, "mp-dup", description="first")

    response = client.post(BASE, json=proxy_body("mp-dup", description="second"))

    assert_error(response, 500, "already exists")
    kept = client.get(f"{BASE}/mp-dup").json()["data"]
    assert (kept["modelProxyId"], kept["description"]) == (first["modelProxyId"], "first")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"cpu": 2, "memory": 4096}, "modelProxyName"),
        (proxy_body("mp-bad", proxyMode="triple"), "proxyMode"),
        (proxy_body("mp-bad", cpu="2"), "cpu"),
        (proxy_body("mp-bad", memory=True), "memory"),
        (proxy_body("mp-bad", modelType="robot"), "modelType"),
        (proxy_body("mp-bad", proxyConfig={"endpoints": "x"}), "proxyConfig.endpoints"),
        (proxy_body(""), "modelProxyName"),
        (proxy_body("a/b"), "modelProxyName"),
        ([1, 2], "body"),
    ],
)
def test_create_validation_is_400_naming_the_field(
    client: httpx.Client, body: Any, field: str
) -> None:
    body_out = assert_error(client.post(BASE, json=body), 400, field)
    assert body_out["code"] == "InvalidParameter"
    assert page(client)["total"] == 0


def test_malformed_json_is_400(client: httpx.Client) -> None:
    json_type = {"content-type": "application/json"}
    assert_error(client.post(BASE, content=b"{nope", headers=json_type), 400, "JSON")
    infinite = b'{"modelProxyName": "mp-inf", "cpu": Infinity}'  # Python's json reads it
    assert_error(client.post(BASE, content=infinite, headers=json_type), 400, "cpu")


def test_transitional_states_refuse_update_and_delete_with_409(client: httpx.Client) -> None:
    create(client, "mp-busy", description="orig")
    assert_error(client.put(f"{BASE}/mp-busy", json={"description": "x"}), 409, "CREATING")
    assert_error(client.delete(f"{BASE}/mp-busy"), 409, "CREATING")
    wait_status(client, "mp-busy", "READY")

    client.put(f"{BASE}/mp-busy", json={"description": "second"})
    assert_error(client.put(f"{BASE}/mp-busy", json={"description": "y"}), 409, "UPDATING")
    assert_error(client.delete(f"{BASE}/mp-busy"), 409, "UPDATING")
    assert wait_status(client, "mp-busy", "READY")["description"] == "second"

    client.delete(f"{BASE}/mp-busy")
    assert_error(client.delete(f"{BASE}/mp-busy"), 409, "DELETING")
    assert_error(client.put(f"{BASE}/mp-busy", json={}), 409, "DELETING")


def test_bad_requests_leave_state_intact(client: httpx.Client) -> None:
    create(client, "mp-keep", description="orig")
    before = wait_status(client, "mp-keep", "READY")

    assert_error(client.put(f"{BASE}/mp-keep", json={"proxyConfig": "x"}), 400, "proxyConfig")
    assert_error(client.put(f"{BASE}/mp-keep", json={"description": 5}), 400, "description")
    assert_error(
        client.put(f"{BASE}/mp-keep", content=b"[", headers={"content-type": "application/json"}),
        400,
    )
    assert_error(client.post(BASE, json=proxy_body("mp-keep")), 500, "already exists")
    assert_error(client.post(BASE, json={"modelProxyName": "mp-keep", "cpu": "x"}), 400, "cpu")

    assert client.get(f"{BASE}/mp-keep").json()["data"] == before
    assert page(client)["total"] == 1


async def test_fifty_concurrent_creates_all_land(server: EmulatorServer) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        responses = await asyncio.gather(
            *(client.post(BASE, json=proxy_body(f"mp-c{i}")) for i in range(50))
        )
        listed = (await client.get(BASE, params={"pageSize": 100})).json()["data"]

    assert [r.status_code for r in responses] == [200] * 50
    assert listed["total"] == 50
    assert {i["modelProxyName"] for i in listed["items"]} == {f"mp-c{i}" for i in range(50)}
    assert len({i["modelProxyId"] for i in listed["items"]}) == 50


async def test_concurrent_duplicate_creates_admit_exactly_one(server: EmulatorServer) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        responses = await asyncio.gather(
            *(client.post(BASE, json=proxy_body("mp-race")) for _ in range(20))
        )

    assert sorted(r.status_code for r in responses) == [200] + [500] * 19


def test_every_response_carries_a_request_id(client: httpx.Client) -> None:
    for response in (
        client.get("/no/such/route"),
        client.patch(f"{BASE}/x"),
        client.get(BASE),
        client.get("/_emulator/health"),
    ):
        assert response.headers.get("x-acs-request-id")
    assert_error(client.get("/no/such/route"), 404)
    assert_error(client.patch(f"{BASE}/x"), 405)


# ---------------------------------------------------------------- transport and auth


def test_https_mode_with_the_ca_file() -> None:
    with EmulatorServer(FAST, tls=True) as srv:
        assert srv.url.startswith("https://127.0.0.1:")
        assert srv.ca_path is not None
        verify = ssl.create_default_context(cafile=srv.ca_path)
        with httpx.Client(base_url=srv.url, verify=verify, timeout=10) as client:
            create(client, "mp-tls")
            assert client.get(f"{BASE}/mp-tls").json()["data"]["modelProxyName"] == "mp-tls"
        with (
            httpx.Client(base_url=srv.url, timeout=10) as untrusting,
            pytest.raises(httpx.ConnectError),
        ):
            untrusting.get(BASE)
        ca_path = Path(srv.ca_path)
    assert not ca_path.exists()  # removed on stop


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.5"])
def test_non_loopback_host_needs_allow_open_even_with_credentials(host: str) -> None:
    for auth in ({}, {"credentials": CREDENTIALS}, {"api_keys": ["key-1"]}):
        with pytest.raises(OpenBindError, match="--allow-open"):
            EmulatorServer(host=host, **auth)
        EmulatorServer(host=host, allow_open=True, **auth)
    EmulatorServer(host="localhost")
    EmulatorServer(host="127.0.0.2")


def test_run_forever_serves_until_stopped() -> None:
    stop = threading.Event()
    ready: list[str] = []

    def on_ready(srv: EmulatorServer) -> None:
        ready.append(srv.url)

    thread = threading.Thread(
        target=run_forever, kwargs={"settings": FAST, "on_ready": on_ready, "stop": stop}
    )
    thread.start()
    try:
        wait_until(lambda: ready, 10, 0.01, what="run_forever to call on_ready")
        assert httpx.get(f"{ready[0]}/_emulator/health").json()["status"] == "ok"
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{ready[0]}/_emulator/health")


def captured_requests() -> list[dict[str, Any]]:
    return [json.loads(line) for line in CAPTURED.read_text().splitlines() if line.strip()]


def replay(client: httpx.Client, captured: dict[str, Any], **changes: Any) -> httpx.Response:
    """Send a captured request as it was (its own Host and signature), after `changes`."""
    req = {**captured, **changes}
    headers = {k: v for k, v in req["headers"].items() if k.lower() != "content-length"}
    return client.request(req["method"], req["path"], headers=headers, content=req["body"].encode())


def signed(client: httpx.Client, method: str, path: str, body: Any = None) -> httpx.Response:
    """A freshly ACS3-signed request, as our client would send it."""
    return client.send(signed_request(client, method, path, body))


def signed_request(
    client: httpx.Client,
    method: str,
    path: str,
    body: Any = None,
    secret: str = CREDENTIALS["AKIDEXAMPLE"],
) -> httpx.Request:
    content = json.dumps(body).encode() if body is not None else b""
    host = httpx.URL(str(client.base_url)).netloc.decode()
    headers = {**acs3_headers(action="Test", body=content, host=host), "accept": "application/json"}
    if content:
        headers["content-type"] = "application/json"
    headers["Authorization"] = sign_acs3(method, path, headers, content, "AKIDEXAMPLE", secret)
    return client.build_request(method, path, headers=headers, content=content)


@pytest.fixture
def signed_server() -> Iterator[EmulatorServer]:
    with EmulatorServer(FAST, credentials=CREDENTIALS) as srv:
        yield srv


def test_captured_official_sdk_requests_are_accepted(signed_server: EmulatorServer) -> None:
    create_req, list_req, get_req, delete_req = captured_requests()
    target = get_req["path"].rsplit("/", 1)[1]
    assert delete_req["path"].endswith(f"/{target}")
    with httpx.Client(base_url=signed_server.url, timeout=10) as client:
        created = replay(client, create_req)
        assert created.status_code == 200, created.text
        # Get and Delete name a proxy the captured Create did not make: create it, signed anew.
        assert signed(client, "POST", BASE, proxy_body(target)).status_code == 200
        names = [created.json()["data"]["modelProxyName"], target]
        wait_until(lambda: all(signed(client, "GET", f"{BASE}/{name}").json()["data"]["status"]
                               == "READY" for name in names), 5,
                   what=f"{names} to be READY, so Delete is not refused as busy")

        listed = replay(client, list_req)
        got = replay(client, get_req)
        deleted = replay(client, delete_req)

    assert listed.status_code == 200, listed.text
    assert listed.json()["data"]["total"] == 2  # status=READY
    assert got.status_code == 200, got.text
    assert got.json()["data"]["modelProxyName"] == target
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["data"]["status"] == "DELETING"


def _flip(text: str, index: int) -> str:
    return text[:index] + ("1" if text[index] != "1" else "2") + text[index + 1 :]


def test_captured_requests_with_one_byte_changed_are_refused(signed_server: EmulatorServer) -> None:
    requests = captured_requests()
    with httpx.Client(base_url=signed_server.url, timeout=10) as client:
        for captured in requests:
            nonce = captured["headers"]["x-acs-signature-nonce"]
            tampered_headers = {**captured["headers"], "x-acs-signature-nonce": _flip(nonce, 0)}
            assert_error(replay(client, captured, headers=tampered_headers), 403)
        for captured in requests[1:]:  # Create's path has no byte to change and still route
            path = captured["path"]
            assert_error(replay(client, captured, path=_flip(path, len(path) - 1)), 403)
        body = requests[0]["body"]
        assert_error(replay(client, requests[0], body=_flip(body, body.index("official"))), 403)
        assert page_total_signed(client) == 0  # nothing got through


def page_total_signed(client: httpx.Client) -> int:
    response = signed(client, "GET", BASE)
    assert response.status_code == 200, response.text
    total: int = response.json()["data"]["total"]
    return total


def test_signature_mode_requires_authorization(signed_server: EmulatorServer) -> None:
    with httpx.Client(base_url=signed_server.url, timeout=10) as client:
        assert_error(client.get(BASE), 401, "Authorization")
        assert_error(client.post(BASE, json=proxy_body("x")), 401)
        assert signed(client, "POST", BASE, proxy_body("mp-signed")).status_code == 200
        assert signed(client, "GET", f"{BASE}/mp-signed").status_code == 200
        assert signed(client, "GET", f"{BASE}?pageSize=5&status=CREATING").status_code == 200


def test_data_auth_dependency_accepts_signature_or_api_key() -> None:
    app = create_app(FAST, CREDENTIALS, api_keys=["key-1"])
    assert isinstance(app, FastAPI)

    @app.post("/models/{name}/v1/probe", dependencies=[Depends(require_data_auth)])
    async def probe(name: str) -> dict[str, str]:
        return {"name": name}

    with (
        EmulatorServer(app=app) as srv,
        httpx.Client(base_url=srv.url, timeout=10) as client,
    ):
        url = f"{srv.url}/models/p/v1/probe?x=1"
        good = sign_agentrun4(
            "POST", url, {}, "AKIDEXAMPLE", "secret-example", "cn-hangzhou", datetime.now(UTC)
        )
        assert client.post(url, headers=good).status_code == 200
        assert_error(client.post(f"{srv.url}/models/p/v1/probe?x=2", headers=good), 403)
        old = sign_agentrun4(
            "POST",
            url,
            {},
            "AKIDEXAMPLE",
            "secret-example",
            "cn-hangzhou",
            datetime(2020, 1, 1, tzinfo=UTC),
        )
        assert_error(client.post(url, headers=old), 403)  # outside the allowed clock skew
        bearer = {"Authorization": "Bearer key-1"}
        assert client.post(url, headers=bearer).status_code == 200
        assert_error(client.post(url, headers={"Authorization": "Bearer nope"}), 401, "mismatch")
        assert_error(client.post(url), 401)


# ---------------------------------------------------------------- administration auth

OPEN_ADMIN_PATHS = frozenset({"/_emulator/health"})


def admin_requests(app: FastAPI) -> list[tuple[str, str]]:
    """Every `/_emulator` operation but the open ones, as (method, path) for a proxy `mp-a`
    (from the OpenAPI document: it lists every route, included routers too)."""
    return [(method.upper(), path.replace("{name}", "mp-a"))
            for path, operations in app.openapi()["paths"].items()
            if path.startswith("/_emulator") and path not in OPEN_ADMIN_PATHS
            for method in operations]


def admin_body(path: str) -> dict[str, Any]:
    return {"reply_tokens": 3} if path.endswith("/reply") else {}


def test_every_admin_route_is_guarded() -> None:
    """A new `/_emulator` route is guarded unless listed open here on purpose."""
    requests = admin_requests(create_app(FAST, CREDENTIALS))
    assert len(requests) >= 10
    app = create_app(FAST, CREDENTIALS)
    with EmulatorServer(app=app) as srv, httpx.Client(base_url=srv.url, timeout=10) as client:
        for method, path in requests:
            answer = client.request(method, path, json=admin_body(path))
            assert_error(answer, 401, "Authorization")
        assert client.get("/_emulator/health").json()["status"] == "ok"


def test_signature_mode_guards_administration(signed_server: EmulatorServer) -> None:
    faults = {"error_500_rate": 1.0}
    path = "/_emulator/proxies/mp-a/faults"
    with httpx.Client(base_url=signed_server.url, timeout=10) as client:
        assert signed(client, "POST", BASE, proxy_body("mp-a")).status_code == 200
        assert_error(client.put(path, json=faults), 401)
        assert_error(client.put(path, json=faults, headers={"Authorization": "Bearer x"}), 401)
        assert_error(client.get("/_emulator/stats"), 401)
        assert_error(client.put("/_emulator/settings", json={"ttft_s": 5}), 401)
        # An ACS3 signature, as on the control plane (a wrong one is 403)...
        assert signed(client, "PUT", path, faults).json()["error_500_rate"] == 1.0
        tampered = signed_request(client, "PUT", path, faults, secret="wrong")
        assert_error(client.send(tampered), 403)
        # ...or an AGENTRUN4 signature, as on the data plane.
        url = f"{signed_server.url}/_emulator/settings"
        headers = sign_agentrun4("GET", url, {}, "AKIDEXAMPLE", CREDENTIALS["AKIDEXAMPLE"],
                                 "cn-hangzhou", datetime.now(UTC))
        assert client.get(url, headers=headers).json()["ttft_s"] == 0  # the PUT above failed
        assert client.get("/_emulator/health").status_code == 200


def test_api_keys_guard_administration() -> None:
    with (
        EmulatorServer(FAST, api_keys=["key-1", "key-2"]) as srv,
        httpx.Client(base_url=srv.url, timeout=10) as client,
    ):
        create(client, "mp-a")  # the control plane stays open without credentials
        path = "/_emulator/proxies/mp-a/faults"
        assert_error(client.put(path, json={"error_500_rate": 1.0}), 401)
        assert_error(client.get(path, headers={"Authorization": "Bearer key-3"}), 401, "mismatch")
        good = client.put(path, json={"error_500_rate": 1.0},
                          headers={"Authorization": "Bearer key-2"})
        assert good.status_code == 200, good.text
        assert client.get("/_emulator/health").json() == {"status": "ok", "proxies": 1}


# ---------------------------------------------------------------- administration and OpenAPI


def test_admin_settings_get_and_partial_put(client: httpx.Client) -> None:
    assert client.get("/_emulator/settings").json()["create_delay_s"] == DELAY_S

    response = client.put("/_emulator/settings", json={"create_delay_s": 0, "seed": 7})

    assert response.status_code == 200
    settings = response.json()
    assert (settings["create_delay_s"], settings["seed"]) == (0, 7)
    assert settings["update_delay_s"] == DELAY_S  # untouched
    assert client.get("/_emulator/settings").json() == settings
    assert create(client, "mp-now")["status"] == "READY"  # the new delay applies


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"ttft_s": -1}, "ttft_s"),
        ({"bogus": 1}, "bogus"),
        ({"faults": {"error_429_rate": 2}}, "faults.error_429_rate"),
    ],
)
def test_admin_settings_reject_bad_values(
    client: httpx.Client, patch: dict[str, Any], field: str
) -> None:
    before = client.get("/_emulator/settings").json()
    assert_error(client.put("/_emulator/settings", json=patch), 400, field)
    assert client.get("/_emulator/settings").json() == before


def test_settings_patch_covers_every_setting() -> None:
    assert set(SettingsPatch.model_fields) == set(EmulatorSettings.model_fields)


def test_admin_per_proxy_faults(client: httpx.Client) -> None:
    create(client, "mp-f")
    faults = {"error_429_rate": 0.5, "retry_after_s": 2}

    put = client.put("/_emulator/proxies/mp-f/faults", json=faults)

    assert put.status_code == 200
    assert put.json()["error_429_rate"] == 0.5
    assert client.get("/_emulator/proxies/mp-f/faults").json()["retry_after_s"] == 2
    cleared = client.delete("/_emulator/proxies/mp-f/faults")
    assert cleared.json()["error_429_rate"] == 0  # the emulator-wide faults again
    assert_error(client.put("/_emulator/proxies/none/faults", json=faults), 404)
    assert_error(client.put("/_emulator/proxies/mp-f/faults", json={"slow_rate": 3}), 400)


def test_admin_health_and_stats(client: httpx.Client) -> None:
    client.delete("/_emulator/stats")
    create(client, "mp-s")
    client.get(f"{BASE}/missing")

    health = client.get("/_emulator/health").json()
    stats = client.get("/_emulator/stats").json()

    assert health == {"status": "ok", "proxies": 1}
    assert stats["by_route"][f"POST {BASE}"] == {"200": 1}
    assert stats["by_route"][f"GET {BASE}/{{modelProxyName}}"] == {"404": 1}
    assert (stats["total_requests"], stats["rate_limited"]) == (2, 0)


def test_openapi_lists_every_route_with_models(client: httpx.Client) -> None:
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]

    assert set(paths[BASE]) == {"get", "post"}
    assert set(paths[f"{BASE}/{{modelProxyName}}"]) == {"get", "put", "delete"}
    for path in (
        "/_emulator/settings",
        "/_emulator/proxies/{name}/faults",
        "/_emulator/health",
        "/_emulator/stats",
    ):
        assert path in paths
    create_op = paths[BASE]["post"]
    assert create_op["operationId"] == "CreateModelProxy"
    assert "$ref" in create_op["requestBody"]["content"]["application/json"]["schema"]
    for operations in paths.values():
        for operation in operations.values():
            assert "422" not in operation["responses"]
            assert "200" in operation["responses"]
    assert set(paths[BASE]["get"]["responses"]) >= {"200", "400", "401", "403"}
    assert "ErrorBody" in spec["components"]["schemas"]
