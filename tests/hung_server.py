"""A real server process whose only model wedges its executor thread for good.

``python -m tests.hung_server PORT`` serves model ``hung`` (BlockingRuntime,
never released, timeout 0.5 s) through the same ``serve_until_signal`` path
as ``inference-sidecar serve``.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile

from sidecar.app import build_server
from sidecar.config import ModelConfig
from sidecar.logs import configure_logging
from sidecar.runtimes.fakes import BlockingRuntime
from tests.helpers import server_config


async def main(port: int) -> None:
    """Serve until SIGTERM."""
    with tempfile.TemporaryDirectory() as repo:
        config = server_config(
            repo,
            grpc={"port": port},
            metrics={"enabled": False},
            limits={"model_timeout_seconds": 0.5},
            shutdown={"grace_period_seconds": 2},
        )
        configure_logging(config.logging)
        server = build_server(config)
        runtime = BlockingRuntime(server.plane.models.executor("hung"))
        await server.plane.models.add("hung", "1", ModelConfig(), runtime)
        await server.serve_until_signal()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
