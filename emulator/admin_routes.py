"""Emulator administration under `/_emulator`: settings, per-proxy faults and reply length,
health, stats.

Not part of the AgentRun API, so names are snake_case like `EmulatorSettings`. Open while the
emulator is (no credentials, no API keys); otherwise every route but `health` takes the
credentials the planes take (`auth.require_admin_auth`): faults and settings change what the
planes answer, and stats name the proxies.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from emulator.api_errors import (
    ERROR_RESPONSES,
    INVALID_PARAMETER,
    ApiError,
    validation_message,
)
from emulator.auth import require_admin_auth
from emulator.control_routes import require_proxy
from emulator.deps import StoreDep
from emulator.settings import Dimensions, EmulatorSettings, Faults, ReplyLength
from emulator.stats import Stats, StatsSnapshot, stats_of
from emulator.synthetic import MAX_REPLY_TOKENS

# `router` (what the app includes) holds the open routes; `_guarded` the others, added to it
# at the end of this module, so a new route is guarded unless put on `router` on purpose.
router = APIRouter(prefix="/_emulator", tags=["emulator"])
_guarded = APIRouter(
    dependencies=[Depends(require_admin_auth)],
    responses={k: ERROR_RESPONSES[k] for k in (400, 401, 403, 404)},
)
StatsDep = Annotated[Stats, Depends(stats_of)]


class SettingsPatch(BaseModel):
    """Any subset of `EmulatorSettings`; each given field replaces the current value whole
    (so `faults` replaces all fault rates). Null leaves a field as it is, except where null is
    a setting's own value (`reply_tokens`: null lets lengths vary again). Constraints are
    checked on the merged result."""

    model_config = ConfigDict(extra="forbid")

    create_delay_s: float | None = Field(default=None, ge=0)
    update_delay_s: float | None = Field(default=None, ge=0)
    delete_delay_s: float | None = Field(default=None, ge=0)
    ttft_s: float | None = Field(default=None, ge=0)
    tpot_s: float | None = Field(default=None, ge=0)
    default_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_REPLY_TOKENS)
    reply_tokens: int | None = Field(default=None, ge=1, le=MAX_REPLY_TOKENS)
    embedding_dimensions: dict[str, Dimensions] | None = None
    default_embedding_dimensions: Dimensions | None = None
    faults: Faults | None = None
    seed: int | None = None


class Health(BaseModel):
    status: str
    proxies: int


# Settings whose default is null: a null in a patch sets them rather than leaving them be.
_NULLABLE = frozenset(n for n, f in EmulatorSettings.model_fields.items() if f.default is None)


def merged_settings(current: EmulatorSettings, patch: SettingsPatch) -> EmulatorSettings:
    given: dict[str, Any] = patch.model_dump(exclude_unset=True)
    changes = {k: v for k, v in given.items() if v is not None or k in _NULLABLE}
    try:
        return EmulatorSettings.model_validate({**current.model_dump(), **changes})
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]
        raise ApiError(400, INVALID_PARAMETER, validation_message(errors)) from exc


@_guarded.get("/settings", response_model=EmulatorSettings)
async def get_settings(store: StoreDep) -> EmulatorSettings:
    return store.settings


@_guarded.put("/settings", response_model=EmulatorSettings)
async def put_settings(patch: SettingsPatch, store: StoreDep) -> EmulatorSettings:
    store.settings = merged_settings(store.settings, patch)
    return store.settings


@_guarded.get("/proxies/{name}/faults", response_model=Faults)
async def get_proxy_faults(name: str, store: StoreDep) -> Faults:
    """The faults in effect for the proxy: its override, else the emulator's."""
    return store.faults_for(require_proxy(store, name))


@_guarded.put("/proxies/{name}/faults", response_model=Faults)
async def put_proxy_faults(name: str, faults: Faults, store: StoreDep) -> Faults:
    require_proxy(store, name).faults = faults
    return faults


@_guarded.delete("/proxies/{name}/faults", response_model=Faults)
async def delete_proxy_faults(name: str, store: StoreDep) -> Faults:
    """Drop the override; answers the emulator-wide faults now in effect."""
    record = require_proxy(store, name)
    record.faults = None
    return store.faults_for(record)


@_guarded.get("/proxies/{name}/reply", response_model=ReplyLength)
async def get_proxy_reply(name: str, store: StoreDep) -> ReplyLength:
    """The reply length in effect for the proxy: its own, else the emulator's."""
    return ReplyLength(reply_tokens=store.reply_tokens_for(require_proxy(store, name)))


@_guarded.put("/proxies/{name}/reply", response_model=ReplyLength)
async def put_proxy_reply(name: str, reply: ReplyLength, store: StoreDep) -> ReplyLength:
    """Every reply of this proxy is `reply_tokens` long (a request's max_tokens still cuts
    it), or varies in length for null."""
    require_proxy(store, name).reply = reply
    return reply


@_guarded.delete("/proxies/{name}/reply", response_model=ReplyLength)
async def delete_proxy_reply(name: str, store: StoreDep) -> ReplyLength:
    """Drop the override; answers the emulator-wide length now in effect."""
    record = require_proxy(store, name)
    record.reply = None
    return ReplyLength(reply_tokens=store.reply_tokens_for(record))


@router.get("/health", response_model=Health)
async def health(store: StoreDep) -> Health:
    return Health(status="ok", proxies=len(store.all()))


@_guarded.get("/stats", response_model=StatsSnapshot)
async def get_stats(stats: StatsDep) -> StatsSnapshot:
    return stats.snapshot()


@_guarded.delete("/stats", response_model=StatsSnapshot)
async def reset_stats(stats: StatsDep) -> StatsSnapshot:
    """Zero the counters; answers the (empty) snapshot."""
    stats.reset()
    return stats.snapshot()


router.include_router(_guarded)
