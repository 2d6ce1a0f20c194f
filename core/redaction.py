"""Secrets out of what people see: URLs with their user-info masked."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

MASK = "***"


def mask_url(url: str) -> str:
    """``url`` with the password of its user-info (and a user name, which Redis ACLs and
    AMQP treat as half a credential) replaced by ``***``; other parts are kept."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK  # not a URL we can read: show nothing of it
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    userinfo = MASK if parts.password is None else f"{MASK}:{MASK}"
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{host}"))
