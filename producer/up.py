"""`mpq up`: the local stack in the foreground until Ctrl-C."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import threading
from pathlib import Path

from core.redaction import mask_url
from producer.cli_common import console
from producer.local_stack import LocalStack, StackOptions, local_stack

ENV_FILE = "mpq.env"


def write_env_file(stack: LocalStack) -> Path:
    """What another shell needs to use the stack, secrets included, in a file only this
    account can read (mode 0600, in the stack's private directory): never on screen."""
    values = {"MPQ_REDIS_URL": stack.redis_url}
    if stack.modelproxy_url:
        values |= {"AGENTRUN_CONTROL_ENDPOINT": stack.modelproxy_url,
                   "AGENTRUN_DATA_ENDPOINT": stack.modelproxy_url}
    if stack.flower_url:
        values |= {"MPQ_FLOWER_USER": stack.flower_user,
                   "MPQ_FLOWER_PASSWORD": stack.flower_password}
    path = stack.log_dir / ENV_FILE
    path.touch(mode=0o600)
    path.write_text("".join(f"export {name}={shlex.quote(value)}\n"
                            for name, value in values.items()), encoding="utf-8")
    return path


def run_up(*, slots: int, with_flower: bool) -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    options = StackOptions(redis_url=os.environ.get("MPQ_REDIS_URL") or None, slots=slots,
                           with_flower=with_flower)
    with local_stack(options) as stack:
        env_file = write_env_file(stack)
        console.print(f"[bold]Redis[/]      {mask_url(stack.redis_url)}")
        console.print(f"[bold]ModelProxy[/] {stack.modelproxy_url or 'AgentRun (configured)'}")
        if stack.flower_url:
            console.print(f"[bold]Flower[/]     {stack.flower_url}  user [bold]"
                          f"{stack.flower_user}[/] (password in {env_file})")
        console.print(f"[bold]logs[/]       {stack.log_dir}")
        console.print(f"Settings, secrets included, are in {env_file} (mode 0600). "
                      "In another shell:")
        console.print(f"  . {shlex.quote(str(env_file))}")
        console.print("  mpq proxy create my-proxy --model my-model")
        console.print("  mpq chat my-proxy 'hello' --stream")
        console.print("Ctrl-C stops everything.")
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
    console.print("stopped")
