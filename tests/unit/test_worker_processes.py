"""How many worker processes `mpq worker` runs, and what their nodes are called."""

from __future__ import annotations

import os

import pytest

from producer.worker_group import child_name, cpu_max_cores, usable_cores


@pytest.mark.parametrize(("cpu_max", "cores"), [
    ("max 100000\n", None), ("-1 100000", None),  # no quota (v2, v1)
    ("100000 100000\n", 1), ("150000 100000", 2), ("50000 100000", 1), ("400000 100000", 4),
])
def test_a_cgroup_quota_is_counted_in_whole_cores_rounded_up(cpu_max: str,
                                                             cores: int | None) -> None:
    assert cpu_max_cores(cpu_max) == cores


def test_usable_cores_are_at_most_the_affinity() -> None:
    assert 1 <= usable_cores() <= len(os.sched_getaffinity(0))


@pytest.mark.parametrize(("name", "child"), [
    ("mpq-7@%h", "mpq-7-2@%h"), ("inference@box", "inference-2@box"), ("plain", "plain-2"),
])
def test_each_child_is_named_after_the_group(name: str, child: str) -> None:
    assert child_name(name, 2) == child
