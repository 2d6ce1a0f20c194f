"""docker-compose.yml stays true to the CLI and the settings (no Docker engine runs here):
every `mpq` command must parse, and every variable must be one our code reads."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

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
            "flower"} <= set(SERVICES)
    redis = command_of(SERVICES["redis"])
    assert redis[redis.index("--appendonly") + 1] == "yes"


@pytest.mark.parametrize("name", MPQ_SERVICES)
def test_each_mpq_command_is_accepted_by_the_real_cli(name: str) -> None:
    command = command_of(SERVICES[name])
    # Parse and convert every argument exactly as `mpq` would, without running it.
    group = typer.main.get_command(app)
    context = group.make_context("mpq", [command[1]])
    sub = group.get_command(context, command[1])  # type: ignore[attr-defined]
    assert sub is not None, f"{name}: no such command mpq {command[1]}"
    sub.make_context(command[1], command[2:], parent=context)


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
