"""Wire round trips of the data model (spec §3)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from modelproxy import (
    ModelProxyCreateInput,
    ModelProxyUpdateInput,
    ProxyConfig,
    ProxyConfigEndpoint,
    ProxyConfigPolicies,
    ProxyConfigTokenRateLimiter,
    ProxyMode,
    Status,
)
from modelproxy.models import ModelProxyProps, derive_proxy_mode, model_name_for

SERVER_PROXY = {
    "modelProxyId": "mp-1",
    "modelProxyName": "demo",
    "status": "READY",
    "statusReason": "",
    "proxyMode": "single",
    "modelType": "llm",
    "cpu": 2,
    "memory": 4096,
    "createdAt": "2026-01-01T08:00:00.123+08:00",
    "proxyConfig": {
        "endpoints": [{"modelNames": ["qwen-max"], "modelServiceName": "svc", "weight": 1}],
        "policies": {"concurrencyLimit": 4, "tokenRateLimiter": {"tpm": 1000}, "fallbacks": []},
    },
    "logConfiguration": {"project": "p", "logstore": "s"},
    "brandNewField": {"x": [1, 2]},
}


def test_server_object_round_trips_with_unknown_fields():
    props = ModelProxyProps.from_wire(SERVER_PROXY)
    assert props.model_proxy_name == "demo"
    assert props.proxy_config is not None
    assert props.proxy_config.policies is not None
    assert props.proxy_config.policies.token_rate_limiter == ProxyConfigTokenRateLimiter(tpm=1000)
    assert props.to_wire() == SERVER_PROXY


def test_unknown_status_is_kept_and_not_final():
    props = ModelProxyProps.from_wire({"modelProxyName": "x", "status": "MIGRATING"})
    assert props.status == "MIGRATING"
    assert not Status.is_final_status(props.status)


@pytest.mark.parametrize(
    ("status", "final"),
    [("READY", True), ("CREATE_FAILED", True), ("UPDATE_FAILED", True),
     ("DELETE_FAILED", True), ("CREATING", False), ("UPDATING", False), ("DELETING", False),
     (None, False)],
)
def test_final_statuses(status, final):
    assert Status.is_final_status(status) is final


def test_create_input_derives_proxy_mode_without_crashing():
    no_endpoints = ModelProxyCreateInput(model_proxy_name="a", proxy_config=ProxyConfig())
    assert no_endpoints.to_wire()["proxyMode"] == "single"
    two = ProxyConfig(endpoints=[ProxyConfigEndpoint(model_names=["m"])] * 2)
    assert derive_proxy_mode(two) is ProxyMode.MULTI
    explicit = ModelProxyCreateInput(model_proxy_name="a", proxy_mode=ProxyMode.MULTI)
    assert explicit.to_wire()["proxyMode"] == "multi"


def test_create_input_wire_shape_matches_the_sdk_capture():
    body = ModelProxyCreateInput(
        model_proxy_name="sdk-573c16b8",
        description="official sdk",
        proxy_config=ProxyConfig(
            endpoints=[ProxyConfigEndpoint(model_names=["m1"], model_service_name="svc")]
        ),
    ).to_wire()
    assert body == {
        "cpu": 2, "description": "official sdk", "memory": 4096,
        "modelProxyName": "sdk-573c16b8",
        "proxyConfig": {"endpoints": [{"modelNames": ["m1"], "modelServiceName": "svc"}]},
        "proxyMode": "single",
    }


def test_update_input_carries_only_wire_updatable_fields():
    wire = ModelProxyUpdateInput(description="d").to_wire()
    assert wire == {"description": "d"}
    assert "cpu" not in ModelProxyUpdateInput.model_fields
    policies_only = ModelProxyUpdateInput(
        proxy_config=ProxyConfig(policies=ProxyConfigPolicies(concurrency_limit=2))
    ).to_wire()
    assert policies_only == {"proxyConfig": {"policies": {"concurrencyLimit": 2}}}


@pytest.mark.parametrize(
    "bad",
    [{"model_proxy_name": ""}, {"model_proxy_name": "a", "proxy_mode": "triple"},
     {"model_proxy_name": "a", "cpu": "lots"}, {"model_proxy_name": "a", "memory": -1}],
)
def test_create_input_validation(bad):
    with pytest.raises(ValidationError):
        ModelProxyCreateInput(**bad)


def test_snake_and_camel_names_both_accepted():
    assert ModelProxyCreateInput.model_validate({"modelProxyName": "a"}).model_proxy_name == "a"
    assert ModelProxyCreateInput.model_validate({"model_proxy_name": "a"}).model_proxy_name == "a"


def test_model_name_rules():
    single = ModelProxyProps.from_wire(SERVER_PROXY)
    assert model_name_for(single) == "qwen-max"
    multi = ModelProxyProps.from_wire({**SERVER_PROXY, "proxyMode": "multi"})
    assert model_name_for(multi) == "demo"
    bare = ModelProxyProps.from_wire({"modelProxyName": "n", "proxyMode": "single"})
    assert model_name_for(bare) == "n"
