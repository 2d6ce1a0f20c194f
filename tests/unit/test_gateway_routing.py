"""Routing by model, pure: which proxy a request goes to, and what a caller is told when there
is none or more than one."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.errors import OpenAIError
from gateway.proxy_directory import KnownProxy, Snapshot, parse_entry, served_models
from gateway.routing import decide
from modelproxy.models import ModelProxyProps

SNAPSHOT = Snapshot((
    KnownProxy("a", "READY", ("m1", "m2"), 0),
    KnownProxy("b", "READY", ("shared",), 0),
    KnownProxy("c", "READY", ("shared",), 0),
    KnownProxy("broken", "CREATE_FAILED", ("m3",), 0),
))


@pytest.mark.parametrize(("model", "explicit", "default", "proxy"), [
    ("m1", None, None, "a"),
    ("m2", None, "z", "a"),  # a proxy that claims the model wins over the default
    ("other", None, "z", "z"),  # nobody claims it: the default
    (None, None, "z", "z"),
    ("shared", "c", None, "c"),  # explicit picks among several
    (None, "b", None, "b"),
])
def test_a_request_goes_to_its_proxy(model: str | None, explicit: str | None,
                                     default: str | None, proxy: str) -> None:
    assert decide(SNAPSHOT, model, explicit, default) == proxy


@pytest.mark.parametrize(("model", "explicit", "status", "code", "names"), [
    ("nope", None, 404, "model_not_found", ["m1", "m2", "shared"]),
    ("m3", None, 404, "model_not_found", []),  # a failed proxy serves nothing
    ("shared", None, 400, "model_ambiguous", ["b", "c", "X-Mpq-Proxy", "metadata.proxy"]),
    (None, None, 400, "missing_model", []),
    ("m1", "zz", 404, "proxy_not_found", ["a", "b", "c"]),
    ("shared", "a", 404, "model_not_found", ["m1", "m2"]),  # the proxy does not serve it
    ("m1", "bad name!", 400, "invalid_proxy", []),
])
def test_what_cannot_be_routed_is_refused_naming_the_candidates(
        model: str | None, explicit: str | None, status: int, code: str,
        names: list[str]) -> None:
    verdict = decide(SNAPSHOT, model, explicit, None)
    assert isinstance(verdict, OpenAIError)
    assert (verdict.status, verdict.code) == (status, code)
    for name in names:
        assert name in verdict.message


def test_a_long_list_of_candidates_is_cut() -> None:
    many = Snapshot(tuple(KnownProxy(f"p{i:02}", "READY", (f"m{i:02}",), 0)
                          for i in range(30)))
    verdict = decide(many, "nope", None, None)
    assert isinstance(verdict, OpenAIError)
    assert "m19" in verdict.message and "m20" not in verdict.message
    assert "(and 10 more)" in verdict.message


def props(**wire: Any) -> ModelProxyProps:
    return ModelProxyProps.model_validate(wire)


@pytest.mark.parametrize(("wire", "models"), [
    ({"proxyMode": "single", "proxyConfig": {"endpoints": [{"modelNames": ["x", "y"]},
                                                          {"modelNames": ["z"]}]}},
     ("x", "y")),
    ({"proxyMode": "multi", "proxyConfig": {"endpoints": [{"modelNames": ["x"]},
                                                         {"modelNames": ["z"]}]}},
     ("p", "x", "z")),
    ({"proxyMode": "single", "proxyConfig": {"endpoints": [{}]}}, ("p",)),
    ({}, ("p",)),
])
def test_served_models_follow_the_proxy_mode(wire: dict[str, Any],
                                             models: tuple[str, ...]) -> None:
    assert served_models("p", props(modelProxyName="p", **wire)) == models


@pytest.mark.parametrize("fields", [
    {},  # a name the set lists whose entry is gone
    {"state": "vanished", "fetched_at": "1"},
    {"state": "present", "fetched_at": "1", "props": "{not json"},
    {"state": "present", "props": "{}"},  # no fetched_at
    {"state": "maybe", "fetched_at": "1", "props": "{}"},
])
def test_vanished_gone_and_unreadable_entries_are_skipped(fields: dict[str, str]) -> None:
    assert parse_entry("p", fields) is None


def test_a_present_entry_is_known() -> None:
    found = parse_entry("p", {"state": "present", "fetched_at": "1", "props":
                              '{"modelProxyName": "p", "status": "READY", '
                              '"createdAt": "2025-01-02T03:04:05Z"}'})
    assert found == KnownProxy("p", "READY", ("p",), 1735787045)
