"""Request signing: control-plane ACS3-HMAC-SHA256 and data-plane AGENTRUN4-HMAC-SHA256."""

from modelproxy.signing.acs3 import (
    API_VERSION,
    acs3_headers,
    canonical_request,
    sign_acs3,
    signed_header_names,
    verify_acs3,
)
from modelproxy.signing.agentrun4 import AUTH_HEADER, sign_agentrun4, verify_agentrun4

__all__ = [
    "API_VERSION",
    "AUTH_HEADER",
    "acs3_headers",
    "canonical_request",
    "sign_acs3",
    "sign_agentrun4",
    "signed_header_names",
    "verify_acs3",
    "verify_agentrun4",
]
