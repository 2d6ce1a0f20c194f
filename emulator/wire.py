"""The control plane's wire as the emulator reads and answers it (spec §3, §4): the ModelProxy
resource, its create and update inputs, the list page, the success envelopes and the error body.

Written from the spec, apart from the client's models, so that each checks the other. Inputs
take camelCase keys only and drop unknown keys at every level, as the service's generated
`from_map` does (spec §3.1); JSON types are checked strictly (no "2" for a number, no 1 for a
boolean, no 5.0 for an integer). Answers declare every field the emulator sends.
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictInt
from pydantic.alias_generators import to_camel

SUCCESS = "SUCCESS"


class WireModel(BaseModel):
    """camelCase keys only; unknown keys dropped; enums kept as their wire strings."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_alias=True,
        validate_by_name=False,
        serialize_by_alias=True,
        extra="ignore",
        use_enum_values=True,
    )

    def to_wire(self) -> dict[str, Any]:
        """The fields that are set, as JSON-ready camelCase."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class Status(StrEnum):
    """Spec §7. There is no DELETED: a deleted proxy answers 404."""

    CREATING = "CREATING"
    CREATE_FAILED = "CREATE_FAILED"
    UPDATING = "UPDATING"
    UPDATE_FAILED = "UPDATE_FAILED"
    READY = "READY"
    DELETING = "DELETING"
    DELETE_FAILED = "DELETE_FAILED"


TRANSITIONAL = frozenset({Status.CREATING, Status.UPDATING, Status.DELETING})


class ProxyMode(StrEnum):
    SINGLE = "single"
    MULTI = "multi"


class ModelType(StrEnum):
    """The SDK's values, which e2e reads back; the generated doc's `system`/`deployment` are an
    unresolved conflict (spec §3.2)."""

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


def _finite_number(value: Any) -> Any:
    # Python's json reads Infinity/NaN, which no answer could carry back.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError("must be a finite JSON number")
    return value


# Integers are JSON integers only: not 5.0 (JSON Schema would allow it), "5" or true.
Count = Annotated[StrictInt, Field(ge=0)]
# pydantic leaves `gt` on a union as a non-JSON-Schema key: say it in the schema's words.
# Constraints go before the validator, or the schema loses them.
Cpu = Annotated[
    int | float,
    Field(gt=0, json_schema_extra={"exclusiveMinimum": 0}),
    BeforeValidator(_finite_number),
]
Memory = Annotated[StrictInt, Field(gt=0)]
ProxyName = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[^/\s\u0085\ufeff]+$")]


# -- proxyConfig (spec §3.5) -------------------------------------------------------------------


class ProxyConfigEndpoint(WireModel):
    base_url: str | None = None
    model_names: list[str] | None = None
    model_service_name: str | None = None
    weight: StrictInt | None = None


class ProxyConfigFallback(WireModel):
    model_name: str | None = None
    model_service_name: str | None = None


class TokenRateLimiter(WireModel):
    """Tokens per second, minute, hour, day."""

    tps: Count | None = None
    tpm: Count | None = None
    tph: Count | None = None
    tpd: Count | None = None


class RequestRateLimiter(WireModel):
    """The emulator's extension (not in the AgentRun API): requests per minute."""

    rpm: Count | None = None


class AIGuardrailConfig(WireModel):
    """`checkRequest`/`checkResponse` as the SDK models them, and the wire-only fields."""

    check_request: StrictBool | None = None
    check_response: StrictBool | None = None
    block_on_content_moderation: StrictBool | None = None
    block_on_malicious_url: StrictBool | None = None
    block_on_model_hallucination: StrictBool | None = None
    block_on_prompt_attack: StrictBool | None = None
    block_on_sensitive_data: StrictBool | None = None
    level: str | None = None
    max_text_length: Count | None = None


class ProxyConfigPolicies(WireModel):
    cache: StrictBool | None = None
    concurrency_limit: Count | None = None
    fallbacks: list[ProxyConfigFallback] | None = None
    num_retries: Count | None = None
    request_timeout: Count | None = None
    ai_guardrail_config: AIGuardrailConfig | None = None
    token_rate_limiter: TokenRateLimiter | None = None
    request_rate_limiter: RequestRateLimiter | None = None


class ProxyConfig(WireModel):
    endpoints: list[ProxyConfigEndpoint] | None = None
    policies: ProxyConfigPolicies | None = None


# -- other nested objects (spec §3.3, §3.4, §3.6) -----------------------------------------------


class NetworkConfiguration(WireModel):
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
    enable_arms: StrictBool | None = None


# -- inputs (spec §3.4) ------------------------------------------------------------------------


class UpdateModelProxyInput(WireModel):
    """The wire's UpdateModelProxyInput: exactly these fields; a PUT changes the ones given."""

    arms_configuration: ArmsConfiguration | None = None
    credential_name: str | None = None
    description: str | None = None
    execution_role_arn: str | None = None
    log_configuration: LogConfiguration | None = None
    network_configuration: NetworkConfiguration | None = None
    proxy_config: ProxyConfig | None = None
    workspace_id: str | None = None


class CreateModelProxyInput(UpdateModelProxyInput):
    """The wire's CreateModelProxyInput. The generated doc calls cpu, memory, proxyMode and
    proxyConfig required (unverified); the emulator takes the SDK's cpu/memory (2, 4096) and
    derives proxyMode when absent, so bare bodies from tests and tools still create."""

    model_proxy_name: ProxyName
    cpu: Cpu = 2
    memory: Memory = 4096
    proxy_mode: ProxyMode | None = None
    model_type: ModelType | None = None
    litellm_version: str | None = None
    service_region_id: str | None = None


def derive_proxy_mode(proxy_config: ProxyConfig | None) -> ProxyMode:
    """`multi` for more than one endpoint, else `single` (the SDK's rule, spec §3.4)."""
    endpoints = (proxy_config.endpoints if proxy_config else None) or []
    return ProxyMode.MULTI if len(endpoints) > 1 else ProxyMode.SINGLE


# -- answers (spec §3.3, §4.2, §4.4) -----------------------------------------------------------


class ModelProxy(CreateModelProxyInput):
    """The resource as GET answers it: the create fields plus the server's own."""

    model_proxy_id: str
    proxy_mode: ProxyMode
    created_at: str
    last_updated_at: str
    status: Status
    status_reason: str
    endpoint: str | None = None
    function_name: str | None = None


class ListModelProxiesOutput(WireModel):
    items: list[ModelProxy]
    page_number: int
    page_size: int
    total: int


class ModelProxyResult(WireModel):
    """The envelope of Create, Get and Update."""

    code: str
    request_id: str
    data: ModelProxy


class DeleteModelProxyResult(ModelProxyResult):
    pass


class ListModelProxiesResult(WireModel):
    code: str
    request_id: str
    data: ListModelProxiesOutput


class ErrorBody(WireModel):
    """Every control-plane error (spec §4.4); the `code` strings are the emulator's own."""

    code: str
    message: str
    request_id: str


def error_body(code: str, message: str, request_id: str) -> dict[str, Any]:
    return ErrorBody.model_validate(
        {"code": code, "message": message, "requestId": request_id}
    ).to_wire()
