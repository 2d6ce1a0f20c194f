"""Safe text for a terminal.

Text from users and upstreams (custom_ids, proxy names, error messages, model replies) is
data, not markup and not terminal commands: `escape_markup` makes it print as itself inside
rich markup, `strip_controls` removes what a terminal would act on (escape sequences such as
``ESC[2J`` or OSC 8 hyperlinks, C0/C1 controls). `safe_json` is JSON with nothing to act on.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

# Whole escape sequences first (CSI, OSC/DCS/SOS/PM/APC strings up to their terminator,
# two-byte ESC x), 7-bit and 8-bit forms, so their parameters do not linger as text; then
# any lone C0 or C1 control but newline and tab. \r goes too: it can overwrite a line.
_CONTROLS = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]?"
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b[ -/]*[0-~]?"
    r"|[\x00-\x08\x0b-\x1f\x7f-\x9f]"
)
# What JSON may leave unescaped that a terminal acts on or stdout cannot encode.
_JSON_UNSAFE = re.compile(r"[\x7f-\x9f\ud800-\udfff]")
# Lone surrogates (JSON's "\ud800" makes them): no encoding has bytes for them.
_SURROGATES = re.compile(r"[\ud800-\udfff]")
# A "[" with the backslashes before it, and what rich takes for a tag after a "["
# (rich.markup.RE_TAGS).
_BRACKET = re.compile(r"(\\*)\[")
_TAG_BODY = re.compile(r"[a-z#/@][^\[]*?\]")


def strip_controls(text: str) -> str:
    """`text` without escape sequences and control characters (newline and tab stay)."""
    return _CONTROLS.sub("", text)


def escape_markup(value: object) -> str:
    """`value` as text to embed in rich markup, printed as itself with controls stripped.
    Place it where no markup tag follows it directly (backslashes at its end would escape
    that tag)."""
    text = _SURROGATES.sub("\ufffd", strip_controls(str(value)))
    return _BRACKET.sub(lambda match: _escape_bracket(text, match), text)


def _escape_bracket(text: str, match: re.Match[str]) -> str:
    # rich reads "\\[" as "[" everywhere, and halves the backslashes before a tag: one
    # more backslash keeps a plain "[" as typed, doubling them and one more a tag's.
    backslashes = len(match.group(1))
    tag = _TAG_BODY.match(text, match.end())
    return "\\" * (2 * backslashes + 1 if tag else backslashes + 1) + "["


def safe_json(value: Any) -> str:
    """Indented JSON whose strings cannot drive a terminal: C1 controls and lone
    surrogates are escaped (json.dumps escapes C0 itself)."""
    text = json.dumps(value, indent=2, ensure_ascii=False, default=str)
    return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def write_text(text: str, *, raw: bool = False, end: str = "\n") -> None:
    """Model text to stdout as is (no markup, no wrapping): with `raw` every character,
    else without controls. A lone surrogate, which has no bytes, becomes U+FFFD."""
    shown = text if raw else strip_controls(text)
    sys.stdout.write(_SURROGATES.sub("\ufffd", shown) + end)
    sys.stdout.flush()
