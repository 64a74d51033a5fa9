"""Test helpers: run a real server on a loopback port in a background thread."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Coroutine, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, TypeVar

from sidecar.app import AppParts, build_server
from sidecar.config import ModelConfig, ServerConfig
from sidecar.events import BaseListener, RequestRecord
from sidecar.runtimes.base import Runtime
from sidecar.server import SidecarServer

T = TypeVar("T")


class RecordingListener(BaseListener):
    """Keeps every RequestRecord (appended on the server's loop thread)."""

    def __init__(self) -> None:
        self.records: list[RequestRecord] = []

    def on_request(self, record: RequestRecord) -> None:
        """Keep it."""
        self.records.append(record)

    def reasons(self, model: str) -> list[tuple[str, str]]:
        """(code, reason) of the records of one model, in order."""
        return [(r.code, r.reason) for r in list(self.records) if r.model and r.model.name == model]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerThread:
    """A SidecarServer running on its own event loop in a daemon thread."""

    def __init__(self, server: SidecarServer) -> None:
        self.server = server
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        """Run a coroutine on the server's loop and wait for its result."""
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    @property
    def address(self) -> str:
        """host:port of the gRPC listener."""
        return f"127.0.0.1:{self.server.port}"

    def close(self) -> None:
        """Stop the server (grace 1 s) and the loop."""
        self.call(self.server.stop(grace=1.0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


def server_config(repository: Path | None = None, **updates: Any) -> ServerConfig:
    """A config listening on 127.0.0.1 port 0 (metrics too), overridable per test."""
    data: dict[str, Any] = {
        "grpc": {"host": "127.0.0.1", "port": 0},
        "metrics": {"host": "127.0.0.1", "port": 0},
        "device": "cpu",
    }
    if repository is not None:
        data["model_repository"] = str(repository)
    for key, value in updates.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return ServerConfig.model_validate(data)


@contextmanager
def running_server(
    config: ServerConfig,
    parts: AppParts | None = None,
    fakes: Sequence[tuple[str, Runtime, ModelConfig | None]] = (),
) -> Iterator[ServerThread]:
    """Start a real server (real gRPC socket) with optional fake models added."""
    server = build_server(config, parts)
    thread = ServerThread(server)

    async def start() -> None:
        for name, runtime, model_config in fakes:
            await server.plane.models.add(name, "1", model_config or ModelConfig(), runtime)
        await server.start()

    try:
        thread.call(start())
        yield thread
    finally:
        thread.close()


ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def spawn(args: Sequence[str], **kwargs: Any) -> Iterator[subprocess.Popen[str]]:
    """Start ``python -m ...`` from the repository root with stderr piped as text.

    The process is killed (if still running) and its pipes closed on exit.
    """
    proc = subprocess.Popen(
        [sys.executable, *args], cwd=ROOT, stderr=subprocess.PIPE, text=True, **kwargs
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def wait_for_line(stream: IO[str] | None, needle: str, timeout: float = 60) -> list[str]:
    """Read lines until one contains ``needle``; AssertionError with the output otherwise."""
    assert stream is not None
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            break
        seen.append(line)
        if needle in line:
            return seen
    raise AssertionError(f"never saw {needle!r}; output was:\n{''.join(seen)}")
