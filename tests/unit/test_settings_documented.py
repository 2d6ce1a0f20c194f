"""Every setting is in the README's settings table."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.settings import Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


@pytest.mark.parametrize("name", sorted(Settings.model_fields))
def test_setting_is_documented(name: str) -> None:
    assert f"`MPQ_{name.upper()}`" in README


def test_prefix_must_end_with_colon() -> None:
    with pytest.raises(ValueError, match="must end with"):
        Settings(key_prefix="mpq")
