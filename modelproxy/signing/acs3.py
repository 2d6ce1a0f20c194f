"""Control-plane ACS3-HMAC-SHA256 request signing and verification (spec §4.1, Appendix B).

Which headers are signed (:func:`signed_header_names`): ``host``, ``accept``, ``user-agent``,
every ``x-acs-*`` header, and ``content-type`` only when the body is non-empty. Headers a
transport adds on its own (``accept-encoding``, ``content-length``, a default ``content-type``
on a bodiless request) are not signed; this reproduces the official SDK's captured requests.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets as _secrets
from collections.abc import Mapping
from datetime import UTC, datetime
from urllib.parse import quote, unquote_plus, unquote_to_bytes

ALGORITHM = "ACS3-HMAC-SHA256"
API_VERSION = "2025-09-10"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

_ALWAYS_SIGNED = frozenset({"host", "accept", "user-agent"})
_REQUIRED_SIGNED = frozenset({"host", "x-acs-date", "x-acs-content-sha256"})
_ACS_PREFIX = "x-acs-"


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def percent_encode(value: str) -> str:
    """RFC 3986 encoding: everything except ``A-Za-z0-9-_.~`` becomes ``%XX``."""
    return quote(value, safe="~")


def canonical_path(path: str) -> str:
    """Canonical URI: each ``/``-separated segment decoded, then RFC 3986-encoded.

    Signer and verifier both build it here, so the signature does not depend on how the
    path was escaped on the way (``*`` or ``%2A``, ``%2a``, ``'`` or ``%27`` all sign the
    same), while an escaped ``/`` (``%2F``) stays distinct from a separator."""
    segments = path.split("/")
    return "/".join(quote(unquote_to_bytes(s), safe="~") for s in segments) or "/"


def canonical_query(query: str) -> str:
    """Canonical query: decode raw pairs, RFC 3986-encode, sort, join as ``k=v`` with ``&``."""
    pairs: list[tuple[str, str]] = []
    for part in query.split("&"):
        if not part:
            continue
        key, _, value = part.partition("=")
        pairs.append((percent_encode(unquote_plus(key)), percent_encode(unquote_plus(value))))
    return "&".join(f"{k}={v}" for k, v in sorted(pairs))


def lower_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Lower-case header names; values of names that collide are joined with ``,``."""
    out: dict[str, str] = {}
    for name, value in headers.items():
        key = name.lower()
        out[key] = f"{out[key]},{value}" if key in out else value
    return out


def split_path_query(path_with_query: str) -> tuple[str, str]:
    """Split ``/path?query`` into ``("/path", "query")``; an empty path becomes ``/``."""
    path, _, query = path_with_query.partition("?")
    return path or "/", query


def canonical_request(
    method: str, path: str, query: str, headers: Mapping[str, str], payload_hash: str
) -> str:
    """ACS3 canonical request over every header in ``headers`` (names lower-cased, sorted)."""
    lowered = lower_headers(headers)
    names = sorted(lowered)
    canon_headers = "".join(f"{n}:{lowered[n].strip()}\n" for n in names)
    return "\n".join(
        [
            method.upper(),
            canonical_path(path),
            canonical_query(query),
            canon_headers,
            ";".join(names),
            payload_hash,
        ]
    )


def string_to_sign(canonical: str) -> str:
    """``ACS3-HMAC-SHA256\\n`` + hex SHA-256 of the canonical request."""
    return f"{ALGORITHM}\n{sha256_hex(canonical.encode())}"


def signature(canonical: str, access_key_secret: str) -> str:
    """Hex HMAC-SHA256 of the string to sign, keyed with the secret."""
    key = access_key_secret.encode()
    return hmac.new(key, string_to_sign(canonical).encode(), hashlib.sha256).hexdigest()


def signed_header_names(headers: Mapping[str, str], body: bytes) -> list[str]:
    """Sorted lower-case names that ACS3 signs (see module docstring for the rule)."""
    names = set(lower_headers(headers))
    chosen = {n for n in names if n in _ALWAYS_SIGNED or n.startswith(_ACS_PREFIX)}
    if body and "content-type" in names:
        chosen.add("content-type")
    return sorted(chosen)


