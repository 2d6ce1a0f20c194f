"""`mpq up`: the local stack in the foreground until Ctrl-C."""

from __future__ import annotations

import contextlib
import os
import signal
import threading

from producer.cli_common import console
from producer.local_stack import StackOptions, local_stack


def run_up(*, slots: int, with_flower: bool) -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    options = StackOptions(redis_url=os.environ.get("MPQ_REDIS_URL") or None, slots=slots,
                           with_flower=with_flower)
    with local_stack(options) as stack:
        console.print(f"[bold]Redis[/]      {stack.redis_url}")
        console.print(f"[bold]ModelProxy[/] {stack.modelproxy_url or 'AgentRun (configured)'}")
        if stack.flower_url:
            console.print(f"[bold]Flower[/]     {stack.flower_url}  user [bold]"
                          f"{stack.flower_user}[/] password [bold]{stack.flower_password}[/]")
        console.print(f"[bold]logs[/]       {stack.log_dir}")
        console.print("In another shell:")
        console.print(f"  export MPQ_REDIS_URL={stack.redis_url}")
        console.print("  mpq proxy create my-proxy --model my-model")
        console.print("  mpq chat my-proxy 'hello' --stream")
        console.print("Ctrl-C stops everything.")
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
    console.print("stopped")
