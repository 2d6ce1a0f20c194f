"""The gateway's FastAPI app: OpenAI's routes under `/v1`, errors in OpenAI's shape, and the
background work: the proxy cache read for routing (gateway/proxy_directory.py), and that of
batches (finalizing, expiry, webhooks) run by every process in turn."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from celery import Celery
from fastapi import FastAPI

from core.api_keys import ApiKeys
from core.redis_client import redis_client
from core.settings import Settings
from gateway import batch_routes, direct_routes, files_routes
from gateway.auth import KEY_REMEMBER_S
from gateway.batch_finalizer import run_finalizer
from gateway.context import Gateway
from gateway.errors import install_error_handlers
from gateway.file_store import FileStore
from producer.client import AsyncClient

TITLE = "mpq gateway"


def create_app(settings: Settings | None = None, *, celery: Celery | None = None) -> FastAPI:
    settings = settings or Settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = AsyncClient(settings, celery=celery)
        assert settings.redis_url is not None  # AsyncClient refuses to start without
        # File content is bytes cut anywhere (a piece may end inside a UTF-8 character).
        content_redis = redis_client(settings.redis_url, decode=False)
        gw = Gateway(settings=settings, client=client,
                     files=FileStore(content_redis, client.keys, settings.result_ttl_s),
                     api_keys=ApiKeys(client.redis, client.keys, KEY_REMEMBER_S))
        app.state.gateway = gw
        background = [asyncio.create_task(run_finalizer(gw), name="mpq-gateway-finalizer"),
                      asyncio.create_task(gw.proxies.run(), name="mpq-gateway-proxies")]
        try:
            yield
        finally:
            for task in background:
                task.cancel()
            for task in background:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await client.aclose()
            await content_redis.aclose()

    app = FastAPI(title=TITLE, lifespan=lifespan, docs_url=None, redoc_url=None)
    install_error_handlers(app)

    @app.get("/health", include_in_schema=False)
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    # Routes are matched in order: the direct calls, the most frequent, first.
    for module in (direct_routes, files_routes, batch_routes):
        app.include_router(module.router, prefix="/v1")
    return app
