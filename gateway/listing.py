"""OpenAI's list object, the answer of every paged `GET` (`/v1/files`, `/v1/batches`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def list_object(data: Sequence[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """`first_id`/`last_id` are the page's ends (None when empty); a client asks for the next
    page with `after=last_id` while `has_more`."""
    return {"object": "list", "data": list(data),
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": has_more}
