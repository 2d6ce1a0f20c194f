"""pyproject.toml and constraints.txt agree: the libraries whose internals we rely on have an
upper bound, every dependency is pinned in the lock, every pin is one pyproject allows, and the
Makefile and the Dockerfile install with the lock."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
CONSTRAINTS = ROOT / "constraints.txt"

# We subclass or read their private parts: a new minor release may break us silently.
INTERNALS_RELIED_ON = ("celery", "kombu", "redis", "httpx", "flower")
UPPER_BOUND_OPERATORS = {"<", "<=", "==", "~=", "==="}


def requirements() -> list[Requirement]:
    """Every requirement of the project and of its extras that applies on this Python."""
    found = [Requirement(line) for line in PROJECT["dependencies"]]
    for extra in PROJECT.get("optional-dependencies", {}).values():
        found += [Requirement(line) for line in extra]
    return [r for r in found if r.marker is None or r.marker.evaluate({"extra": ""})]


def pins() -> dict[str, Version]:
    """constraints.txt as {canonical name: version}; every line must be `name==version`."""
    pinned: dict[str, Version] = {}
    for number, raw in enumerate(CONSTRAINTS.read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line)
        assert match, f"constraints.txt:{number}: not an exact pin: {raw!r}"
        name = canonicalize_name(match[1])
        assert name not in pinned, f"constraints.txt:{number}: {name} pinned twice"
        pinned[name] = Version(match[2])
    return pinned


PINS = pins()
BY_NAME: dict[str, Requirement] = {canonicalize_name(r.name): r for r in requirements()}


@pytest.mark.parametrize("name", INTERNALS_RELIED_ON)
def test_internals_we_rely_on_have_an_upper_bound(name: str) -> None:
    requirement = BY_NAME.get(name)
    assert requirement is not None, f"{name} is not a direct dependency in pyproject.toml"
    operators = {spec.operator for spec in requirement.specifier}
    assert operators & UPPER_BOUND_OPERATORS, f"{requirement}: no upper bound"


@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_every_dependency_is_pinned_to_a_version_pyproject_allows(name: str) -> None:
    requirement = BY_NAME[name]
    assert name in PINS, f"{requirement} is missing from constraints.txt (run `make lock`)"
    assert requirement.specifier.contains(PINS[name], prereleases=True), (
        f"constraints.txt pins {name}=={PINS[name]}, outside {requirement} in pyproject.toml")


def test_the_lock_leaves_out_the_project_itself() -> None:
    assert canonicalize_name(PROJECT["name"]) not in PINS


def test_make_installs_with_the_lock() -> None:
    makefile = (ROOT / "Makefile").read_text()
    stamp_rule = re.search(r"^\$\(STAMP\):(.*)$", makefile, re.MULTILINE)
    assert stamp_rule, "no $(STAMP) rule in the Makefile"
    assert "constraints.txt" in stamp_rule[1].split(), "the install stamp ignores constraints.txt"
    assert "pip install --quiet -c constraints.txt -e '.[dev]'" in makefile
    assert re.search(r"^lock:", makefile, re.MULTILINE), "no `make lock`"


def test_the_image_installs_with_the_lock_and_every_package() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^COPY .*\bconstraints\.txt\b", dockerfile, re.MULTILINE)
    assert re.search(r"^RUN pip install .*-c constraints\.txt", dockerfile, re.MULTILINE)
    copied = set(re.findall(r"^COPY (\S+) \./\1/?$", dockerfile, re.MULTILINE))
    patterns = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {d.name for d in ROOT.iterdir()
                if d.is_dir() and any(d.glob("*.py"))
                and any(fnmatch.fnmatchcase(d.name, p) for p in patterns)}
    assert packages <= copied, f"the Dockerfile does not copy {sorted(packages - copied)}"
