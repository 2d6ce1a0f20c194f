"""Connection settings for both planes, with the official SDK's environment names.

Every field defaults to *unset* (None). Merging overlays only fields that are set, and
environment variables are read when a value is asked for, so a later plain `Config()` never
clobbers an earlier explicit value (spec Q3).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

from modelproxy.errors import ConfigError

DEFAULT_REGION = "cn-hangzhou"
DEFAULT_TIMEOUT_S = 600.0
DEFAULT_CONNECT_TIMEOUT_S = 10.0

_ENV: dict[str, tuple[str, ...]] = {
    "access_key_id": ("AGENTRUN_ACCESS_KEY_ID", "ALIBABA_CLOUD_ACCESS_KEY_ID"),
    "access_key_secret": ("AGENTRUN_ACCESS_KEY_SECRET", "ALIBABA_CLOUD_ACCESS_KEY_SECRET"),
    "security_token": ("AGENTRUN_SECURITY_TOKEN", "ALIBABA_CLOUD_SECURITY_TOKEN"),
    "account_id": ("AGENTRUN_ACCOUNT_ID", "FC_ACCOUNT_ID"),
    "region_id": ("AGENTRUN_REGION", "FC_REGION"),
    "control_endpoint": ("AGENTRUN_CONTROL_ENDPOINT",),
    "data_endpoint": ("AGENTRUN_DATA_ENDPOINT",),
}

# The real service is HTTPS-only; plain HTTP is for local services (the emulator, a
# compose network), never for Alibaba Cloud hosts, where it would send credentials in clear.
CLOUD_DOMAIN = ".aliyuncs.com"


class Config(BaseModel):
    """Where and how to reach ModelProxy. Unset fields fall back to the environment."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    access_key_id: str | None = None
    access_key_secret: str | None = Field(default=None, repr=False)
    security_token: str | None = Field(default=None, repr=False)
    account_id: str | None = None
    region_id: str | None = None
    control_endpoint: str | None = None
    data_endpoint: str | None = None
    # Inbound API key for proxies with a `credentialName` (sent as a bearer token).
    api_key: str | None = Field(default=None, repr=False)
    api_key_header: str | None = None
    timeout: float | None = None
    connect_timeout: float | None = None
    # False, True, or a CA bundle path (the emulator's self-signed certificate).
    verify_tls: bool | str | None = None
    headers: dict[str, str] | None = None

    @classmethod
    def with_configs(cls, *configs: Config | None) -> Config:
        """Overlay configs left to right; later set values win, headers merge by key."""
        merged: dict[str, object] = {}
        headers: dict[str, str] = {}
        for config in configs:
            if config is None:
                continue
            for name, value in config.model_dump(exclude_none=True).items():
                if name == "headers":
                    headers.update(value)
                else:
                    merged[name] = value
        if headers:
            merged["headers"] = headers
        return cls.model_validate(merged)

    def _resolve(self, name: str, env: Mapping[str, str] | None = None) -> str:
        value = getattr(self, name)
        if value is not None:
            return str(value)
        source = os.environ if env is None else env
        for var in _ENV.get(name, ()):
            if source.get(var):
                return source[var]
        return ""

    def get_access_key_id(self) -> str:
        return self._resolve("access_key_id")

    def get_access_key_secret(self) -> str:
        return self._resolve("access_key_secret")

    def get_security_token(self) -> str | None:
        return self._resolve("security_token") or None

    def get_region_id(self) -> str:
        return self._resolve("region_id") or DEFAULT_REGION

    def get_account_id(self) -> str:
        account = self._resolve("account_id")
        if not account:
            raise ConfigError(
                "no account id: set AGENTRUN_ACCOUNT_ID (or AGENTRUN_DATA_ENDPOINT)"
            )
        return account

    def control_endpoint_setting(self) -> str:
        """The configured control endpoint, or "" when the default would be used."""
        return self._resolve("control_endpoint")

    def has_credentials(self) -> bool:
        return bool(self.get_access_key_id() and self.get_access_key_secret())

    def get_control_endpoint(self) -> str:
        endpoint = self._resolve("control_endpoint")
        return _normalize(endpoint or f"https://agentrun.{self.get_region_id()}.aliyuncs.com")

    def get_data_endpoint(self) -> str:
        """The data-plane base, with the `-ram` host when signing with AK/SK (spec §5.1)."""
        endpoint = self._resolve("data_endpoint")
        if not endpoint:
            region = self.get_region_id()
            endpoint = f"https://{self.get_account_id()}.agentrun-data.{region}.aliyuncs.com"
        endpoint = _normalize(endpoint)
        return _ram_host(endpoint) if self.has_credentials() else endpoint

    def get_timeout_s(self) -> float:
        return DEFAULT_TIMEOUT_S if self.timeout is None else self.timeout

    def get_connect_timeout_s(self) -> float:
        return DEFAULT_CONNECT_TIMEOUT_S if self.connect_timeout is None else self.connect_timeout

    def get_verify_tls(self) -> bool | str:
        return True if self.verify_tls is None else self.verify_tls

    def get_headers(self) -> dict[str, str]:
        return dict(self.headers or {})

    def get_api_key_header(self) -> str:
        return self.api_key_header or "Authorization"


def _normalize(endpoint: str) -> str:
    """Keep the scheme (plain HTTP only off Alibaba Cloud hosts) and drop a trailing /."""
    if "://" not in endpoint:
        endpoint = f"https://{endpoint}"
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"bad endpoint {endpoint!r}: expected http(s)://host[:port]")
    if parts.scheme == "http" and parts.hostname.endswith(CLOUD_DOMAIN):
        raise ConfigError(f"the AgentRun service is HTTPS-only: {endpoint!r}")
    return endpoint.rstrip("/")


def _ram_host(endpoint: str) -> str:
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    if ".agentrun-data." not in host and ".funagent-data-pre." not in host:
        return endpoint
    first, rest = host.split(".", 1)
    if first.endswith("-ram"):
        return endpoint
    netloc = parts.netloc.replace(host, f"{first}-ram.{rest}", 1)
    return parts._replace(netloc=netloc).geturl()
