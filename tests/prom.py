"""A real Prometheus server for integration tests: start, wait until ready, query, stop.

Usage::

    with prometheus(tmp_path, {"sidecar": [f"127.0.0.1:{metrics_port}"]}) as prom:
        prom.wait_until_up("sidecar")
        ... send traffic ...
        prom.wait_for('sum(sidecar_inference_requests_total{code="OK"})', lambda v: v == 25)
        prom.value("histogram_quantile(0.99, sum by (le) (..._bucket))")

It runs the ``prometheus`` binary (Debian package ``prometheus``; scripts/test.sh
installs it) on a free loopback port with a temporary TSDB, a short scrape
interval and optional rule files, and always stops it. It never skips: a
missing binary is an error that says how to install it. Every wait has a
deadline and its error shows the last result and the tail of Prometheus's log.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

#: Seconds between polls of the HTTP API while waiting.
POLL = 0.1


class PrometheusError(AssertionError):
    """Prometheus did not start, a query failed, or a wait ran out of time."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _number(text: str) -> float:
    return float(text)  # Prometheus sends "NaN", "+Inf", "-Inf" as strings; float() reads them


class Prometheus:
    """A running Prometheus server and its HTTP API."""

    def __init__(self, url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
        self.url = url
        self.process = process
        self.log_path = log_path

    # ------------------------------------------------------------------ raw API

    def api(self, path: str, **params: str) -> Any:
        """GET ``/api/v1/<path>`` and return its ``data``; PrometheusError on any failure."""
        query = urllib.parse.urlencode(params)
        url = f"{self.url}/api/v1/{path}" + (f"?{query}" if query else "")
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            raise PrometheusError(f"GET {url}: HTTP {exc.code}: {detail}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise PrometheusError(f"GET {url}: {exc}\n{self.log_tail()}") from exc
        if body.get("status") != "success":
            raise PrometheusError(f"GET {url}: {body}")
        return body["data"]

    def log_tail(self, lines: int = 30) -> str:
        """The end of Prometheus's log, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no prometheus log)"
        return "prometheus log:\n" + "\n".join(text.splitlines()[-lines:])

    # ------------------------------------------------------------------ queries

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query: a list of ``{"metric": {labels}, "value": [ts, "v"]}``.

        A scalar or string result comes back as one item with empty ``metric``.
        """
        data = self.api("query", query=expr)
        result = data["result"]
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": result}]
        return list(result)

    def value(self, expr: str) -> float | None:
        """The single value ``expr`` yields, None when empty; error when several series."""
        result = self.query(expr)
        if not result:
            return None
        if len(result) > 1:
            raise PrometheusError(f"{expr!r} returned {len(result)} series, expected one: {result}")
        return _number(result[0]["value"][1])

    def values(self, expr: str, label: str) -> dict[str, float]:
        """``{value of label: sample value}`` for every series ``expr`` yields."""
        return {
            item["metric"].get(label, ""): _number(item["value"][1]) for item in self.query(expr)
        }

    # ------------------------------------------------------------------ waiting

    def wait_for(
        self,
        expr: str,
        predicate: Callable[[float | None], bool],
        timeout: float = 30.0,
    ) -> float | None:
        """Poll ``value(expr)`` until ``predicate`` holds; return that value."""
        deadline = time.monotonic() + timeout
        last: float | None = None
        while True:
            last = self.value(expr)
            if predicate(last):
                return last
            if time.monotonic() > deadline:
                raise PrometheusError(
                    f"timed out after {timeout}s: {expr!r} is {last}\n{self.log_tail()}"
                )
            time.sleep(POLL)

    def wait_until_up(self, job: str, timeout: float = 30.0) -> None:
        """Wait until every target of ``job`` was scraped successfully at least once."""
        deadline = time.monotonic() + timeout
        while True:
            targets = [t for t in self.api("targets")["activeTargets"] if t["labels"]["job"] == job]
            if targets and all(t["health"] == "up" for t in targets):
                return
            if time.monotonic() > deadline:
                states = [(t["scrapeUrl"], t["health"], t.get("lastError", "")) for t in targets]
                raise PrometheusError(
                    f"timed out after {timeout}s waiting for job {job!r} to be up: "
                    f"{states or 'no targets'}\n{self.log_tail()}"
                )
            time.sleep(POLL)

    def wait_for_next_scrape(self, job: str, timeout: float = 30.0) -> None:
        """Wait until every target of ``job`` has been scraped again after this call."""
        since = time.time()
        deadline = time.monotonic() + timeout
        while True:
            targets = [t for t in self.api("targets")["activeTargets"] if t["labels"]["job"] == job]
            fresh = [t["health"] == "up" and _rfc3339(t["lastScrape"]) > since for t in targets]
            if targets and all(fresh):
                return
            if time.monotonic() > deadline:
                raise PrometheusError(
                    f"timed out after {timeout}s waiting for a fresh scrape of {job!r}\n"
                    f"{self.log_tail()}"
                )
            time.sleep(POLL)

    def rules(self) -> list[dict[str, Any]]:
        """Loaded rule groups (``/api/v1/rules``)."""
        return list(self.api("rules")["groups"])

    def alerts(self) -> list[dict[str, Any]]:
        """Pending and firing alerts (``/api/v1/alerts``)."""
        return list(self.api("alerts")["alerts"])


def _rfc3339(text: str) -> float:
    """Seconds since the epoch of a Prometheus RFC 3339 timestamp (3.11 reads nanoseconds)."""
    return datetime.fromisoformat(text).timestamp()


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise PrometheusError(
            f"{name!r} is not on PATH; install Prometheus (Debian: apt-get install prometheus; "
            "bash scripts/test.sh does it)"
        )
    return path


@contextmanager
def prometheus(
    workdir: Path,
    targets: Mapping[str, Sequence[str]],
    *,
    scrape_interval: str = "1s",
    evaluation_interval: str = "1s",
    rule_files: Sequence[Path] = (),
    start_timeout: float = 30.0,
    binary: str = "prometheus",
) -> Iterator[Prometheus]:
    """Run Prometheus scraping ``{job: ["host:port", ...]}`` until the block ends.

    ``workdir`` holds the config, the TSDB and the log (``prometheus.log``).
    """
    executable = _binary(binary)
    workdir.mkdir(parents=True, exist_ok=True)
    config = {
        "global": {
            "scrape_interval": scrape_interval,
            "scrape_timeout": scrape_interval,
            "evaluation_interval": evaluation_interval,
        },
        "rule_files": [str(Path(p).resolve()) for p in rule_files],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": list(addresses)}]}
            for job, addresses in targets.items()
        ],
    }
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    log_path = workdir / "prometheus.log"

    last_error = ""
    for _attempt in range(3):  # the free port may be taken between choosing and binding it
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        log = log_path.open("wb")
        process = subprocess.Popen(
            [
                executable,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--web.console.templates=",
                "--web.console.libraries=",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        server = Prometheus(url, process, log_path)
        try:
            if _wait_ready(server, start_timeout):
                break
            last_error = server.log_tail()
        except BaseException:
            _stop(process)
            raise
        _stop(process)
    else:
        raise PrometheusError(f"prometheus did not start\n{last_error}")
    try:
        yield server
    finally:
        _stop(process)


def _wait_ready(server: Prometheus, timeout: float) -> bool:
    """True once /-/ready answers 200; False if the process exited first."""
    deadline = time.monotonic() + timeout
    while server.process.poll() is None:
        try:
            with urllib.request.urlopen(f"{server.url}/-/ready", timeout=2) as response:
                if response.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise PrometheusError(
                f"prometheus not ready after {timeout}s at {server.url}\n{server.log_tail()}"
            )
        time.sleep(POLL)
    return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)
