"""The `mpq` command line."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import NoReturn

import typer

from core.settings import Settings
from emulator.synthetic import MAX_REPLY_TOKENS
from modelproxy import Config, ModelProxyError
from producer import cli_batch, cli_gateway, cli_job, cli_proxy
from producer.cli_common import (
    EXIT_FAILED,
    EXIT_USAGE,
    RAW_HELP,
    clean_errors,
    client,
    console,
    err_console,
    exec_module,
    fail,
)
from producer.cli_embed import embed_command
from producer.flower import flower_command
from producer.metrics_exporter import metrics_command
from producer.terminal import escape_markup, write_text

WORKER_APP = "worker.app"  # the worker's Celery app, run by name

app = typer.Typer(
    name="mpq",
    help="ModelProxy Queue: LLM and ModelProxy jobs through Celery workers.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(cli_batch.app, name="batch")
app.add_typer(cli_gateway.app, name="gateway")
app.add_typer(cli_job.app, name="job")
app.add_typer(cli_proxy.app, name="proxy")
app.command("embed")(embed_command)
app.command("flower")(flower_command)
app.command("metrics")(metrics_command)


@app.command()
@clean_errors
def chat(
    proxy: str = typer.Argument(..., help="Proxy name."),
    prompt: str = typer.Argument(..., help="The user message."),
    stream: bool = typer.Option(False, help="Print tokens as they arrive."),
    model: str | None = typer.Option(None, help="Model (default: the proxy's)."),
    max_tokens: int | None = typer.Option(None, min=1, help="Cap of the reply length."),
    timeout: float = typer.Option(120, help="Seconds to wait for the reply."),
    raw: bool = typer.Option(False, help=RAW_HELP),
) -> None:
    """Ask one question through the queue and print the answer."""
    params = {"max_tokens": max_tokens} if max_tokens else {}
    messages = [{"role": "user", "content": prompt}]
    with client() as mpq:
        job = mpq.chat(proxy, messages, model=model, stream=stream, **params)
        if stream:
            for event in job.stream():
                if event.kind == "restart":
                    err_console.print(f"\n[yellow]retrying (attempt {event.attempt})…[/]")
                elif event.kind == "error":
                    err_console.print(f"\nattempt {event.attempt} failed: "
                                      f"{escape_markup(event.data.get('error', ''))}",
                                      style="yellow")
                write_text(event.text, raw=raw, end="")
            write_text("")
            job.result(timeout)  # the outcome, and its exit code
        else:
            write_text(job.final_text(timeout), raw=raw)


API_KEYS_ENV = "MPQ_EMULATOR_API_KEYS"


@app.command()
def emulator(
    host: str = typer.Option("127.0.0.1", help="Address to bind (loopback unless --allow-open)."),
    port: int = typer.Option(8080, help="Port (0 picks a free one)."),
    tls: bool = typer.Option(False, help="Serve HTTPS with a self-signed certificate."),
    allow_open: bool = typer.Option(
        False, help="Allow a non-loopback address (with credentials or without)."
    ),
    api_key_file: Path | None = typer.Option(
        None, help=f"Inbound API keys the data plane accepts, one a line (also: {API_KEYS_ENV},"
        " comma-separated)."
    ),
    api_key: list[str] = typer.Option([], hidden=True),
    ttft_s: float = typer.Option(0.0, min=0, help="Synthetic model: time to first token."),
    tpot_s: float = typer.Option(0.0, min=0, help="Synthetic model: time per output token."),
    reply_tokens: int | None = typer.Option(
        None, min=1, max=MAX_REPLY_TOKENS,
        help="Synthetic model: every reply this long (a request's max_tokens still cuts it);"
        " default: short replies of varying length.",
    ),
    lifecycle_delay_s: float = typer.Option(
        0.5, min=0, help="CREATING/UPDATING/DELETING last this long."
    ),
) -> None:
    """Run the local ModelProxy service (control and data plane) in the foreground.

    With AGENTRUN_ACCESS_KEY_ID/SECRET set it verifies request signatures on both planes;
    with credentials or API keys, /_emulator administration needs them too."""
    from emulator.server import run_forever  # noqa: PLC0415 - heavy import
    from emulator.settings import EmulatorSettings  # noqa: PLC0415

    if api_key:
        fail(f"--api-key would show the key to anyone who lists processes: set {API_KEYS_ENV}"
             " (comma-separated) or pass --api-key-file PATH (one key a line)", EXIT_USAGE)
    try:
        api_keys = emulator_api_keys(os.environ, api_key_file)
    except (ValueError, OSError) as exc:
        fail(f"--api-key-file: {exc}", EXIT_USAGE)
    settings = EmulatorSettings(
        ttft_s=ttft_s, tpot_s=tpot_s, reply_tokens=reply_tokens,
        create_delay_s=lifecycle_delay_s, update_delay_s=lifecycle_delay_s,
        delete_delay_s=lifecycle_delay_s,
    )
    try:
        run_forever(host=host, port=port, tls=tls, settings=settings,
                    credentials=_emulator_credentials(), api_keys=api_keys or None,
                    allow_open=allow_open)
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE)


def emulator_api_keys(environ: Mapping[str, str], key_file: Path | None) -> list[str]:
    """The keys in `MPQ_EMULATOR_API_KEYS` (comma-separated) and in `key_file` (one a line,
    blank lines skipped). A file without keys is refused: it would leave the data plane open."""
    keys = [k.strip() for k in environ.get(API_KEYS_ENV, "").split(",") if k.strip()]
    if key_file is None:
        return keys
    from_file = [line.strip() for line in key_file.read_text().splitlines() if line.strip()]
    if not from_file:
        raise ValueError(f"no API key in {key_file}")
    return [*keys, *from_file]


def _emulator_credentials() -> dict[str, str] | None:
    config = Config()
    if not config.has_credentials():
        return None
    return {config.get_access_key_id(): config.get_access_key_secret()}


def _celery_settings() -> Settings:
    settings = Settings()
    if not settings.redis_url:
        fail("no Redis: set MPQ_REDIS_URL (or REDIS_URL) to the server the workers share",
             EXIT_USAGE)
    return settings


@app.command()
def worker(
    queues: str = typer.Option("inference,management", help="Queues to consume."),
    slots: int | None = typer.Option(
        None, min=1, help="Jobs in flight in each process (default: MPQ_WORKER_SLOTS or 500)."
    ),
    processes: int | None = typer.Option(
        None, min=0,
        help="Worker processes (default: MPQ_WORKER_PROCESSES, or 0: one per usable core).",
    ),
    loglevel: str = typer.Option("INFO", help="Log level."),
    name: str | None = typer.Option(
        None, help="Node name (default: mpq-<pid>@host; several processes: <name>-1, -2, …)."
    ),
) -> None:
    """Run a worker: Celery threads pools whose slots share one event loop per process, one
    process per usable core; SIGTERM or Ctrl-C stops them all."""
    from core.celery_app import consumed_queues  # noqa: PLC0415 - imports Celery
    from producer.worker_group import child_name, run_group, usable_cores  # noqa: PLC0415

    settings = _celery_settings()
    count = processes if processes is not None else settings.worker_processes
    count = count or usable_cores()
    node = name or f"mpq-{os.getpid()}@%h"
    args = ["worker", "--pool=threads", f"--concurrency={slots or settings.worker_slots}",
            "-Q", consumed_queues(settings, queues), f"--loglevel={loglevel}"]
    if count == 1:
        _exec_celery([*args, "-n", node])
    names = [child_name(node, i) for i in range(1, count + 1)]
    code = run_group([(n, [*_celery_command(), *args, "-n", n]) for n in names], loglevel)
    raise typer.Exit(code)


@app.command()
def beat(loglevel: str = typer.Option("INFO", help="Log level.")) -> None:
    """Run the scheduler: refreshes the proxy cache every MPQ_REFRESH_INTERVAL_S."""
    _celery_settings()
    # The in-memory scheduler: nothing to keep between runs (the refresh is idempotent).
    _exec_celery(["beat", f"--loglevel={loglevel}", "--scheduler", "celery.beat:Scheduler"])


def _exec_celery(args: list[str]) -> NoReturn:
    """Become `celery -A worker.app …`: the worker's app is run by name, never imported."""
    exec_module("celery", ["-A", WORKER_APP, *args])


