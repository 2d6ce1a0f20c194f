"""The ModelProxy data model (spec §3): pydantic models with camelCase wire names.

Unknown wire fields are kept (`extra="allow"`) under their camelCase key, so a newer server
never loses data on a round trip. `to_wire()` emits only fields that are set.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel


class WireModel(BaseModel):
    """camelCase on the wire, snake_case in Python, unknown fields kept."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="allow",
        use_enum_values=True,
    )

    def to_wire(self) -> dict[str, Any]:
        """JSON-ready dict of the fields that are set, with wire names."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Self:
        return cls.model_validate(data)


class Status(StrEnum):
    CREATING = "CREATING"
    CREATE_FAILED = "CREATE_FAILED"
    UPDATING = "UPDATING"
    UPDATE_FAILED = "UPDATE_FAILED"
    READY = "READY"
    DELETING = "DELETING"
    DELETE_FAILED = "DELETE_FAILED"

    @staticmethod
    def is_final_status(status: str | Status | None) -> bool:
        """Settled: READY or a *_FAILED state. Unlike the SDK, None is not final (Q15)."""
        return status is not None and str(_value(status)) in _FINAL

    def is_final(self) -> bool:
        return self.value in _FINAL

    @staticmethod
    def is_failed(status: str | Status | None) -> bool:
        return status is not None and str(_value(status)).endswith("_FAILED")


def _value(status: str | Status) -> str:
    return status.value if isinstance(status, Status) else status


_FINAL = frozenset({"READY", "CREATE_FAILED", "UPDATE_FAILED", "DELETE_FAILED"})
FINAL_STATUSES = frozenset(Status(s) for s in _FINAL)


class ProxyMode(StrEnum):
    SINGLE = "single"
    MULTI = "multi"


class ModelType(StrEnum):
    LLM = "llm"
    TEXT_EMBEDDING = "text-embedding"
    RERANK = "rerank"
    SPEECH2TEXT = "speech2text"
    TTS = "tts"
    MODERATION = "moderation"


class NetworkMode(StrEnum):
    PUBLIC = "PUBLIC"
    PRIVATE = "PRIVATE"
    PUBLIC_AND_PRIVATE = "PUBLIC_AND_PRIVATE"


class ProxyConfigEndpoint(WireModel):
    base_url: str | None = None
    model_names: list[str] | None = None
    model_service_name: str | None = None
    weight: int | None = None


class ProxyConfigFallback(WireModel):
    model_name: str | None = None
    model_service_name: str | None = None


class ProxyConfigTokenRateLimiter(WireModel):
    tps: int | None = Field(default=None, ge=0)
    tpm: int | None = Field(default=None, ge=0)
    tph: int | None = Field(default=None, ge=0)
    tpd: int | None = Field(default=None, ge=0)


class ProxyConfigAIGuardrailConfig(WireModel):
    check_request: bool | None = None
    check_response: bool | None = None


class ProxyConfigPolicies(WireModel):
    cache: bool | None = None
    concurrency_limit: int | None = Field(default=None, ge=0)
    fallbacks: list[ProxyConfigFallback] | None = None
    num_retries: int | None = Field(default=None, ge=0)
    request_timeout: int | None = Field(default=None, ge=0)
    ai_guardrail_config: ProxyConfigAIGuardrailConfig | None = None
    token_rate_limiter: ProxyConfigTokenRateLimiter | None = None


class ProxyConfig(WireModel):
    endpoints: list[ProxyConfigEndpoint] | None = None
    policies: ProxyConfigPolicies | None = None


class NetworkConfig(WireModel):
    network_mode: NetworkMode | None = None
    security_group_id: str | None = None
    vpc_id: str | None = None
    vswitch_ids: list[str] | None = None


class LogConfiguration(WireModel):
    project: str | None = None
    logstore: str | None = None


class ArmsConfiguration(WireModel):
    arms_license_key: str | None = None
    cms_workspace: str | None = None
    enable_arms: bool | None = None


class ModelProxyUpdateInput(WireModel):
    """Exactly the fields the wire's UpdateModelProxyInput accepts (spec §3.4, Q5)."""

    description: str | None = None
    credential_name: str | None = None
    execution_role_arn: str | None = None
    network_configuration: NetworkConfig | None = None
    proxy_config: ProxyConfig | None = None
    workspace_id: str | None = None
    log_configuration: LogConfiguration | None = None
    arms_configuration: ArmsConfiguration | None = None


