"""`mpq up`: the local stack in the foreground until Ctrl-C."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import threading
from pathlib import Path

from core.api_keys import ApiKeys
from core.redaction import mask_url
from core.settings import Settings
from producer.cli_common import console
from producer.gateway_keys import with_api_keys
from producer.local_stack import LocalStack, StackOptions, local_stack
from producer.terminal import escape_markup

ENV_FILE = "mpq.env"
KEY_NAME = "mpq up"
# What the official OpenAI clients (and the libraries built on them) read.
OPENAI_KEY_ENV = "OPENAI_API_KEY"
OPENAI_URL_ENV = "OPENAI_BASE_URL"


def gateway_key(settings: Settings, offered: str | None) -> str | None:
    """The key `mpq up` hands out: `offered` (this shell's OPENAI_API_KEY) if the gateway
    knows it, else a new key while the gateway has none; None when it has keys already
    (a Redis of your own), which their holders keep using."""

    async def pick(keys: ApiKeys) -> str | None:
        if offered and await keys.owner(offered):
            return offered
        if await keys.any():
            return None
        return (await keys.create(KEY_NAME))[1]

    return with_api_keys(settings, pick)


def write_env_file(stack: LocalStack, api_key: str | None) -> Path:
    """What another shell needs to use the stack, secrets included, in a file only this
    account can read (mode 0600, in the stack's private directory). The gateway's key is
    the only secret also printed: it is what a user pastes into a client."""
    values = {"MPQ_REDIS_URL": stack.redis_url}
    if stack.modelproxy_url:
        values |= {"AGENTRUN_CONTROL_ENDPOINT": stack.modelproxy_url,
                   "AGENTRUN_DATA_ENDPOINT": stack.modelproxy_url}
    if stack.flower_url:
        values |= {"MPQ_FLOWER_USER": stack.flower_user,
                   "MPQ_FLOWER_PASSWORD": stack.flower_password}
    if stack.gateway_url:
        values[OPENAI_URL_ENV] = stack.gateway_url
        if api_key:
            values[OPENAI_KEY_ENV] = api_key
    path = stack.log_dir / ENV_FILE
    path.touch(mode=0o600)
    path.write_text("".join(f"export {name}={shlex.quote(value)}\n"
                            for name, value in values.items()), encoding="utf-8")
    return path


def run_up(*, slots: int, with_flower: bool, with_gateway: bool) -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    options = StackOptions(redis_url=os.environ.get("MPQ_REDIS_URL") or None, slots=slots,
                           with_flower=with_flower, with_gateway=with_gateway)
    with local_stack(options) as stack:
        offered = os.environ.get(OPENAI_KEY_ENV)
        api_key = None
        if stack.gateway_url:
            api_key = gateway_key(Settings(redis_url=stack.redis_url), offered)
        env_file = write_env_file(stack, api_key)
        console.print(f"[bold]Redis[/]      {mask_url(stack.redis_url)}")
        console.print(f"[bold]ModelProxy[/] {stack.modelproxy_url or 'AgentRun (configured)'}")
        if stack.flower_url:
            console.print(f"[bold]Flower[/]     {stack.flower_url}  user [bold]"
                          f"{stack.flower_user}[/] (password in {env_file})")
        if stack.gateway_url:
            _print_gateway(stack.gateway_url, api_key, reused=api_key == offered)
        console.print(f"[bold]logs[/]       {stack.log_dir}")
        console.print(f"Settings, secrets included, are in {env_file} (mode 0600). "
                      "In another shell:")
        console.print(f"  . {shlex.quote(str(env_file))}")
        console.print("  mpq proxy create my-proxy --model my-model")
        console.print("  mpq chat my-proxy 'hello' --stream")
        if api_key:
            console.print('  curl "$OPENAI_BASE_URL/models" -H "Authorization: Bearer '
                          '$OPENAI_API_KEY"', markup=False, highlight=False)
        console.print("Ctrl-C stops everything.")
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
    console.print("stopped")


def _print_gateway(base_url: str, api_key: str | None, *, reused: bool) -> None:
    console.print(f"[bold]Gateway[/]    {base_url}  (OpenAI API)", highlight=False)
    if api_key is None:
        console.print("[bold]API key[/]    yours: this Redis has gateway keys already "
                      "(`mpq gateway key create NAME` makes another)", highlight=False)
    elif reused:
        console.print(f"[bold]API key[/]    this shell's {OPENAI_KEY_ENV} "
                      f"(…{escape_markup(api_key[-4:])})", highlight=False)
    else:  # made now: shown this once, it is what a client needs
        console.print(f"[bold]API key[/]    {escape_markup(api_key)}", highlight=False)
