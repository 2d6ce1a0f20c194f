"""`mpq gateway`: serve the OpenAI-compatible gateway, and `mpq gateway key …`: its API keys.

The gateway runs as its own process (`python -m gateway`): the producer starts it and never
imports it, since the gateway is built on the producer."""

from __future__ import annotations

from datetime import datetime

import typer
from rich.table import Table

from core.api_keys import ApiKey
from core.settings import Settings
from producer.cli_common import (
    EXIT_NOT_FOUND,
    JSON_HELP,
    clean_errors,
    console,
    exec_module,
    fail,
    print_json,
)
from producer.gateway_keys import create_key, list_keys, revoke_key
from producer.terminal import escape_markup

GATEWAY_MODULE = "gateway"  # `python -m gateway`

app = typer.Typer()
key_app = typer.Typer(help="The gateway's API keys (shown once when made, kept hashed).",
                      no_args_is_help=True)
app.add_typer(key_app, name="key")


@app.callback(invoke_without_command=True)
def serve(
    ctx: typer.Context,
    host: str | None = typer.Option(
        None, help="Address to bind (default: MPQ_GATEWAY_ADDRESS); beyond loopback only once"
        " API keys exist."),
    port: int | None = typer.Option(
        None, min=0, max=65535, help="Port (default: MPQ_GATEWAY_PORT; 0 picks a free one)."),
    log_level: str = typer.Option("warning", help="uvicorn's log level."),
) -> None:
    """Serve the OpenAI-compatible API in the foreground (`mpq gateway key` makes its keys)."""
    if ctx.invoked_subcommand is not None:
        return
    args = ["--log-level", log_level]
    if host is not None:
        args += ["--host", host]
    if port is not None:
        args += ["--port", str(port)]
    exec_module(GATEWAY_MODULE, args)


def _described(key: ApiKey) -> dict[str, object]:
    return {"id": key.id, "name": key.name, "created_at": key.created_at, "hint": key.hint}


@key_app.command()
@clean_errors
def create(name: str = typer.Argument(..., help="What the key is for (shown in lists)."),
           as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Make a key and print it, once: mpq keeps only its SHA-256."""
    if not name.strip():
        raise ValueError("a key needs a name: what or who it is for")
    key, secret = create_key(Settings(), name.strip())
    if as_json:
        print_json({**_described(key), "key": secret})
        return
    console.print(f"API key {key.id} ({escape_markup(key.name)}); keep it now, it is not "
                  "shown again:", highlight=False)
    console.print(secret, markup=False, highlight=False, soft_wrap=True)


@key_app.command("list")
@clean_errors
def list_command(as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Every key: id, name, when it was made and its last four characters (never the key)."""
    keys = list_keys(Settings())
    if as_json:
        print_json([_described(key) for key in keys])
        return
    if not keys:
        console.print("no API keys: make one with `mpq gateway key create NAME`",
                      markup=False, highlight=False)
        return
    table = Table("id", "name", "created", "key")
    for key in keys:
        created = datetime.fromtimestamp(key.created_at).astimezone()
        table.add_row(key.id, escape_markup(key.name), created.isoformat(timespec="seconds"),
                      f"…{key.hint}")
    console.print(table)


@key_app.command()
@clean_errors
def revoke(key_id: str = typer.Argument(..., help="The key's id (`key_…`, from `list`).")) -> None:
    """Revoke a key: requests with it get 401 from then on."""
    if not revoke_key(Settings(), key_id):
        fail(f"no API key {key_id} (see `mpq gateway key list`)", EXIT_NOT_FOUND)
    console.print(f"revoked {escape_markup(key_id)}", highlight=False)
