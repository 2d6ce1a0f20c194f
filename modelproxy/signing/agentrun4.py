"""Data-plane AGENTRUN4-HMAC-SHA256 request signing and verification (spec §5.3).

Signed: ``host`` (URL netloc), ``x-acs-date``, ``x-acs-content-sha256`` (always the literal
``UNSIGNED-PAYLOAD``; the body is never hashed), ``x-acs-security-token`` with STS, and any
extra headers the caller passes (typically ``content-type``).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from datetime import UTC, datetime
from urllib.parse import quote, unquote_plus, urlsplit

from modelproxy.signing.acs3 import auth_params, canonical_path, lower_headers

ALGORITHM = "AGENTRUN4-HMAC-SHA256"
AUTH_HEADER = "Agentrun-Authorization"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
PRODUCT = "agentrun"
TERMINATOR = "aliyun_v4_request"
KEY_PREFIX = "aliyun_v4"
DEFAULT_MAX_SKEW_S = 900.0

_REQUIRED_SIGNED = frozenset({"host", "x-acs-date", "x-acs-content-sha256"})
_NEVER_SIGNED = frozenset({"authorization", AUTH_HEADER.lower()})
_DATE_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def _utc(now: datetime) -> datetime:
    """Aware UTC datetime; a naive value is taken as UTC."""
    return (now if now.tzinfo is not None else now.replace(tzinfo=UTC)).astimezone(UTC)


def canonical_query(query: str) -> str:
    """Keep ``k=v`` pairs only, unquote_plus both, stable-sort by key, RFC 3986 re-encode."""
    pairs = [part.split("=", 1) for part in query.split("&") if "=" in part]
    decoded = sorted(((unquote_plus(k), unquote_plus(v)) for k, v in pairs), key=lambda p: p[0])
    return "&".join(f"{quote(k, safe='~')}={quote(v, safe='~')}" for k, v in decoded)


def canonical_request(method: str, url: str, signed: Mapping[str, str]) -> str:
    """Canonical request over ``signed`` (lower-case names -> values) for ``method url``."""
    parts = urlsplit(url)
    names = sorted(signed)
    canon_headers = "".join(f"{n}:{signed[n].strip()}\n" for n in names)
    return "\n".join(
        [
            method.upper(),
            canonical_path(parts.path),
            canonical_query(parts.query),
            canon_headers,
            ";".join(names),
            UNSIGNED_PAYLOAD,
        ]
    )


def signing_key(secret: str, date: str, region: str) -> bytes:
    """Derive kSigning from the secret, ``yyyymmdd`` date and region."""
    k_date = _hmac((KEY_PREFIX + secret).encode(), date)
    k_region = _hmac(k_date, region)
    k_product = _hmac(k_region, PRODUCT)
    return _hmac(k_product, TERMINATOR)


def signature(canonical: str, secret: str, date: str, region: str) -> str:
    """Hex signature of a canonical request."""
    to_sign = f"{ALGORITHM}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    return hmac.new(signing_key(secret, date, region), to_sign.encode(), hashlib.sha256).hexdigest()


def _signed_headers(
    url: str, extra: Mapping[str, str], acs_date: str, security_token: str | None
) -> dict[str, str]:
    signed = {k: v for k, v in lower_headers(extra).items() if k not in _NEVER_SIGNED}
    signed.setdefault("host", urlsplit(url).netloc)
    signed.update({"x-acs-date": acs_date, "x-acs-content-sha256": UNSIGNED_PAYLOAD})
    if security_token:
        signed["x-acs-security-token"] = security_token
    return signed


def sign_agentrun4(  # noqa: PLR0917 - positional order is the published signature
    method: str,
    url: str,
    headers: Mapping[str, str],
    access_key_id: str,
    access_key_secret: str,
    region: str,
    now: datetime,
    security_token: str | None = None,
) -> dict[str, str]:
    """Headers to add to the request: ``x-acs-date``, ``x-acs-content-sha256``, optional
    ``x-acs-security-token``, and ``Agentrun-Authorization``.

    ``headers`` are extra headers to sign (e.g. ``content-type``); ``host`` is taken from them
    if present, else from the ``url`` netloc.
    """
    when = _utc(now)
    date = when.strftime("%Y%m%d")
    signed = _signed_headers(url, headers, when.strftime(_DATE_FORMAT), security_token)
    sig = signature(canonical_request(method, url, signed), access_key_secret, date, region)
    out = {k: signed[k] for k in ("x-acs-date", "x-acs-content-sha256")}
    if security_token:
        out["x-acs-security-token"] = security_token
    out[AUTH_HEADER] = (
        f"{ALGORITHM} Credential={access_key_id}/{date}/{region}/{PRODUCT}/{TERMINATOR},"
        f"SignedHeaders={';'.join(sorted(signed))},Signature={sig}"
    )
    return out


def parse_authorization(value: str) -> tuple[str, str, str, list[str], str] | None:
    """Parse into ``(ak, yyyymmdd, region, signed_names, signature)`` or None if malformed."""
    fields = auth_params(value, ALGORITHM)
    if fields is None:
        return None
    scope = fields["Credential"].split("/")
    names = fields["SignedHeaders"].split(";")
    if len(scope) != 5 or scope[3:] != [PRODUCT, TERMINATOR] or not all(scope):
        return None
    if not all(names):
        return None
    return scope[0], scope[1], scope[2], names, fields["Signature"]


def _names_ok(names: list[str], lowered: Mapping[str, str]) -> bool:
    """Sorted, unique, lower-case, present, covering the required and any STS token header."""
    if names != sorted(set(names)) or any(n != n.lower() or n in _NEVER_SIGNED for n in names):
        return False
    if not _REQUIRED_SIGNED.issubset(names) or any(n not in lowered for n in names):
        return False
    return "x-acs-security-token" not in lowered or "x-acs-security-token" in names


def _date_ok(
    acs_date: str, scope_date: str, max_skew_s: float | None, now: datetime | None
) -> bool:
    try:
        when = datetime.strptime(acs_date.strip(), _DATE_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return False
    if when.strftime("%Y%m%d") != scope_date:
        return False
    if max_skew_s is None:
        return True
    current = _utc(now) if now is not None else datetime.now(UTC)
    return abs((current - when).total_seconds()) <= max_skew_s


def _verify(
    *,
    method: str,
    url: str,
    headers: Mapping[str, str],
    secrets: Mapping[str, str],
    region: str | None,
    max_skew_s: float | None,
    now: datetime | None,
) -> bool:
    lowered = lower_headers(headers)
    lowered.setdefault("host", urlsplit(url).netloc)
    parsed = parse_authorization(lowered.get(AUTH_HEADER.lower(), ""))
    if parsed is None:
        return False
    access_key_id, date, scope_region, names, claimed = parsed
    secret = secrets.get(access_key_id)
    if secret is None or (region is not None and scope_region != region):
        return False
    if not _names_ok(names, lowered) or lowered["x-acs-content-sha256"] != UNSIGNED_PAYLOAD:
        return False
    if not _date_ok(lowered["x-acs-date"], date, max_skew_s, now):
        return False
    canonical = canonical_request(method, url, {n: lowered[n] for n in names})
    return hmac.compare_digest(signature(canonical, secret, date, scope_region), claimed)


def verify_agentrun4(
    method: str,
    url: str,
    headers: Mapping[str, str],
    secrets: Mapping[str, str],
    region: str | None,
    *,
    max_skew_s: float | None = DEFAULT_MAX_SKEW_S,
    now: datetime | None = None,
) -> bool:
    """True if ``Agentrun-Authorization`` is valid; never raises.

    ``region=None`` accepts any region in the credential scope; ``max_skew_s=None`` skips the
    clock-skew check. A missing ``host`` header falls back to the URL netloc.
    """
    try:
        return _verify(
            method=method,
            url=url,
            headers=headers,
            secrets=secrets,
            region=region,
            max_skew_s=max_skew_s,
            now=now,
        )
    except (ValueError, TypeError):
        return False
