"""One helper that yields a ModelProxy endpoint: the configured AgentRun service when
endpoints or credentials are set, otherwise an emulator on a free loopback port."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from emulator.server import EmulatorServer
from emulator.settings import EmulatorSettings
from modelproxy.config import Config

logger = logging.getLogger(__name__)


def uses_real_service(config: Config) -> bool:
    return bool(config.control_endpoint_setting() or config.has_credentials())


@contextlib.contextmanager
def modelproxy_endpoint(
    config: Config | None = None, settings: EmulatorSettings | None = None
) -> Iterator[Config]:
    """Yield a Config that reaches a ModelProxy service, starting an emulator if needed."""
    base = config or Config()
    if uses_real_service(base):
        yield base
        return
    with EmulatorServer(settings=settings) as server:
        logger.info("no AgentRun endpoint configured: emulator at %s", server.url)
        yield Config.with_configs(
            base, Config(control_endpoint=server.url, data_endpoint=server.url)
        )
