"""`mpq worker` on several cores: one Celery worker process per core, started, watched and
stopped together by the command's own process.

Stopping: the first SIGTERM or SIGINT asks every child for Celery's warm shutdown (SIGTERM:
no new jobs, running ones finish); a second one, or SIGQUIT, asks for a cold one (SIGQUIT:
running jobs stop, their messages come back). The group waits for every child, then exits
0 if each one stopped cleanly. A child that ends while nobody asked for it stops the group:
the others get a warm shutdown and the command exits 1, so the service manager sees the
failure and restarts the whole command (no silent restarts at half capacity here).

Children run in their own process group, so a terminal's Ctrl-C reaches them once, through
this process, and on Linux they get SIGTERM if this process dies without stopping them.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from producer.local_stack import stop_processes

EXIT_CHILD_LOST = 1
POLL_S = 0.1
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
ABORT_TIMEOUT_S = 20.0  # the group failed to start: children still running by then are killed
PR_SET_PDEATHSIG = 1  # prctl(2)
CGROUP_V2_CPU_MAX = "cpu.max"
CGROUP_V1_CPU = Path("/sys/fs/cgroup/cpu")

log = logging.getLogger("mpq.worker")


# -- how many --------------------------------------------------------------------------


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity), capped by a cgroup CPU quota
    such as a container's `--cpus` or a Kubernetes CPU limit (rounded up)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)
    quota = cgroup_cpu_quota()
    return max(1, min(cores, quota) if quota else cores)


def cgroup_cpu_quota() -> int | None:
    """Cores allowed by this process's cgroup CPU quota (v2 `cpu.max`, else v1 CFS), rounded
    up; None when there is none."""
    for path in _cgroup_v2_cpu_max_files():
        if path.is_file():
            return cpu_max_cores(path.read_text())
    quota, period = CGROUP_V1_CPU / "cpu.cfs_quota_us", CGROUP_V1_CPU / "cpu.cfs_period_us"
    if quota.is_file() and period.is_file():
        return cpu_max_cores(f"{quota.read_text().strip()} {period.read_text().strip()}")
    return None


def cpu_max_cores(cpu_max: str) -> int | None:
    """`<quota> <period>` (cgroup v2 `cpu.max`; quota `max`, or -1 in v1, is no quota) as
    whole cores, rounded up."""
    quota, _, period = cpu_max.strip().partition(" ")
    if quota in {"max", "-1"} or not period:
        return None
    return max(1, math.ceil(int(quota) / int(period)))


def _cgroup_v2_cpu_max_files() -> list[Path]:
    """`cpu.max` of this process's own cgroup (the `0::` line), and of the mount's root (a
    container with its own cgroup namespace sees its cgroup there)."""
    root = Path("/sys/fs/cgroup")
    found = [root / CGROUP_V2_CPU_MAX]
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return found
    own = [line[3:] for line in lines if line.startswith("0::")]
    if own and own[0].strip("/"):
        found.insert(0, root / own[0].strip("/") / CGROUP_V2_CPU_MAX)
    return found


def child_name(name: str, index: int) -> str:
    """The node name of child `index` of a group named `name`: `mpq-7@%h` -> `mpq-7-1@%h`."""
    base, at, host = name.partition("@")
    return f"{base}-{index}{at}{host}"


# -- the group --------------------------------------------------------------------------


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    reported: bool = False  # its end has been logged


def run_group(commands: Sequence[tuple[str, list[str]]], loglevel: str = "INFO") -> int:
    """Run one child per (node name, argv) until they have all ended; the exit code."""
    logging.basicConfig(level=loglevel.upper(), stream=sys.stderr,
                        format="[%(asctime)s: %(levelname)s/mpq worker] %(message)s")
    received: list[int] = []

    def remember(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)  # acted on by the loop: a handler should not log

    previous = {sig: signal.signal(sig, remember) for sig in STOP_SIGNALS}
    children: list[Child] = []
    try:
        for name, argv in commands:
            if received:
                break
            children.append(Child(name.replace("%h", socket.gethostname()), _start(argv)))
        log.info("%d worker processes: %s", len(children),
                 ", ".join(f"{c.name} (pid {c.process.pid})" for c in children))
        return _Supervisor(children, received).run()
    finally:
        stop_processes([c.process for c in children], ABORT_TIMEOUT_S)  # only if left running
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _start(argv: list[str]) -> subprocess.Popen[bytes]:
    # preexec_fn: this process starts no thread of its own. S603: our own interpreter.
    return subprocess.Popen(argv, process_group=0,  # noqa: S603
                            preexec_fn=_die_with_parent(os.getpid()))  # noqa: PLW1509


def _die_with_parent(parent: int) -> Callable[[], None] | None:
    """In the child before exec (Linux): SIGTERM when `parent` dies, even by SIGKILL."""
    if not sys.platform.startswith("linux"):
        return None

    def arrange() -> None:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before prctl
            os.kill(os.getpid(), signal.SIGTERM)

    return arrange


class _Supervisor:
    def __init__(self, children: list[Child], received: list[int]) -> None:
        self.children = children
        self.received = received
        self.stopping: signal.Signals | None = None  # the signal sent to the children
        self.lost = False

    def run(self) -> int:
        while True:
            self._act_on_signals()
            self._watch_children()
            if all(c.reported for c in self.children):
                break
            time.sleep(POLL_S)
        clean = all(c.process.returncode == 0 for c in self.children)
        return EXIT_CHILD_LOST if self.lost or not clean else 0

    def _act_on_signals(self) -> None:
        while self.received:
            signum = self.received.pop(0)
            cold = signum == signal.SIGQUIT or self.stopping is not None
            how = signal.SIGQUIT if cold else signal.SIGTERM
            log.info("%s: %s shutdown of the worker processes%s",
                     signal.Signals(signum).name, "cold" if cold else "warm",
                     "" if cold else " (running jobs finish; again for a cold one)")
            self._signal_all(how)

    def _watch_children(self) -> None:
        for child in self.children:
            code = child.process.poll()
            if code is None or child.reported:
                continue
            child.reported = True
            if self.stopping is None:
                self.lost = True
                log.error("%s (pid %d) ended on its own (%s): stopping the other worker "
                          "processes; exit code %d", child.name, child.process.pid,
                          _describe(code), EXIT_CHILD_LOST)
                self._signal_all(signal.SIGTERM)
            else:
                level = logging.INFO if code == 0 else logging.WARNING
                log.log(level, "%s (pid %d) stopped (%s)", child.name, child.process.pid,
                        _describe(code))

    def _signal_all(self, how: signal.Signals) -> None:
        self.stopping = how
        for child in self.children:
            if child.process.poll() is None:
                child.process.send_signal(how)


def _describe(returncode: int) -> str:
    if returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    return f"exit code {returncode}"
