"""What the machine's processes show of themselves, for tests that look for secrets there."""

from __future__ import annotations

from pathlib import Path


def command_lines() -> dict[str, bytes]:
    """Every running process's command line (its NUL-separated argv), by pid."""
    found: dict[str, bytes] = {}
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            found[cmdline.parent.name] = cmdline.read_bytes()
        except OSError:  # the process has gone
            continue
    return found
