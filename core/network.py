"""Addresses: whether a bind address is this machine only."""

from __future__ import annotations

import ipaddress

LOCALHOST_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def is_loopback(address: str) -> bool:
    """`127.0.0.0/8`, `::1` and localhost names; '' (every interface) is not."""
    if address.lower() in LOCALHOST_NAMES:
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False
