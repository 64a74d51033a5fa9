"""A real server process with one slow fake model behind a concurrency limit.

``python -m tests.overload_server PORT DELAY LIMIT [THREADS]`` serves model
``slow`` (ThreadSleepRuntime: each call holds one of THREADS threads, default
LIMIT, for DELAY seconds, so its capacity is THREADS / DELAY calls per second)
admitting at most LIMIT requests at once (0: no limit), through the same
``serve_until_signal`` path as ``inference-sidecar serve``.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile

from sidecar.app import build_server
from sidecar.config import ModelConfig
from sidecar.logs import configure_logging
from sidecar.runtimes.fakes import ThreadSleepRuntime
from tests.helpers import server_config


async def main(port: int, delay: float, limit: int, threads: int) -> None:
    """Serve until SIGTERM."""
    with tempfile.TemporaryDirectory() as repo:
        config = server_config(
            repo,
            grpc={"port": port},
            metrics={"enabled": False},
            limits={"max_concurrent_requests": limit},
            threads={"executor_workers": threads},
        )
        configure_logging(config.logging)
        server = build_server(config)
        runtime = ThreadSleepRuntime(delay, server.plane.models.executor("slow"))
        await server.plane.models.add("slow", "1", ModelConfig(), runtime)
        await server.serve_until_signal()


if __name__ == "__main__":
    port, delay, limit = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
    asyncio.run(main(port, delay, limit, int(sys.argv[4]) if len(sys.argv) > 4 else limit))
