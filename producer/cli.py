"""The `mpq` command line."""

from __future__ import annotations

import logging
import os
import tempfile

import typer
from rich.console import Console

from modelproxy import Config, ModelProxyError
from worker.settings import Settings

app = typer.Typer(
    name="mpq",
    help="ModelProxy Queue: LLM and ModelProxy jobs through Celery workers.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 1) -> None:
    """One clear line on stderr and a non-zero exit: no traceback for user mistakes."""
    err_console.print(f"[red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


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
        fail(str(exc), 2)


def _emulator_credentials() -> dict[str, str] | None:
    config = Config()
    if not config.has_credentials():
        return None
    return {config.get_access_key_id(): config.get_access_key_secret()}


def _celery_settings() -> Settings:
    settings = Settings()
    if not settings.redis_url:
        fail("no Redis: set MPQ_REDIS_URL (or REDIS_URL) to the server the workers share", 2)
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
def demo() -> None:
    """Run the main job end to end on this machine (nothing to configure)."""
    from producer.demo import run_demo  # noqa: PLC0415 - keeps `mpq --help` fast

    logging.basicConfig(level=logging.WARNING)
    try:
        run_demo(console, os.environ.get("REDIS_URL") or None, Config())
    except ModelProxyError as exc:
        fail(f"demo failed: {exc}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
