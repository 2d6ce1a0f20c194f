"""docker-compose.yml stays true to the CLI: every `mpq` command it runs must parse."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from producer.cli import app

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"


def services() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    return dict(data["services"])


def command_of(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def test_compose_has_the_stack() -> None:
    assert {"redis", "emulator"} <= set(services())


MPQ_SERVICES = sorted(n for n, s in services().items() if command_of(s)[:1] == ["mpq"])


@pytest.mark.parametrize("name", MPQ_SERVICES)
def test_each_mpq_command_is_accepted_by_the_real_cli(name: str) -> None:
    command = command_of(services()[name])
    # Parse and convert every argument exactly as `mpq` would, without running it.
    group = typer.main.get_command(app)
    context = group.make_context("mpq", [command[1]])
    sub = group.get_command(context, command[1])  # type: ignore[attr-defined]
    assert sub is not None, f"{name}: no such command mpq {command[1]}"
    sub.make_context(command[1], command[2:], parent=context)


def test_redis_keeps_data() -> None:
    command = command_of(services()["redis"])
    assert command[command.index("--appendonly") + 1] == "yes"
