"""Emulator administration under `/_emulator`: settings, per-proxy faults, health, stats.

Not part of the AgentRun API, so names are snake_case like `EmulatorSettings`, and these routes
need no signature (the emulator is a test tool; bind it to loopback).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from modelproxy.emulator.api_errors import (
    ERROR_RESPONSES,
    INVALID_PARAMETER,
    ApiError,
    validation_message,
)
from modelproxy.emulator.control_routes import require_proxy
from modelproxy.emulator.deps import StoreDep
from modelproxy.emulator.settings import EmulatorSettings, Faults
from modelproxy.emulator.stats import Stats, StatsSnapshot, stats_of

router = APIRouter(
    prefix="/_emulator",
    tags=["emulator"],
    responses={k: ERROR_RESPONSES[k] for k in (400, 404)},
)
StatsDep = Annotated[Stats, Depends(stats_of)]


class SettingsPatch(BaseModel):
    """Any subset of `EmulatorSettings`; each given field replaces the current value whole
    (so `faults` replaces all fault rates). Constraints are checked on the merged result."""

    model_config = ConfigDict(extra="forbid")

    create_delay_s: float | None = Field(default=None, ge=0)
    update_delay_s: float | None = Field(default=None, ge=0)
    delete_delay_s: float | None = Field(default=None, ge=0)
    ttft_s: float | None = Field(default=None, ge=0)
    tpot_s: float | None = Field(default=None, ge=0)
    default_completion_tokens: int | None = Field(default=None, ge=1, le=4096)
    faults: Faults | None = None
    seed: int | None = None


class Health(BaseModel):
    status: str
    proxies: int


def merged_settings(current: EmulatorSettings, patch: SettingsPatch) -> EmulatorSettings:
    changes: dict[str, Any] = patch.model_dump(exclude_unset=True, exclude_none=True)
    try:
        return EmulatorSettings.model_validate({**current.model_dump(), **changes})
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]
        raise ApiError(400, INVALID_PARAMETER, validation_message(errors)) from exc


@router.get("/settings", response_model=EmulatorSettings)
async def get_settings(store: StoreDep) -> EmulatorSettings:
    return store.settings


@router.put("/settings", response_model=EmulatorSettings)
async def put_settings(patch: SettingsPatch, store: StoreDep) -> EmulatorSettings:
    store.settings = merged_settings(store.settings, patch)
    return store.settings


@router.get("/proxies/{name}/faults", response_model=Faults)
async def get_proxy_faults(name: str, store: StoreDep) -> Faults:
    """The faults in effect for the proxy: its override, else the emulator's."""
    return store.faults_for(require_proxy(store, name))


@router.put("/proxies/{name}/faults", response_model=Faults)
async def put_proxy_faults(name: str, faults: Faults, store: StoreDep) -> Faults:
    require_proxy(store, name).faults = faults
    return faults


@router.delete("/proxies/{name}/faults", response_model=Faults)
async def delete_proxy_faults(name: str, store: StoreDep) -> Faults:
    """Drop the override; answers the emulator-wide faults now in effect."""
    record = require_proxy(store, name)
    record.faults = None
    return store.faults_for(record)


@router.get("/health", response_model=Health)
async def health(store: StoreDep) -> Health:
    return Health(status="ok", proxies=len(store.all()))


@router.get("/stats", response_model=StatsSnapshot)
async def get_stats(stats: StatsDep) -> StatsSnapshot:
    return stats.snapshot()


@router.delete("/stats", response_model=StatsSnapshot)
async def reset_stats(stats: StatsDep) -> StatsSnapshot:
    """Zero the counters; answers the (empty) snapshot."""
    stats.reset()
    return stats.snapshot()