class ModelProxyCreateInput(ModelProxyUpdateInput):
    """CreateModelProxyInput. `cpu`/`memory` are the server's required values; the SDK's
    defaults (2 vCPU, 4096 MB) are kept. `proxy_mode` is derived when unset."""

    model_proxy_name: str = Field(min_length=1, max_length=128)
    # pydantic leaves `gt` on a union as a non-JSON-Schema key: say it in the schema's words.
    cpu: int | float = Field(default=2, gt=0, json_schema_extra={"exclusiveMinimum": 0})
    memory: int = Field(default=4096, gt=0)
    proxy_mode: ProxyMode | None = None
    model_type: ModelType | None = None
    litellm_version: str | None = None
    service_region_id: str | None = None

    def to_wire(self) -> dict[str, Any]:
        wire = super().to_wire()
        wire.setdefault("proxyMode", derive_proxy_mode(self.proxy_config).value)
        return wire


def derive_proxy_mode(proxy_config: ProxyConfig | None) -> ProxyMode:
    """`multi` for more than one endpoint, else `single`; never crashes on None (Q6)."""
    endpoints = (proxy_config.endpoints if proxy_config else None) or []
    return ProxyMode.MULTI if len(endpoints) > 1 else ProxyMode.SINGLE


class ModelProxyListInput(WireModel):
    page_number: int | None = Field(default=None, ge=1)
    page_size: int | None = Field(default=None, ge=1, le=100)
    proxy_mode: ProxyMode | None = None
    status: Status | None = None
    workspace_id: str | None = None
    workspace_ids: str | None = None


class ModelProxyProps(WireModel):
    """Every field of the ModelProxy resource as the server returns it."""

    model_proxy_name: str | None = None
    model_proxy_id: str | None = None
    description: str | None = None
    model_type: str | None = None
    proxy_mode: str | None = None
    proxy_config: ProxyConfig | None = None
    credential_name: str | None = None
    execution_role_arn: str | None = None
    cpu: int | float | None = None
    memory: int | None = None
    litellm_version: str | None = None
    service_region_id: str | None = None
    network_configuration: NetworkConfig | None = None
    workspace_id: str | None = None
    log_configuration: LogConfiguration | None = None
    arms_configuration: ArmsConfiguration | None = None
    created_at: str | None = None
    last_updated_at: str | None = None
    # Kept as str so an unknown server status never breaks parsing (Q16).
    status: str | None = None
    status_reason: str | None = None
    endpoint: str | None = None
    function_name: str | None = None


class ModelProxyPage(WireModel):
    """One page of ListModelProxies."""

    items: list[ModelProxyProps] = Field(default_factory=list)
    page_number: int | None = None
    page_size: int | None = None
    total: int | None = None


class BaseInfo(WireModel):
    """Data-plane connection info for one proxy (no secrets: auth is applied per request)."""

    model: str
    base_url: str
    provider: str = "openai"
    api_key: str | None = Field(default=None, repr=False)
    headers: dict[str, str] = Field(default_factory=dict)


def model_name_for(props: ModelProxyProps) -> str:
    """The model callers address (spec §5.2): single mode's first model name; the proxy
    name in multi mode, and where single mode names no model (the SDK sent "" there)."""
    if props.proxy_mode == ProxyMode.SINGLE.value and props.proxy_config:
        for endpoint in props.proxy_config.endpoints or []:
            if endpoint.model_names:
                return endpoint.model_names[0]
    return props.model_proxy_name or ""
