"""A server in its own process (``python -m sidecar.cli serve``), for restart and replica tests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from tests.labels.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]
_SERVING = re.compile(r"serving gRPC on [^:]+:(\d+)")
_METRICS = re.compile(r"serving metrics on [^:]+:(\d+)")


class ServerProcess:
    """``with ServerProcess(tmp, repo, labels={...}) as server: server.address``."""

    def __init__(self, workdir: Path, repository: Path, labels: dict[str, Any]) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = workdir / "sidecar.yaml"
        self.config.write_text(
            yaml.safe_dump(
                {
                    "grpc": {"host": "127.0.0.1", "port": 0},
                    "metrics": {"host": "127.0.0.1", "port": 0},
                    "device": "cpu",
                    "model_repository": str(repository),
                    "labels": labels,
                }
            )
        )
        self.process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self.port = 0
        self.metrics_port = 0
        self.log: list[str] = []

    @property
    def address(self) -> str:
        """127.0.0.1:PORT of its gRPC listener."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> ServerProcess:
        """Start it; ``wait_ready`` waits for its port."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
        self.port = 0
        self.metrics_port = 0
        self.log = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sidecar.cli", "serve", "--config", str(self.config)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, args=(self.process,), daemon=True)
        self._reader.start()
        return self

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stderr is not None
        for line in process.stderr:
            self.log.append(line)
            found = _SERVING.search(line)
            if found:
                self.port = int(found.group(1))
            found = _METRICS.search(line)
            if found:
                self.metrics_port = int(found.group(1))

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until it logged its port (fails with its log if it exits)."""

        def ready() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError("server exited:\n" + "".join(self.log[-40:]))
            return self.port != 0

        wait_for("the server to listen", ready, timeout=timeout)

    def _reap(self) -> None:
        if self._reader is not None:
            self._reader.join(15)
            self._reader = None
        if self.process is not None and self.process.stderr is not None:
            self.process.stderr.close()
        self.process = None

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final flush."""
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(15)
            self._reap()

    def stop(self) -> int:
        """SIGTERM and wait; the exit code."""
        if self.process is None:
            return 0
        self.process.terminate()
        try:
            code = self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait(5)
        self._reap()
        return code

    def __enter__(self) -> ServerProcess:
        self.start().wait_ready()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