def sign_acs3(  # noqa: PLR0917 - positional order is the published signature
    method: str,
    path_with_query: str,
    headers: Mapping[str, str],
    body: bytes,
    access_key_id: str,
    access_key_secret: str,
) -> str:
    """Return the full ``Authorization`` header value for the request."""
    lowered = lower_headers(headers)
    names = signed_header_names(lowered, body)
    path, query = split_path_query(path_with_query)
    canonical = canonical_request(
        method, path, query, {n: lowered[n] for n in names}, sha256_hex(body)
    )
    sig = signature(canonical, access_key_secret)
    return f"{ALGORITHM} Credential={access_key_id},SignedHeaders={';'.join(names)},Signature={sig}"


def auth_params(value: str, algorithm: str) -> dict[str, str] | None:
    """Split ``ALGO Credential=..,SignedHeaders=..,Signature=..`` into its three fields."""
    scheme, _, rest = value.strip().partition(" ")
    if scheme != algorithm:
        return None
    fields: dict[str, str] = {}
    for item in rest.split(","):
        key, sep, val = item.strip().partition("=")
        if not sep or not val or key in fields:
            return None
        fields[key] = val
    return fields if set(fields) == {"Credential", "SignedHeaders", "Signature"} else None


def parse_authorization(value: str) -> tuple[str, list[str], str] | None:
    """Parse an ACS3 ``Authorization`` value into ``(ak, signed_names, signature)``."""
    fields = auth_params(value, ALGORITHM)
    if fields is None:
        return None
    names = fields["SignedHeaders"].split(";")
    if not all(names):
        return None
    return fields["Credential"], names, fields["Signature"]


def _signed_names_ok(names: list[str], lowered: Mapping[str, str]) -> bool:
    """Signed names must be sorted, unique, lower-case, present, and cover the required set."""
    if names != sorted(set(names)) or any(n != n.lower() for n in names):
        return False
    if "authorization" in names or not _REQUIRED_SIGNED.issubset(names):
        return False
    if any(n not in lowered for n in names):
        return False
    return all(n in names for n in lowered if n.startswith(_ACS_PREFIX))


def _verify(
    method: str,
    path_with_query: str,
    headers: Mapping[str, str],
    body: bytes,
    secrets: Mapping[str, str],
) -> bool:
    lowered = lower_headers(headers)
    parsed = parse_authorization(lowered.get("authorization", ""))
    if parsed is None:
        return False
    access_key_id, names, claimed = parsed
    secret = secrets.get(access_key_id)
    if secret is None or not _signed_names_ok(names, lowered):
        return False
    body_hash = sha256_hex(body)
    if not hmac.compare_digest(lowered["x-acs-content-sha256"].strip(), body_hash):
        return False
    path, query = split_path_query(path_with_query)
    canonical = canonical_request(method, path, query, {n: lowered[n] for n in names}, body_hash)
    return hmac.compare_digest(signature(canonical, secret), claimed)


def verify_acs3(
    method: str,
    path_with_query: str,
    headers: Mapping[str, str],
    body: bytes,
    secrets: Mapping[str, str],
) -> bool:
    """True if the request's ACS3 ``Authorization`` is valid for a known key; never raises.

    The header's own SignedHeaders list is used, but it must cover ``host``, ``x-acs-date``,
    ``x-acs-content-sha256`` and every ``x-acs-*`` header present, and the body must match
    ``x-acs-content-sha256``.
    """
    try:
        return _verify(method, path_with_query, headers, body, secrets)
    except (ValueError, TypeError):
        return False


def format_acs_date(now: datetime) -> str:
    """UTC ``YYYY-MM-DDTHH:MM:SSZ``; a naive datetime is taken as UTC."""
    aware = now if now.tzinfo is not None else now.replace(tzinfo=UTC)
    return aware.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def acs3_headers(
    action: str | None,
    body: bytes,
    host: str,
    *,
    now: datetime | None = None,
    nonce: str | None = None,
    security_token: str | None = None,
    access_key_id: str | None = None,
) -> dict[str, str]:
    """``host`` plus the ``x-acs-*`` headers a control-plane request needs before signing.

    With ``security_token`` (STS), ``x-acs-security-token`` and ``x-acs-accesskey-id`` are
    added, so ``access_key_id`` is then required.
    """
    headers = {
        "host": host,
        "x-acs-version": API_VERSION,
        "x-acs-date": format_acs_date(now or datetime.now(UTC)),
        "x-acs-signature-nonce": nonce or _secrets.token_hex(16),
        "x-acs-content-sha256": sha256_hex(body),
    }
    if action:
        headers["x-acs-action"] = action
    if security_token:
        if not access_key_id:
            raise ValueError("access_key_id is required with a security token")
        headers["x-acs-security-token"] = security_token
        headers["x-acs-accesskey-id"] = access_key_id
    return headers
