"""MetricsHTTPServer: /metrics by content negotiation, gzip, /healthz, its own threads."""

from __future__ import annotations

import asyncio
import gzip
import http.client
import threading
from collections.abc import Iterable, Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text
from prometheus_client.registry import Collector

from exporters.http import MetricsHTTPServer

PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


@pytest.fixture
def registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("sidecar_things", "Things.", ["kind"], registry=registry).labels("a").inc(3)
    Counter("sidecar_other", "Other.", registry=registry).inc()
    return registry


@pytest.fixture
def server(registry: CollectorRegistry) -> Iterator[MetricsHTTPServer]:
    srv = MetricsHTTPServer(registry, "127.0.0.1", 0)
    asyncio.run(srv.start())
    try:
        yield srv
    finally:
        asyncio.run(srv.stop())


def get(
    srv: MetricsHTTPServer, path: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def test_port_zero_binds_a_free_port(server: MetricsHTTPServer) -> None:
    assert server.port > 0
    assert server.url == f"http://127.0.0.1:{server.port}"


def test_plain_text_by_default(server: MetricsHTTPServer) -> None:
    status, headers, body = get(server, "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in parse_text(body.decode())}
    assert families["sidecar_things"].samples[0].value == 3
    assert "content-encoding" not in headers


def test_openmetrics_when_prometheus_asks(server: MetricsHTTPServer) -> None:
    status, headers, body = get(server, "/metrics", {"Accept": PROMETHEUS_ACCEPT})
    assert status == 200
    assert headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
    text = body.decode()
    assert text.endswith("# EOF\n")
    families = {f.name: f for f in parse_openmetrics(text)}
    assert families["sidecar_things"].type == "counter"


def test_gzip_when_accepted(server: MetricsHTTPServer) -> None:
    status, headers, body = get(server, "/metrics", {"Accept-Encoding": "gzip, deflate"})
    assert status == 200
    assert headers["content-encoding"] == "gzip"
    assert int(headers["content-length"]) == len(body)
    assert b"sidecar_things_total" in gzip.decompress(body)


def test_name_filter(server: MetricsHTTPServer) -> None:
    _, _, body = get(server, "/metrics?name[]=sidecar_other_total")
    assert b"sidecar_other_total" in body
    assert b"sidecar_things" not in body


def test_healthz_head_and_unknown_paths(server: MetricsHTTPServer) -> None:
    assert get(server, "/healthz")[0::2] == (200, b"ok\n")
    status, headers, body = get(server, "/metrics", method="HEAD")
    assert (status, body) == (200, b"")
    assert int(headers["content-length"]) > 0
    status, _, body = get(server, "/")
    assert status == 404
    assert b"/metrics" in body


def test_stop_releases_the_port(registry: CollectorRegistry) -> None:
    srv = MetricsHTTPServer(registry, "127.0.0.1", 0)
    asyncio.run(srv.start())
    port = srv.port
    asyncio.run(srv.stop())
    assert srv.port == 0
    again = MetricsHTTPServer(registry, "127.0.0.1", port)
    asyncio.run(again.start())
    try:
        assert again.port == port
    finally:
        asyncio.run(again.stop())


def test_a_taken_port_is_an_error_naming_it(server: MetricsHTTPServer) -> None:
    clash = MetricsHTTPServer(CollectorRegistry(), "127.0.0.1", server.port)
    with pytest.raises(OSError, match=f"127.0.0.1:{server.port}"):
        asyncio.run(clash.start())


def test_ipv6_loopback(registry: CollectorRegistry) -> None:
    srv = MetricsHTTPServer(registry, "::1", 0)
    try:
        asyncio.run(srv.start())
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    try:
        conn = http.client.HTTPConnection("::1", srv.port, timeout=10)
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
        conn.close()
        assert srv.url == f"http://[::1]:{srv.port}"
    finally:
        asyncio.run(srv.stop())


class BlockingCollector(Collector):
    """A collector that waits on an event: a scrape stuck inside collect()."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def describe(self) -> Iterable[Metric]:
        return ()

    def collect(self) -> Iterator[Metric]:
        self.entered.set()
        assert self.release.wait(30)
        return iter(())


def test_scrapes_beyond_the_limit_get_503() -> None:
    registry = CollectorRegistry()
    blocker = BlockingCollector()
    registry.register(blocker)
    srv = MetricsHTTPServer(registry, "127.0.0.1", 0, max_concurrent_scrapes=1)
    asyncio.run(srv.start())
    results: list[int] = []
    try:
        first = threading.Thread(target=lambda: results.append(get(srv, "/metrics")[0]))
        first.start()
        assert blocker.entered.wait(10)
        status, _, body = get(srv, "/metrics")
        assert status == 503
        assert b"too many concurrent scrapes" in body
        assert get(srv, "/healthz")[0] == 200  # health does not queue behind scrapes
        blocker.release.set()
        first.join(10)
        assert results == [200]
        assert get(srv, "/metrics")[0] == 200
    finally:
        blocker.release.set()
        asyncio.run(srv.stop())


def test_bad_limit() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        MetricsHTTPServer(CollectorRegistry(), max_concurrent_scrapes=0)
