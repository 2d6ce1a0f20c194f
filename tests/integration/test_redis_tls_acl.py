"""mpq against a Redis that wants TLS and an ACL user, as the README's Security section says
to run it: `rediss://USER:PASSWORD@HOST:PORT/DB?ssl_cert_reqs=required&ssl_ca_certs=CA`.
A real worker takes the job through the broker over TLS and writes its result there."""

from __future__ import annotations

import secrets
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import redis
from polling import wait_until
from stack import Stack
from workers import WorkerProcess

from core.contract import JobKind, JobStatus
from core.embedded_redis import USER, acl_rules, free_port
from emulator.certs import TlsFiles, write_tls_files
from emulator.server import EmulatorServer
from emulator.settings import EmulatorSettings

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorServer]:
    with EmulatorServer(settings=EmulatorSettings(create_delay_s=0)) as server:
        yield server


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, TlsFiles]]:
    """A Redis that takes only TLS connections, trusted with the CA, and lets in only mpq's
    ACL user. The embedded Valkey is built without TLS: this is the system's redis-server,
    which machines of this kind have (it serves 127.0.0.1:6379 there)."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server (with TLS) is needed for this test"
    directory = tmp_path_factory.mktemp("tls-redis")
    (directory / "tls").mkdir()
    tls = write_tls_files(directory / "tls")
    password = secrets.token_urlsafe(24)
    acl_file = directory / "users.acl"
    acl_file.write_text(acl_rules(password), encoding="utf-8")
    port = free_port()
    config = directory / "redis.conf"
    config.write_text("\n".join([
        "bind 127.0.0.1", "port 0", f"tls-port {port}", f"tls-cert-file {tls.cert_path}",
        f"tls-key-file {tls.key_path}", f"tls-ca-cert-file {tls.ca_path}",
        "tls-auth-clients no", f"aclfile {acl_file}", f"dir {directory}", 'save ""',
        "appendonly no", f"logfile {directory / 'redis.log'}",
    ]) + "\n", encoding="utf-8")
    server = subprocess.Popen([binary, str(config)])
    query = f"ssl_cert_reqs=required&ssl_ca_certs={quote(str(tls.ca_path))}"
    url = f"rediss://{USER}:{quote(password)}@127.0.0.1:{port}/0?{query}"
    try:
        wait_until(lambda: _answers(url), 10, 0.1, what="the TLS Redis to answer")
        yield url, tls
    finally:
        server.terminate()
        server.wait(10)


def _answers(url: str) -> bool:
    try:
        with redis.Redis.from_url(url, socket_connect_timeout=1) as client:
            return bool(client.ping())
    except redis.ConnectionError:
        return False


def test_the_url_needs_the_ca_and_the_password(tls_redis: tuple[str, TlsFiles]) -> None:
    url, _ = tls_redis
    with redis.Redis.from_url(url) as client:
        assert client.set("mpq-tls-test", "1")
        assert client.delete("mpq-tls-test") == 1
    without_ca = url.split("?")[0] + "?ssl_cert_reqs=required"
    with pytest.raises(redis.ConnectionError), redis.Redis.from_url(without_ca) as client:
        client.ping()
    wrong_password = url.replace(f"{USER}:", f"{USER}:x", 1)
    with pytest.raises(redis.AuthenticationError), redis.Redis.from_url(wrong_password) as client:
        client.ping()


async def test_a_worker_runs_a_job_over_tls_with_an_acl_user(
    tls_redis: tuple[str, TlsFiles], emulator: EmulatorServer,
    start_worker: Callable[..., WorkerProcess], tmp_path: Path,
) -> None:
    url, _ = tls_redis
    stack = Stack.create(url, emulator.url)
    try:
        proxy = await stack.proxy()
        start_worker(stack.settings, emulator.url, slots=4)
        [job] = await stack.submit(JobKind.CHAT, proxy, {
            "messages": [{"role": "user", "content": "hello over TLS"}]})
        record = await stack.wait(job.id, timeout_s=60)
    finally:
        await stack.close()
    assert record.status == JobStatus.SUCCEEDED, record.errors
