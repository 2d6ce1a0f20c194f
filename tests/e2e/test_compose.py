"""docker-compose.yml stays true to the CLI and the settings (no Docker engine runs here):
every `mpq` command must parse, and every variable must be one our code reads."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from typer.core import TyperGroup

from core.settings import Settings
from modelproxy.config import _ENV as MODELPROXY_ENV
from producer.cli import app

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"
SERVICES: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())["services"]
SETTINGS_ENV = {f"MPQ_{name.upper()}" for name in Settings.model_fields} | {"REDIS_URL"}
AGENTRUN_ENV = {name for names in MODELPROXY_ENV.values() for name in names}


def command_of(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


MPQ_SERVICES = sorted(n for n, s in SERVICES.items() if command_of(s)[:1] == ["mpq"])


def test_compose_has_the_production_stack() -> None:
    assert {"redis", "emulator", "worker-inference", "worker-management", "beat",
            "flower", "gateway"} <= set(SERVICES)
    redis = command_of(SERVICES["redis"])
    assert redis[redis.index("--appendonly") + 1] == "yes"


def parse_mpq(command: list[str]) -> list[str]:
    """Parse and convert every argument exactly as `mpq` would, without running it; the
    path of (sub)commands it runs. A group (`mpq gateway`) may run itself or a subcommand."""
    assert command[0] == "mpq"
    group = typer.main.get_command(app)
    context = group.make_context("mpq", command[1:2])
    path, args = [], command[1:]
    while args:
        assert isinstance(group, TyperGroup), f"mpq {' '.join(path)} takes no {args[0]}"
        sub = group.get_command(context, args[0])
        assert sub is not None, f"no such command: mpq {' '.join([*path, args[0]])}"
        path.append(args[0])
        context = sub.make_context(args[0], args[1:], parent=context)
        # A group keeps its subcommand's name apart from the subcommand's arguments.
        args = [*context._protected_args, *context.args] if isinstance(sub, TyperGroup) else []
        group = sub
    return path


@pytest.mark.parametrize("name", MPQ_SERVICES)
def test_each_mpq_command_is_accepted_by_the_real_cli(name: str) -> None:
    parse_mpq(command_of(SERVICES[name]))


@pytest.mark.parametrize("name", MPQ_SERVICES)
def test_each_variable_is_a_real_setting(name: str) -> None:
    environment = SERVICES[name].get("environment") or {}
    unknown = set(environment) - SETTINGS_ENV - AGENTRUN_ENV
    assert not unknown, f"{name}: variables nothing reads: {sorted(unknown)}"
    values = {k[4:].lower(): v for k, v in environment.items()
              if k.startswith("MPQ_") and "${" not in str(v)}
    Settings(**values)  # the values validate


def test_workers_split_the_queues() -> None:
    queues = {name: command_of(SERVICES[name])[command_of(SERVICES[name]).index("--queues") + 1]
              for name in ("worker-inference", "worker-management")}
    assert queues == {"worker-inference": "inference", "worker-management": "management"}


def test_flower_has_a_password_and_publishes_on_loopback_only() -> None:
    flower = SERVICES["flower"]
    assert "MPQ_FLOWER_PASSWORD" in flower["environment"]
    assert all(port.startswith("127.0.0.1:") for port in flower["ports"])


def test_the_gateway_serves_beyond_loopback_and_says_how_to_make_its_first_key() -> None:
    gateway = SERVICES["gateway"]
    command = command_of(gateway)
    assert parse_mpq(command) == ["gateway"]  # the server itself, not a key command
    port = command[command.index("--port") + 1]
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert gateway["ports"] == [f"127.0.0.1:{port}:{port}"]
    assert "redis" in gateway["depends_on"]
    # Beyond loopback it refuses to start without a key: the file says how to make one.
    shown = re.search(r"docker compose run --rm gateway (mpq gateway key create .+)",
                      COMPOSE.read_text())
    assert shown, "the compose file should say how to make the gateway's first key"
    assert parse_mpq(shlex.split(shown.group(1))) == ["gateway", "key", "create"]
