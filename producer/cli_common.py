"""What every `mpq` command shares: consoles, one-line errors with stable exit codes, and
a client built from the environment."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn, ParamSpec, TypeVar

import typer
from pydantic import ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from rich.console import Console

from core.settings import Settings
from producer.batches import BatchNotFoundError
from producer.client import BatchInvalidError, Client, NoRedisError
from producer.jobs import JobFailedError, JobNotFoundError, JobTimeoutError
from producer.terminal import escape_markup, safe_json

# Exit codes scripts can rely on (documented in the README).
EXIT_OK = 0
EXIT_FAILED = 1  # the work ran and failed (a job failed, a batch had failures)
EXIT_USAGE = 2  # bad arguments or input (also typer's own usage errors)
EXIT_NOT_FOUND = 3  # unknown job, batch or proxy
EXIT_UNAVAILABLE = 4  # Redis unreachable, or no worker took the job in time

RAW_HELP = "Print the model's text byte for byte (escape sequences and controls included)."

# No emoji codes: ":name:" in a user's text stays as typed.
console = Console(emoji=False)
err_console = Console(stderr=True, emoji=False)

P = ParamSpec("P")
R = TypeVar("R")


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    """One clear line on stderr and a non-zero exit: no traceback for user mistakes."""
    first_line = next(iter(message.splitlines()), "")
    err_console.print(f"[red]error:[/] {escape_markup(first_line)}", highlight=False,
                      soft_wrap=True)
    raise typer.Exit(code)


_ERRORS: list[tuple[type[BaseException], int, str]] = [
    (NoRedisError, EXIT_USAGE, "{exc}"),
    (RedisConnectionError, EXIT_UNAVAILABLE, "cannot reach Redis: {exc}"),
    (RedisError, EXIT_UNAVAILABLE, "Redis error: {exc}"),
    (JobNotFoundError, EXIT_NOT_FOUND, "{exc}"),
    (BatchNotFoundError, EXIT_NOT_FOUND, "{exc}"),
    (JobTimeoutError, EXIT_UNAVAILABLE, "{exc} (is `mpq worker` running?)"),
    (JobFailedError, EXIT_FAILED, "{exc}"),
    (BatchInvalidError, EXIT_USAGE, "{exc}"),
    (ValidationError, EXIT_USAGE, "invalid input: {exc}"),
    (FileNotFoundError, EXIT_USAGE, "no such file: {exc.filename}"),
    (IsADirectoryError, EXIT_USAGE, "is a directory: {exc.filename}"),
    (PermissionError, EXIT_USAGE, "permission denied: {exc.filename}"),
    (ValueError, EXIT_USAGE, "{exc}"),
]


def clean_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Map the errors a user can cause or meet to one line and an exit code."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except tuple(cls for cls, _, _ in _ERRORS) as exc:
            for cls, code, template in _ERRORS:
                if isinstance(exc, cls):
                    fail(template.format(exc=exc).splitlines()[0], code)
            raise

    return wrapper


@contextlib.contextmanager
def client(settings: Settings | None = None) -> Iterator[Client]:
    """A client of the configured Redis; fails fast (no minute of retries) when it is down."""
    resolved = settings or Settings()
    with Client(resolved, connect_retries=1) as mpq:
        yield mpq


def exec_module(module: str, args: Sequence[str]) -> NoReturn:
    """Become `python -m module args…` (same pid, so a service manager's signals reach the
    server directly): the command line launches a server, it does not import it."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable,  # noqa: S606 - our own interpreter and arguments
             [sys.executable, "-m", module, *args])


JSON_HELP = "Print JSON (for scripts)."


def print_json(value: Any) -> None:
    """JSON on stdout, plain (for scripts) and safe for a terminal."""
    sys.stdout.write(safe_json(value) + "\n")
    sys.stdout.flush()
