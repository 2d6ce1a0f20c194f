"""A batch's completion webhook, an mpq extension: `metadata.webhook_url` is POSTed the batch
object (JSON) once the batch has ended, whatever the end.

Only hosts on the allow-list (`gateway_webhook_hosts`, comma-separated) may be called, so an
API key cannot make the gateway reach addresses of its own network; the list is checked when
the batch is made and again before the call, and redirects are not followed. A failed call
is retried with backoff (timeouts, connection errors, 408, 409, 429 and 5xx), like OpenAI's
clients retry theirs.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

logger = logging.getLogger(__name__)

ATTEMPTS = 5
TIMEOUT_S = 10.0
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 8.0
SCHEMES = ("http", "https")
# Sent with every call, so a receiver can tell a repeated call (a gateway process that died
# between the call and noting it) from a new one.
ID_HEADER = "X-Mpq-Batch-Id"
_RETRY_STATUSES = frozenset({408, 409, 429})

Sleep = Callable[[float], Awaitable[None]]


def allowed_hosts(setting: str) -> frozenset[str]:
    return frozenset(host.strip().lower().strip("[]") for host in setting.split(",")
                     if host.strip())


def check_url(url: str, setting: str) -> str:
    """`url` if the webhook may call it; ValueError saying why not."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise ValueError(f"webhook_url is not a valid URL: {exc}") from None
    if parsed.scheme not in SCHEMES or not parsed.host:
        raise ValueError("webhook_url must be an http or https URL with a host")
    hosts = allowed_hosts(setting)
    if parsed.host.lower() not in hosts:
        allowed = ", ".join(sorted(hosts)) or "none (gateway_webhook_hosts is empty)"
        raise ValueError(f"webhook_url's host {parsed.host!r} is not allowed; allowed hosts: "
                         f"{allowed}")
    return url


def should_retry(status: int) -> bool:
    return status in _RETRY_STATUSES or status >= 500


def backoff_s(retry: int) -> float:
    """The wait before retry number `retry` (0 first): doubling, capped, with jitter."""
    delay_s: float = min(BACKOFF_BASE_S * 2.0 ** retry, BACKOFF_MAX_S)
    return delay_s * random.uniform(0.75, 1.0)


async def deliver(url: str, payload: dict[str, Any], *, attempts: int = ATTEMPTS,
                  sleep: Sleep = asyncio.sleep) -> bool:
    """POST `payload` until the receiver answers 2xx (True) or the attempts run out or the
    answer is one not worth retrying (False)."""
    headers = {ID_HEADER: str(payload.get("id", ""))}
    async with httpx.AsyncClient(timeout=TIMEOUT_S, follow_redirects=False) as client:
        for attempt in range(attempts):
            if attempt:
                await sleep(backoff_s(attempt - 1))
            try:
                reply = await client.post(url, json=payload, headers=headers)
            except httpx.HTTPError as exc:
                logger.info("webhook of %s: attempt %d: %s", payload.get("id"), attempt + 1,
                            type(exc).__name__)
                continue
            if reply.is_success:
                return True
            logger.info("webhook of %s: attempt %d: HTTP %d", payload.get("id"), attempt + 1,
                        reply.status_code)
            if not should_retry(reply.status_code):
                return False
    return False
