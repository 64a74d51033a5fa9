"""A real Prometheus server for tests: ``with PrometheusServer(targets=[...]) as prom``.

Kept here until the shared ``tests/prom.py`` (same API: ``PrometheusServer(targets=...)``
and ``prom.query(expr)``) lands; then the label tests switch to it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.helpers import free_port
from tests.labels.helpers import wait_for

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


class PrometheusServer:
    """Prometheus scraping ``targets`` (host:port) every ``scrape_interval``."""

    def __init__(self, targets: list[str], scrape_interval: str = "1s") -> None:
        self.targets = targets
        self.scrape_interval = scrape_interval
        self.port = free_port()
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The HTTP API's base URL."""
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> PrometheusServer:
        self._dir = tempfile.TemporaryDirectory(prefix="prom-")
        work = Path(self._dir.name)
        config = work / "prometheus.yml"
        config.write_text(
            json.dumps(
                {
                    "global": {
                        "scrape_interval": self.scrape_interval,
                        "evaluation_interval": self.scrape_interval,
                    },
                    "scrape_configs": [
                        {"job_name": "sidecar", "static_configs": [{"targets": self.targets}]}
                    ],
                }
            )
        )
        log = (work / "prometheus.log").open("wb")
        self._process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={work / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

        def ready() -> bool:
            if self._process is not None and self._process.poll() is not None:
                text = (work / "prometheus.log").read_text()[-2000:]
                raise AssertionError(f"prometheus exited: {text}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as reply:
                    return bool(reply.status == 200)
            except (urllib.error.URLError, ConnectionError):
                return False

        try:
            wait_for("prometheus to be ready", ready, timeout=30)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(15)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(5)
            self._process = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query; the result vector (each item has "metric" and "value")."""
        params = {"query": expr}
        if at is not None:
            params["time"] = repr(at)
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as reply:
                body = json.load(reply)
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"query {expr!r} failed: {exc.read().decode()}") from exc
        assert body["status"] == "success", body
        result = body["data"]["result"]
        if body["data"]["resultType"] == "scalar":
            return [{"metric": {}, "value": result}]
        return list(result)

    def values(self, expr: str, by: str, at: float | None = None) -> dict[str, float]:
        """Query; the value of each series keyed by its label ``by``."""
        return {
            item["metric"].get(by, ""): float(item["value"][1]) for item in self.query(expr, at)
        }
