"""A real redis-server on a free loopback port, for tests (no persistence, no config file)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from types import TracebackType

import redis

from tests.helpers import free_port
from tests.labels.helpers import wait_for

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


class RedisServer:
    """``with RedisServer(tmp) as r: r.url``; ``stop()`` and ``start()`` again on the same port."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None
        self._log = workdir / "redis.log"

    @property
    def url(self) -> str:
        """redis://127.0.0.1:PORT/0"""
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        """A client of this server (decoded strings)."""
        return redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True)

    def start(self) -> None:
        """Start (or restart) the server and wait until it answers PING."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        settings = {
            "port": str(self.port),
            "bind": "127.0.0.1",
            "save": "",
            "appendonly": "no",
            "dir": str(self.workdir),
            "daemonize": "no",
            "logfile": str(self._log),
            "protected-mode": "yes",
        }
        argv = [REDIS_SERVER] + [arg for k, v in settings.items() for arg in (f"--{k}", v)]
        self._process = subprocess.Popen(
            argv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = self.client()

        def answers() -> bool:
            if self._process is not None and self._process.poll() is not None:
                raise AssertionError(f"redis-server exited: {self._log.read_text()[-2000:]}")
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        try:
            wait_for("redis-server to answer PING", answers, timeout=20)
        finally:
            client.close()

    def stop(self) -> None:
        """Stop the server (SIGTERM, then wait)."""
        if self._process is not None:
            self._process.terminate()
            self._process.wait(10)
            self._process = None

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
