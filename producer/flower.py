"""`mpq flower`: Flower on our broker, with our settings, safe by default.

- Basic auth is on unless `--no-auth`; the password comes from `MPQ_FLOWER_PASSWORD` or is
  generated and printed. Flower's REST API needs the same credentials.
- Flower binds to loopback unless told otherwise, and refuses a non-loopback address
  without auth unless forced (`--force-open`).
- Read-only by default: revoking or sending tasks from Flower would bypass the job store
  (a revoked message leaves its job `queued` forever); `--allow-control` lifts it.
- The tasks page shows the columns that say what a job is (name, state, the args summary,
  retries, the exception) and Flower's `/metrics` also carries mpq's own figures.

Flower runs in this process (`celery flower` with our app object), so the password never
appears in a process listing.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NoReturn

import typer

from producer.cli_common import EXIT_USAGE, fail
from worker.settings import Settings

GENERATED_PASSWORD_BYTES = 12
# What a user needs to tell jobs apart; Flower's default hides the args and the exception.
TASK_COLUMNS = "name,state,args,retries,exception,received,runtime,worker,uuid"
LOCALHOST_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


class UnsafeBindError(ValueError):
    """An unauthenticated Flower on a non-loopback address, without `force_open`."""


@dataclass(frozen=True)
class FlowerAccess:
    """Where Flower listens and who may log in (`user` None: no auth)."""

    address: str
    port: int
    user: str | None
    password: str | None
    generated_password: bool = False

    @property
    def url(self) -> str:
        host = self.address or "0.0.0.0"  # noqa: S104 - only for display: '' binds everywhere
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"


def is_loopback(address: str) -> bool:
    """`127.0.0.0/8`, `::1` and localhost names; '' (every interface) is not."""
    if address.lower() in LOCALHOST_NAMES:
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def check_exposure(address: str, *, auth: bool, force_open: bool) -> None:
    if not auth and not force_open and not is_loopback(address):
        raise UnsafeBindError(
            f"refusing to serve Flower without auth on {address or 'every interface'}: "
            "keep basic auth on, bind to 127.0.0.1, or pass --force-open"
        )


def resolve_access(
    settings: Settings, *, address: str | None, port: int | None, user: str | None,
    password: str | None, auth: bool,
) -> FlowerAccess:
    """Options win over settings, settings over defaults; a missing password is generated."""
    bind = settings.flower_address if address is None else address
    bind_port = settings.flower_port if port is None else port
    if not auth:
        return FlowerAccess(bind, bind_port, None, None)
    login = user or settings.flower_user
    secret = password or settings.flower_password
    if secret:
        return FlowerAccess(bind, bind_port, login, secret)
    generated = secrets.token_urlsafe(GENERATED_PASSWORD_BYTES)
    return FlowerAccess(bind, bind_port, login, generated, generated_password=True)


def flower_argv(
    access: FlowerAccess, *, read_only: bool = True, extra_args: Sequence[str] = ()
) -> list[str]:
    """The `celery flower` arguments (extra_args last: they override ours)."""
    argv = [
        "flower",
        f"--address={access.address}",
        f"--port={access.port}",
        f"--tasks_columns={TASK_COLUMNS}",
        f"--read_only={read_only}",
        # Flower's own default, said aloud: it tells every worker to send task events
        # (off by default, MPQ_TASK_EVENTS) every 5 s while it runs.
        "--enable_events=True",
    ]
    if access.user is not None:
        argv.append(f"--basic_auth={access.user}:{access.password}")
    return [*argv, *extra_args]


def _login_lines(access: FlowerAccess) -> list[str]:
    # With port 0 the OS picks one: Flower's own "Visit me at" line names it.
    where = f"Flower {access.url}" if access.port else "Flower"
    if access.user is None:
        return [f"{where}  (no auth)"]
    lines = [f"{where}  user {access.user}"]
    if access.generated_password:
        lines.append(f"password {access.password}  (generated; set MPQ_FLOWER_PASSWORD to "
                     "choose one)")
    if not is_loopback(access.address):
        lines.append("warning: basic auth over plain HTTP: put Flower behind TLS "
                     "(--certfile/--keyfile after --) or an SSH tunnel")
    return lines


def _register_mpq_metrics(settings: Settings) -> None:
    """Flower's `/metrics` serves the default registry: add mpq's figures to it (they live
    in the job store, so only when one is configured)."""
    if not settings.redis_url:
        return
    from prometheus_client import REGISTRY  # noqa: PLC0415 - only when Flower runs

    from producer.metrics_exporter import MpqCollector  # noqa: PLC0415

    REGISTRY.register(MpqCollector(settings))


def run_flower(
    settings: Settings,
    *,
    address: str | None = None,
    port: int | None = None,
    user: str | None = None,
    password: str | None = None,
    auth: bool = True,
    force_open: bool = False,
    read_only: bool = True,
    extra_args: Sequence[str] = (),
) -> NoReturn:
    """Run Flower in the foreground until SIGTERM or Ctrl-C, then end the process with
    Flower's exit code.

    Raises `UnsafeBindError` before anything starts when the address is unsafe."""
    access = resolve_access(settings, address=address, port=port, user=user,
                            password=password, auth=auth)
    check_exposure(access.address, auth=auth, force_open=force_open)
    for line in _login_lines(access):
        typer.echo(line)
    from worker.app import create_app  # noqa: PLC0415 - imports Celery

    _register_mpq_metrics(settings)
    celery = create_app(settings)
    # Flower reads queue lengths by broker type and never waits on BRPOP: kombu's own
    # transport (the workers' repaired one is for consumers, see worker/broker.py).
    celery.conf.broker_transport = None
    try:
        code = celery.start(flower_argv(access, read_only=read_only, extra_args=extra_args))
    except SystemExit as stopped:  # Flower's SIGTERM/SIGINT handler
        code = stopped.code
    # Flower has stopped serving. Leave now: interpreter shutdown would wait for Celery's
    # broker threads, which retry forever when the broker is gone (seen: no exit after 40 s).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(code or 0) if isinstance(code, int | None) else 1)


def flower_command(  # noqa: PLR0917 - typer: one parameter per option
    address: str | None = typer.Option(
        None, help="Address to bind (default: MPQ_FLOWER_ADDRESS or 127.0.0.1)."),
    port: int | None = typer.Option(
        None, min=0, help="Port (default: MPQ_FLOWER_PORT or 5555)."),
    user: str | None = typer.Option(None, help="Login (default: MPQ_FLOWER_USER or mpq)."),
    password: str | None = typer.Option(
        None, help="Password (better: MPQ_FLOWER_PASSWORD; unset: generated and printed)."),
    auth: bool = typer.Option(True, help="Basic auth on the pages and the REST API."),
    force_open: bool = typer.Option(
        False, help="Allow --no-auth on a non-loopback address."),
    allow_control: bool = typer.Option(
        False, help="Let Flower revoke/send tasks and control workers (bypasses mpq cancel)."),
    extra_args: list[str] | None = typer.Argument(
        None, metavar="[-- FLOWER_OPTIONS]...",
        help="More Flower options after --, e.g. -- --persistent=True"),
) -> None:
    """Run Flower (Celery's monitor) on the configured broker: tasks, workers, queues."""
    settings = Settings()
    if not (settings.broker_url or settings.redis_url):
        fail("no broker: set MPQ_REDIS_URL (or MPQ_BROKER_URL)", EXIT_USAGE)
    try:
        run_flower(settings, address=address, port=port, user=user, password=password,
                   auth=auth, force_open=force_open, read_only=not allow_control,
                   extra_args=extra_args or ())
    except UnsafeBindError as exc:
        fail(str(exc), EXIT_USAGE)


if __name__ == "__main__":
    typer.run(flower_command)
