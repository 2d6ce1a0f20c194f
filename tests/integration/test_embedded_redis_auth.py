"""The embedded server lets in only mpq's user, with its generated password, and that user
cannot administer the server (whoever reaches mpq's Redis reaches the cloud credentials)."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from urllib.parse import urlparse

import pytest
import redis
from processes import command_lines
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError

from core.embedded_redis import DENIED_COMMANDS, USER, EmbeddedRedis
from core.settings import Settings

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def server() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis() as embedded:
        yield embedded


def test_the_url_carries_a_generated_password(server: EmbeddedRedis) -> None:
    url = urlparse(server.url)
    assert url.username == USER
    assert url.password and len(url.password) >= 24
    with EmbeddedRedis() as other:
        assert urlparse(other.url).password != url.password


def test_a_client_without_the_password_is_refused(server: EmbeddedRedis) -> None:
    anonymous = redis.Redis(host="127.0.0.1", port=server.port)
    assert anonymous.ping()  # how the server is seen to be up: nothing else
    for command in (("GET", "x"), ("SET", "x", "1"), ("KEYS", "*"),
                    ("XREAD", "STREAMS", "s", "0"), ("SUBSCRIBE", "c")):
        with pytest.raises(NoPermissionError):
            anonymous.execute_command(*command)
    wrong = redis.Redis(host="127.0.0.1", port=server.port, username=USER, password="guess")
    with pytest.raises((AuthenticationError, ResponseError)):
        wrong.get("x")


@pytest.mark.parametrize("command", [
    ("CONFIG", "SET", "maxmemory", "1mb"), ("CONFIG", "GET", "*"), ("FLUSHALL",), ("FLUSHDB",),
    ("SHUTDOWN", "NOSAVE"), ("DEBUG", "SLEEP", "0"), ("MODULE", "LIST"), ("ACL", "LIST"),
    ("ACL", "SETUSER", "intruder", "on", ">pw", "+@all"), ("MONITOR",), ("REPLICAOF", "NO", "ONE"),
])
def test_mpqs_user_cannot_administer_the_server(server: EmbeddedRedis,
                                                command: tuple[str, ...]) -> None:
    client = redis.Redis.from_url(server.url)
    # DEBUG is also off in the server's configuration, which answers before the ACL does.
    refusal = ResponseError if command[0] == "DEBUG" else NoPermissionError
    with pytest.raises(refusal):
        client.execute_command(*command)
    assert command[0].lower() in DENIED_COMMANDS


def test_mpqs_user_does_its_work(server: EmbeddedRedis) -> None:
    client = redis.Redis.from_url(server.url, decode_responses=True)
    assert client.set("mpq-auth-test", "1")
    assert client.eval("return redis.call('GET', KEYS[1])", 1, "mpq-auth-test") == "1"
    assert client.xadd("mpq-auth-test:s", {"a": "1"})
    assert client.delete("mpq-auth-test", "mpq-auth-test:s") == 2


def test_the_password_is_on_no_command_line_and_in_a_private_directory(
    server: EmbeddedRedis,
) -> None:
    password = urlparse(server.url).password or ""
    for pid, cmdline in command_lines().items():
        assert password.encode() not in cmdline, f"pid {pid} shows it"
    assert stat.S_IMODE(server.data_dir.stat().st_mode) == 0o700
    acl = server.data_dir / "users.acl"
    assert stat.S_IMODE(acl.stat().st_mode) == 0o600
    assert password not in acl.read_text()  # only its SHA-256 is there


def test_settings_show_no_password(server: EmbeddedRedis) -> None:
    password = urlparse(server.url).password or ""
    settings = Settings(redis_url=server.url, broker_url=server.url)
    for shown in (repr(settings), str(settings), f"{settings!r}"):
        assert password not in shown
        assert "***" in shown


def test_settings_hand_their_secrets_to_a_child_in_clear(server: EmbeddedRedis) -> None:
    settings = Settings(redis_url=server.url, flower_password="fpw-1",
                        modelproxy_api_key="key-2")
    env = settings.environment()
    assert env["MPQ_REDIS_URL"] == server.url
    assert (env["MPQ_FLOWER_PASSWORD"], env["MPQ_MODELPROXY_API_KEY"]) == ("fpw-1", "key-2")
    assert Settings(**{k[4:].lower(): v for k, v in env.items()}) == settings
