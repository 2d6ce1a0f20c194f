"""The `mpq` command line."""

from __future__ import annotations

import logging
import os
import tempfile

import typer

from modelproxy import Config, ModelProxyError
from producer import cli_batch, cli_proxy
from producer.cli_common import (
    EXIT_FAILED,
    EXIT_USAGE,
    clean_errors,
    client,
    console,
    err_console,
    fail,
)
from producer.flower import flower_command
from producer.metrics_exporter import metrics_command
from worker.settings import Settings

app = typer.Typer(
    name="mpq",
    help="ModelProxy Queue: LLM and ModelProxy jobs through Celery workers.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(cli_batch.app, name="batch")
app.add_typer(cli_proxy.app, name="proxy")
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
                    err_console.print(f"\n[yellow]attempt {event.attempt} failed: "
                                      f"{event.data.get('error', '')}[/]")
                console.print(event.text, end="", markup=False, highlight=False)
            console.print()
            job.result(timeout)  # the outcome, and its exit code
        else:
            console.print(job.final_text(timeout), markup=False, highlight=False)


@app.command()
def emulator(
    host: str = typer.Option("127.0.0.1", help="Address to bind (loopback unless credentials)."),
    port: int = typer.Option(8080, help="Port (0 picks a free one)."),
    tls: bool = typer.Option(False, help="Serve HTTPS with a self-signed certificate."),
    allow_open: bool = typer.Option(
        False, help="Allow a non-loopback address without credentials."
    ),
    api_key: list[str] = typer.Option(
        [], help="Inbound API key the data plane accepts (repeatable)."
    ),
    ttft_s: float = typer.Option(0.0, min=0, help="Synthetic model: time to first token."),
    tpot_s: float = typer.Option(0.0, min=0, help="Synthetic model: time per output token."),
    lifecycle_delay_s: float = typer.Option(
        0.5, min=0, help="CREATING/UPDATING/DELETING last this long."
    ),
) -> None:
    """Run the local ModelProxy service (control and data plane) in the foreground.

    With AGENTRUN_ACCESS_KEY_ID/SECRET set it verifies request signatures on both planes."""
    from modelproxy.emulator.server import run_forever  # noqa: PLC0415 - heavy import
    from modelproxy.emulator.settings import EmulatorSettings  # noqa: PLC0415

    settings = EmulatorSettings(
        ttft_s=ttft_s, tpot_s=tpot_s, create_delay_s=lifecycle_delay_s,
        update_delay_s=lifecycle_delay_s, delete_delay_s=lifecycle_delay_s,
    )
    try:
        run_forever(host=host, port=port, tls=tls, settings=settings,
                    credentials=_emulator_credentials(), api_keys=api_key or None,
                    allow_open=allow_open)
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE)


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
        None, min=1, help="Jobs in flight in this process (default: MPQ_WORKER_SLOTS or 500)."
    ),
    loglevel: str = typer.Option("INFO", help="Log level."),
    name: str | None = typer.Option(None, help="Node name (default: mpq-<pid>@host)."),
) -> None:
    """Run a worker: a Celery threads pool whose slots share one event loop."""
    settings = _celery_settings()
    from worker.app import app as celery_app  # noqa: PLC0415 - imports Celery

    celery_app.worker_main([
        "worker", "--pool=threads", f"--concurrency={slots or settings.worker_slots}",
        "-Q", queues, f"--loglevel={loglevel}", "-n", name or f"mpq-{os.getpid()}@%h",
    ])


@app.command()
def beat(loglevel: str = typer.Option("INFO", help="Log level.")) -> None:
    """Run the scheduler: refreshes the proxy cache every MPQ_REFRESH_INTERVAL_S."""
    _celery_settings()
    from worker.app import app as celery_app  # noqa: PLC0415 - imports Celery

    with tempfile.TemporaryDirectory(prefix="mpq-beat-") as state_dir:
        celery_app.start([
            "beat", f"--loglevel={loglevel}", "--schedule", f"{state_dir}/schedule",
        ])


@app.command()
def up(
    slots: int = typer.Option(200, min=1, help="Worker slots."),
    flower: bool = typer.Option(True, help="Also run Flower."),
) -> None:
    """Run the whole local stack in the foreground; Ctrl-C stops it all."""
    from producer.up import run_up  # noqa: PLC0415 - keeps `mpq --help` fast

    run_up(slots=slots, with_flower=flower)


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
