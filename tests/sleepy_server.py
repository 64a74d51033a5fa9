"""A real server process with one slow fake model, for shutdown tests.

``python -m tests.sleepy_server PORT DELAY`` serves model ``sleepy`` (SleepingRuntime)
through the same ``serve_until_signal`` path as ``inference-sidecar serve``, and
prints ``predict started`` to stderr when a request reaches the model.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import tempfile

from sidecar.app import build_server
from sidecar.config import ModelConfig
from sidecar.logs import configure_logging
from sidecar.runtimes.fakes import SleepingRuntime
from sidecar.types import Tensors
from tests.helpers import server_config


class AnnouncingSleeper(SleepingRuntime):
    """Logs when a request reaches the model, then sleeps."""

    async def predict(self, inputs: Tensors) -> Tensors:
        """Announce, sleep, answer."""
        print("predict started", file=sys.stderr, flush=True)
        return await super().predict(inputs)


async def main(port: int, delay: float) -> None:
    """Serve until SIGTERM."""
    with tempfile.TemporaryDirectory() as repo:
        config = server_config(
            repo,
            grpc={"port": port},
            metrics={"enabled": False},
            shutdown={"grace_period_seconds": 10},
        )
        configure_logging(config.logging)
        server = build_server(config)
        await server.plane.models.add("sleepy", "1", ModelConfig(), AnnouncingSleeper(delay))
        await server.serve_until_signal()
        logging.getLogger(__name__).info("exiting")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), float(sys.argv[2])))
