"""The gateway process: it serves, refuses requests without a valid key in OpenAI's error
shape, and refuses to serve beyond loopback without keys."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from gateway_stack import GatewayStack, gateway_env, gateway_stack
from stack import Stack

from emulator.server import EmulatorServer


@pytest.fixture(scope="module")
def gw(redis_url: str, emulator: EmulatorServer,
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayStack]:
    with gateway_stack(redis_url, emulator.url, tmp_path_factory.mktemp("gw")) as stack:
        yield stack


def test_health_is_open(gw: GatewayStack) -> None:
    reply = httpx.get(gw.base_url.removesuffix("/v1") + "/health")
    assert reply.json() == {"status": "ok"}


@pytest.mark.parametrize("key", [None, "sk-mpq-wrong-key-of-some-length"])
def test_a_missing_or_wrong_key_gets_401_in_openai_shape(gw: GatewayStack,
                                                         key: str | None) -> None:
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    reply = httpx.get(f"{gw.base_url}/files", headers=headers)
    assert reply.status_code == 401
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        gw.openai(key="sk-mpq-wrong-key-of-some-length").files.list()


def test_a_public_address_without_keys_is_refused(redis_url: str, emulator: EmulatorServer,
                                                   tmp_path: Path) -> None:
    stack = Stack.create(redis_url, emulator.url)
    done = subprocess.run([sys.executable, "-m", "gateway", "--host", "0.0.0.0", "--port", "0"],
                          env=gateway_env(stack), capture_output=True, text=True, timeout=30,
                          check=False)
    assert done.returncode == 2
    assert "without API keys" in done.stderr