def _celery_command() -> list[str]:
    """`python -m celery -A worker.app`, for a child process."""
    return [sys.executable, "-m", "celery", "-A", WORKER_APP]


@app.command()
def up(
    slots: int = typer.Option(200, min=1, help="Worker slots."),
    flower: bool = typer.Option(True, help="Also run Flower."),
    gateway: bool = typer.Option(True, help="Also run the OpenAI-compatible gateway."),
) -> None:
    """Run the whole local stack in the foreground; Ctrl-C stops it all."""
    from producer.up import run_up  # noqa: PLC0415 - keeps `mpq --help` fast

    run_up(slots=slots, with_flower=flower, with_gateway=gateway)


@app.command()
def demo() -> None:
    """Run the main job end to end on this machine (nothing to configure)."""
    from producer.demo import run_demo  # noqa: PLC0415 - keeps `mpq --help` fast

    logging.basicConfig(level=logging.WARNING)
    try:
        code = run_demo(console, os.environ.get("MPQ_REDIS_URL") or os.environ.get("REDIS_URL"))
    except ModelProxyError as exc:
        fail(f"demo failed: {exc}")
    except KeyboardInterrupt:
        err_console.print("[yellow]demo interrupted: everything it started is stopped[/]")
        code = 130
    if code:
        raise typer.Exit(code if code != 1 else EXIT_FAILED)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
