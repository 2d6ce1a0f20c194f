"""`mpq gateway key create|list|revoke`, in-process (typer's `CliRunner`) against a private
embedded server: the key is shown once, only its digest is kept, and a revoked key no longer
names an owner; and which key `mpq up` hands out. (Serving, `mpq gateway` itself, is in
tests/e2e/test_gateway_cli.py; `mpq up` in tests/e2e/test_cli_emulator_demo.py.)"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

import pytest
import redis
from typer.testing import CliRunner, Result

from core.api_keys import KEY_PREFIX, digest
from core.settings import Settings
from producer.cli import app
from producer.cli_common import EXIT_NOT_FOUND, EXIT_USAGE
from producer.gateway_keys import with_api_keys
from producer.up import gateway_key

runner = CliRunner()
KEY_RE = re.compile(rf"^{re.escape(KEY_PREFIX)}[\w-]+$", re.MULTILINE)


@pytest.fixture
def env(redis_url: str, prefix: str) -> dict[str, str | None]:
    return {"MPQ_REDIS_URL": redis_url, "REDIS_URL": None, "MPQ_KEY_PREFIX": prefix,
            "COLUMNS": "200", "NO_COLOR": "1"}


def invoke(argv: Sequence[str], env: dict[str, str | None]) -> Result:
    result = runner.invoke(app, ["gateway", "key", *argv], env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def owner_of(env: dict[str, str | None], secret: str) -> str | None:
    """What the gateway would make of the key (it reads the same store)."""
    settings = Settings(redis_url=env["MPQ_REDIS_URL"], key_prefix=str(env["MPQ_KEY_PREFIX"]))
    return with_api_keys(settings, lambda keys: keys.owner(secret))


def create(env: dict[str, str | None], name: str) -> dict[str, object]:
    result = invoke(["create", name, "--json"], env)
    assert result.exit_code == 0, result.output
    made: dict[str, object] = json.loads(result.stdout)
    return made


def test_create_prints_the_key_once_and_its_id(env: dict[str, str | None]) -> None:
    result = invoke(["create", "ci runner"], env)
    assert result.exit_code == 0, result.output
    (secret,) = KEY_RE.findall(result.stdout)
    key_id = owner_of(env, secret)
    assert key_id is not None
    assert key_id in result.stdout
    assert "ci runner" in result.stdout
    listed = invoke(["list"], env).stdout
    assert key_id in listed
    assert secret not in listed


def stored_bytes(env: dict[str, str | None]) -> bytes:
    """Every key of the test's prefix with its value (strings and hashes)."""
    client = redis.Redis.from_url(str(env["MPQ_REDIS_URL"]))
    found = []
    try:
        for key in client.scan_iter(match=f"{env['MPQ_KEY_PREFIX']}*"):
            found.append(key)
            if client.type(key) == b"hash":
                found.extend(b"".join(item) for item in client.hgetall(key).items())
            else:
                found.append(client.get(key) or b"")
    finally:
        client.close()
    return b"\n".join(found)


def test_only_the_keys_digest_is_stored(env: dict[str, str | None]) -> None:
    made = create(env, "stored")
    secret = str(made["key"])
    stored = stored_bytes(env)
    assert digest(secret).encode() in stored
    assert str(made["id"]).encode() in stored
    assert secret[len(KEY_PREFIX):-4].encode() not in stored  # not the key, nor most of it


def test_json_create_and_list(env: dict[str, str | None]) -> None:
    first, second = create(env, "a"), create(env, "b")
    assert set(first) == {"id", "name", "created_at", "hint", "key"}
    assert first["hint"] == str(first["key"])[-4:]
    listed = json.loads(invoke(["list", "--json"], env).stdout)
    described = [{k: v for k, v in made.items() if k != "key"} for made in (first, second)]
    # Oldest first; keys made in the same second come in id order.
    assert listed == sorted(described, key=lambda key: (key["created_at"], key["id"]))


def test_list_shows_id_name_created_and_hint_never_the_key(env: dict[str, str | None]) -> None:
    made = create(env, "[bold]markup[/bold]")
    result = invoke(["list"], env)
    assert result.exit_code == 0, result.output
    row = next(line for line in result.stdout.splitlines() if str(made["id"]) in line)
    assert "[bold]markup[/bold]" in row  # shown as typed, not read as rich markup
    assert f"…{made['hint']}" in row
    assert re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", row)
    assert str(made["key"]) not in result.stdout


def test_list_without_keys_says_how_to_make_one(env: dict[str, str | None]) -> None:
    result = invoke(["list"], env)
    assert result.exit_code == 0
    assert "mpq gateway key create NAME" in result.stdout
    assert json.loads(invoke(["list", "--json"], env).stdout) == []


def test_revoke_ends_the_key(env: dict[str, str | None]) -> None:
    kept, revoked = create(env, "kept"), create(env, "revoked")
    result = invoke(["revoke", str(revoked["id"])], env)
    assert result.exit_code == 0, result.output
    assert f"revoked {revoked['id']}" in result.stdout
    assert owner_of(env, str(revoked["key"])) is None
    assert owner_of(env, str(kept["key"])) == kept["id"]
    assert [key["id"] for key in json.loads(invoke(["list", "--json"], env).stdout)] == [
        kept["id"]]


def test_revoke_of_an_unknown_id_is_a_clear_error(env: dict[str, str | None]) -> None:
    result = invoke(["revoke", "key_0000000000000000"], env)
    assert result.exit_code == EXIT_NOT_FOUND
    assert "no API key key_0000000000000000" in result.stderr
    assert "mpq gateway key list" in result.stderr
    assert "Traceback" not in result.output


def test_a_blank_name_is_refused(env: dict[str, str | None]) -> None:
    result = invoke(["create", "  "], env)
    assert result.exit_code == EXIT_USAGE
    assert "needs a name" in result.stderr
    assert json.loads(invoke(["list", "--json"], env).stdout) == []


@pytest.mark.parametrize("argv", [["create", "x"], ["list"], ["revoke", "key_1"]])
def test_no_redis_is_a_usage_error(argv: list[str]) -> None:
    result = invoke(argv, {"MPQ_REDIS_URL": None, "REDIS_URL": None})
    assert result.exit_code == EXIT_USAGE
    assert "no Redis" in result.stderr


# ---- the key `mpq up` hands out ------------------------------------------------------------


def test_up_makes_a_key_only_where_there_is_none(env: dict[str, str | None]) -> None:
    settings = Settings(redis_url=env["MPQ_REDIS_URL"], key_prefix=str(env["MPQ_KEY_PREFIX"]))
    made = gateway_key(settings, None)
    assert made is not None and owner_of(env, made) is not None
    assert [key["name"] for key in json.loads(invoke(["list", "--json"], env).stdout)] == [
        "mpq up"]
    # This shell's OPENAI_API_KEY is used when the gateway knows it ...
    assert gateway_key(settings, made) == made
    # ... and otherwise the keys there belong to whoever holds them: none is added.
    assert gateway_key(settings, None) is None
    assert gateway_key(settings, "sk-mpq-not-a-key-of-this-gateway") is None
    assert len(json.loads(invoke(["list", "--json"], env).stdout)) == 1
