"""Run the emulator with uvicorn: in a background thread for tests and embedding
(`EmulatorServer`), or in the foreground for `mpq emulator` (`run_forever`).

The server binds its own socket first, so `port=0` picks a free port and `.url` is known before
the first request. Only loopback hosts are served unless `allow_open=True` (`--allow-open`),
credentials or not: the emulator is a test tool (its `/_emulator/health` is always open, and
without credentials so is everything else).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

import uvicorn
from fastapi import FastAPI

from emulator.app import create_app
from emulator.certs import TlsFiles, write_tls_files
from emulator.settings import EmulatorSettings

LOOPBACK = "127.0.0.1"
DEFAULT_LOG_LEVEL = "warning"
STARTUP_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
_POLL_S = 0.01
_UNSPECIFIED = {"0.0.0.0": LOOPBACK, "::": "::1"}  # noqa: S104 (a lookup, not a bind)


class OpenBindError(ValueError):
    """A non-loopback host without `allow_open`."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind_allowed(host: str, allow_open: bool) -> None:
    """Refuse to serve beyond this machine unless allowed (credentials do not allow it)."""
    if allow_open or is_loopback(host):
        return
    raise OpenBindError(
        f"refusing to serve the emulator on {host}: it listens on loopback only unless"
        " --allow-open (allow_open=True) is given; without credentials anyone who can reach"
        " it could use it"
    )


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket. `proto` must be IPPROTO_TCP: asyncio turns Nagle off only on
    sockets that say so, and with Nagle on every answer waits ~40 ms for a delayed ACK."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(socket.SOMAXCONN)
    except OSError:
        sock.close()
        raise
    return sock


def _url_host(host: str) -> str:
    host = _UNSPECIFIED.get(host, host)
    return f"[{host}]" if ":" in host else host


class EmulatorServer:
    """The emulator on a real socket, served by uvicorn in a thread with its own event loop.

    `with EmulatorServer(settings) as server: httpx.get(server.url + ...)`. With `tls=True`
    the server uses a fresh certificate; verify it with `ssl.create_default_context(
    cafile=server.ca_path)`.
    """

    def __init__(
        self,
        settings: EmulatorSettings | None = None,
        credentials: Mapping[str, str] | None = None,
        api_keys: Iterable[str] | None = None,
        *,
        host: str = LOOPBACK,
        port: int = 0,
        tls: bool = False,
        allow_open: bool = False,
        app: FastAPI | None = None,
        log_level: str = DEFAULT_LOG_LEVEL,
        startup_timeout_s: float = STARTUP_TIMEOUT_S,
    ) -> None:
        self.app = app if app is not None else create_app(settings, credentials, api_keys)
        check_bind_allowed(host, allow_open)
        self.host = host
        self.port = port
        self.tls = tls
        self._log_level = log_level
        self._startup_timeout_s = startup_timeout_s
        self._sock: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._tls_files: TlsFiles | None = None

    @property
    def url(self) -> str:
        """`http(s)://host:port`, valid once started."""
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{_url_host(self.host)}:{self.port}"

    @property
    def ca_path(self) -> str | None:
        """PEM file of the CA that signed the server certificate (TLS mode, once started)."""
        return str(self._tls_files.ca_path) if self._tls_files else None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> Self:
        """Bind, serve in a background thread, and return once the server accepts requests."""
        if self._thread is not None:
            raise RuntimeError("the emulator is already started")
        self._sock = bind_socket(self.host, self.port)
        self.port = int(self._sock.getsockname()[1])
        self._server = uvicorn.Server(self._config())
        self._thread = threading.Thread(
            target=self._serve,
            args=(self._server, self._sock),
            name=f"emulator:{self.port}",
            daemon=True,
        )
        self._thread.start()
        try:
            self._wait_started(self._server)
        except BaseException:
            self.stop()
            raise
        return self

    def _config(self) -> uvicorn.Config:
        if self.tls:
            self._tmp = tempfile.TemporaryDirectory(prefix="mpq-emulator-tls-")
            self._tls_files = write_tls_files(Path(self._tmp.name))
        files = self._tls_files
        # log_config=None: an embedded server must not rewrite the host process's logging.
        return uvicorn.Config(
            self.app,
            log_level=self._log_level,
            log_config=None,
            access_log=False,
            lifespan="off",
            ws="none",
            ssl_certfile=files.cert_path if files else None,
            ssl_keyfile=files.key_path if files else None,
        )

    def _serve(self, server: uvicorn.Server, sock: socket.socket) -> None:
        try:
            asyncio.run(_serve_then_settle(server, sock))
        except BaseException as exc:  # handed to the thread that called start()
            self._error = exc

    def _wait_started(self, server: uvicorn.Server) -> None:
        deadline = time.monotonic() + self._startup_timeout_s
        while not server.started:
            if self._error is not None or not self.running:
                raise RuntimeError(f"the emulator failed to start: {self._error!r}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the emulator did not start in {self._startup_timeout_s} s")
            time.sleep(_POLL_S)

    def stop(self) -> None:
        """Stop serving and remove the TLS files; safe to call twice."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT_S)
            if self._thread.is_alive() and self._server is not None:
                self._server.force_exit = True  # open connections would hold it otherwise
                self._thread.join(STOP_TIMEOUT_S)
        if self._sock is not None:
            self._sock.close()
        if self._tmp is not None:
            self._tmp.cleanup()
        self._server = self._thread = self._sock = self._tmp = self._tls_files = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


async def _serve_then_settle(server: uvicorn.Server, sock: socket.socket) -> None:
    await server.serve(sockets=[sock])
    # uvicorn closes idle keep-alive connections on exit; their transports finish closing
    # on a later loop turn, which asyncio.run would otherwise never give them.
    await asyncio.sleep(_POLL_S)


def _announce(server: EmulatorServer) -> None:
    line = f"ModelProxy emulator listening on {server.url}"
    if server.ca_path:
        line += f" (CA certificate: {server.ca_path})"
    print(line, file=sys.stderr, flush=True)


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT/SIGTERM set `stop` (main thread only; elsewhere the caller stops us)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_forever(
    host: str = LOOPBACK,
    port: int = 0,
    tls: bool = False,
    settings: EmulatorSettings | None = None,
    credentials: Mapping[str, str] | None = None,
    *,
    api_keys: Iterable[str] | None = None,
    allow_open: bool = False,
    on_ready: Callable[[EmulatorServer], None] = _announce,
    stop: threading.Event | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM (or `stop` is set). `on_ready` gets the started server
    (by default a line with its URL, and CA file in TLS mode, goes to stderr)."""
    stop = threading.Event() if stop is None else stop
    server = EmulatorServer(
        settings, credentials, api_keys, host=host, port=port, tls=tls, allow_open=allow_open
    )
    with server, _stop_on_signals(stop):
        on_ready(server)
        while not stop.wait(0.2) and server.running:
            pass
