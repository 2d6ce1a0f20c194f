"""Routing: the proxy that serves a request, from its `model` and an explicit choice.

An explicit proxy (the `X-Mpq-Proxy` header of a direct call, a batch's `metadata.proxy`)
wins. Otherwise the proxies whose cached endpoint model names include the model: exactly one
is used; none falls back to `gateway_default_proxy` when set, else 404 `model_not_found`;
several are refused with 400 `model_ambiguous` naming them, since picking one silently could
send a request to another team's deployment or price. When the cache does not know the model
or proxy asked for, a worker refreshes it once (proxy_directory.py) before the answer.
"""

from __future__ import annotations

import time

from core.contract import check_proxy_name
from gateway.context import Gateway
from gateway.errors import OpenAIError
from gateway.proxy_directory import Snapshot

PROXY_HEADER = "X-Mpq-Proxy"
SHOWN_MAX = 20  # names listed in an error message
_HOW_TO_CHOOSE = (f"choose one with the {PROXY_HEADER} header (direct calls) or "
                  "metadata.proxy (batches)")


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:SHOWN_MAX]) or "none"
    return shown + (f" (and {len(names) - SHOWN_MAX} more)" if len(names) > SHOWN_MAX else "")


def decide(snapshot: Snapshot, model: str | None, explicit: str | None,
           default: str | None) -> str | OpenAIError:
    """The proxy for a request, or the error to answer with. Pure: the caller may refresh
    the cache and ask again when the answer is an error."""
    if explicit is not None:
        try:
            return _explicit(snapshot, model, check_proxy_name(explicit))
        except ValueError as exc:
            return OpenAIError(400, str(exc), code="invalid_proxy")
    if not model:
        return default or OpenAIError(400, "you must provide a model parameter",
                                      param="model", code="missing_model")
    return _by_model(snapshot, model, default)


def _by_model(snapshot: Snapshot, model: str, default: str | None) -> str | OpenAIError:
    serving = snapshot.serving(model)
    if len(serving) == 1:
        return serving[0]
    if len(serving) > 1:
        return OpenAIError(400, f"The model '{model}' is served by several proxies: "
                           f"{_listed(serving)}; {_HOW_TO_CHOOSE}.", param="model",
                           code="model_ambiguous")
    return default or OpenAIError(
        404, f"The model '{model}' does not exist or no proxy serves it. Known models: "
        f"{_listed(sorted(snapshot.models()))}.", param="model", code="model_not_found")


def _explicit(snapshot: Snapshot, model: str | None, name: str) -> str | OpenAIError:
    proxy = snapshot.get(name)
    if proxy is None:
        known = sorted(p.name for p in snapshot.proxies)
        return OpenAIError(404, f"No model proxy named '{name}'. Known proxies: "
                           f"{_listed(known)}.", code="proxy_not_found")
    if model and model not in proxy.models:
        return OpenAIError(404, f"The model '{model}' is not served by proxy '{name}'; it "
                           f"serves {_listed(list(proxy.models))}.", param="model",
                           code="model_not_found")
    return name


async def resolve_proxy(gw: Gateway, model: str | None, explicit: str | None) -> str:
    """The proxy to run a request on; raises `OpenAIError` (400 or 404) naming the candidates.

    `explicit`: the proxy the caller chose (header, `metadata.proxy`), or None. What the
    last read of the cache cannot find is looked for again in a read begun after the call,
    then after a worker refreshed the cache (see proxy_directory.py)."""
    asked = time.monotonic()
    default = gw.settings.gateway_default_proxy
    verdict = decide(await gw.proxies.snapshot(), model, explicit, default)
    if _missing(verdict):
        verdict = decide(await gw.proxies.snapshot(since=asked), model, explicit, default)
    if _missing(verdict) and await gw.proxies.refresh(gw.client):
        verdict = decide(await gw.proxies.snapshot(), model, explicit, default)
    if isinstance(verdict, OpenAIError):
        raise verdict
    return verdict


def _missing(verdict: str | OpenAIError) -> bool:
    return isinstance(verdict, OpenAIError) and verdict.status == 404
