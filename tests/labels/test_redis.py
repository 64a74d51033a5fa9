"""Redis store: replicas share predictions; a Redis outage never stops serving."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import redis

from sidecar.config import LabelStoreConfig
from sidecar.errors import MissingDependencyError
from sidecar.labels.store import create_store
from sidecar.labels.store_redis import shared_store_name
from tests.exporters.scrape import scrape
from tests.helpers import running_server, server_config
from tests.labels.helpers import (
    Client,
    class_label,
    label_parts,
    number_label,
    registry_of,
    sample,
    wait_for,
)
from tests.labels.process import ServerProcess
from tests.labels.redis_server import RedisServer

pytestmark = pytest.mark.redis


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis_server.client()
    yield client
    client.close()


@pytest.fixture
def replicas(
    labels_repo: Path, redis_server: RedisServer, tmp_path: Path
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    labels = {
        "backend": "redis",
        "url": redis_server.url,
        "key_prefix": "replicas:",
        "flush_interval_ms": 20,
    }
    pair = (
        ServerProcess(tmp_path / "a", labels_repo, labels),
        ServerProcess(tmp_path / "b", labels_repo, labels),
    )
    for server in pair:
        server.start()  # both start at once
    try:
        for server in pair:
            server.wait_ready()
        yield pair
    finally:
        for server in pair:
            assert server.stop() == 0, "".join(server.log[-20:])


@pytest.mark.slow
def test_label_on_another_replica_matches_exactly_once(
    replicas: tuple[ServerProcess, ServerProcess], labels_repo: Path, redis_client: redis.Redis
) -> None:
    a, b = replicas
    store = redis_client
    x = np.load(labels_repo / "digits" / "holdout_features.npy")[:40]
    with Client(a.address) as on_a, Client(b.address) as on_b:
        made_on_a = [on_a.infer("digits", x[i : i + 10])[0] for i in (0, 10)]
        made_on_b = [on_b.infer("digits", x[i : i + 10])[0] for i in (20, 30)]
        last_rows = [f"replicas:p:9:{rid}" for rid in made_on_a + made_on_b]
        wait_for("the flushes to reach Redis", lambda: store.exists(*last_rows) == 4)
        for_a = [class_label(rid, "digits", "one", row=r) for rid in made_on_a for r in range(10)]
        # sent to the replica that did not make them: matched; then to the one that did
        assert on_b.outcomes(for_a) == ["matched"] * 20
        assert on_a.outcomes(for_a) == ["duplicate"] * 20
        # the same labels to both replicas at the same time: each matches once
        for_b = [class_label(rid, "digits", "two", row=r) for rid in made_on_b for r in range(10)]
        results: dict[str, list[str]] = {}
        start = threading.Barrier(2)

        def send(name: str, client: Client) -> None:
            start.wait()
            results[name] = [o for chunk in range(0, 20, 2)
                             for o in client.outcomes(for_b[chunk : chunk + 2])]  # fmt: skip

        threads = [threading.Thread(target=send, args=p) for p in (("a", on_a), ("b", on_b))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        for i in range(20):
            assert sorted([results["a"][i], results["b"][i]]) == ["duplicate", "matched"]
        # the other model's labels and unknown ids are answered the same on both
        rid, _ = on_a.infer("diabetes", np.zeros((1, 10)))
        # a label can only meet a prediction its replica has written: wait for the flush
        wait_for("A's flush to reach Redis", lambda: store.exists(f"replicas:p:0:{rid}"))
        assert on_b.outcomes([number_label(rid, "diabetes", 100.0)]) == ["matched"]
        assert on_a.outcomes([number_label(rid, "diabetes", 100.0)]) == ["duplicate"]
        assert on_a.outcomes([class_label("nobody", "digits", 1)]) == ["unknown_id"]
    # counted once across the replicas, on the replica that received each label
    scrapes = [scrape(a.metrics_port), scrape(b.metrics_port)]

    def total(outcome: str) -> float:
        name = "sidecar_labels_received_total"
        return sum(s.value(name, model="digits", outcome=outcome) or 0.0 for s in scrapes)

    assert (total("matched"), total("duplicate"), total("unknown_id")) == (40.0, 40.0, 1.0)
    assert store.zcard("replicas:pending:digits") == 0
    assert store.hget(f"replicas:p:3:{made_on_a[0]}", "s") == "L"
    assert store.pttl(f"replicas:p:3:{made_on_a[0]}") > 0  # Redis keeps the TTL


def test_redis_outage_keeps_serving_and_recovers(labels_repo: Path, tmp_path: Path) -> None:
    with RedisServer(tmp_path / "redis") as redis_server:
        labels = {
            "backend": "redis",
            "url": redis_server.url,
            "flush_interval_ms": 20,
            "sweep_interval_seconds": 0.05,
            "timeout_seconds": 0.5,
        }
        config = server_config(labels_repo, labels=labels)
        parts = label_parts(config)
        store = shared_store_name(redis_server.url, config.labels.key_prefix)
        with running_server(config, parts) as srv, Client(srv.address) as client:
            registry = registry_of(parts)
            rid, _ = client.infer("digits", np.zeros((1, 64)))
            assert client.outcomes([class_label(rid, "digits", 0)]) == ["matched"]

            redis_server.stop()
            served = [client.infer("digits", np.zeros((2, 64)))[0] for _ in range(5)]
            assert len(set(served)) == 5  # inference goes on
            wait_for("failed writes to be counted", lambda: sample(
                registry, "sidecar_predictions_dropped_total", model="digits",
                reason="store_error") == 10)  # fmt: skip
            assert sample(registry, "sidecar_label_store_errors_total", backend="redis",
                          operation="write") >= 1  # fmt: skip
            with pytest.raises(grpc.RpcError) as err:
                client.send([class_label(served[0], "digits", 0)])
            assert err.value.code() is grpc.StatusCode.UNAVAILABLE
            assert "label store unavailable" in (err.value.details() or "")
            assert sample(registry, "sidecar_labels_received_total", model="digits",
                          outcome="unknown_id") == 0  # fmt: skip

            redis_server.start()  # same port, empty (no persistence)

            def recovered() -> bool:
                rid, _ = client.infer("digits", np.zeros((1, 64)))
                try:
                    return client.outcomes([class_label(rid, "digits", 0)]) == ["matched"]
                except grpc.RpcError:
                    return False

            wait_for("labels to match again", recovered, timeout=20)
            errors_then = sample(registry, "sidecar_label_store_errors_total", backend="redis",
                                 operation="sweep")  # fmt: skip
            wait_for(
                "the pending gauge to refresh",
                lambda: (
                    registry.get_sample_value(
                        "sidecar_pending_predictions", {"model": "digits", "store": store}
                    )
                    == 0
                ),
            )
            assert sample(registry, "sidecar_label_store_errors_total", backend="redis",
                          operation="sweep") == errors_then  # fmt: skip


def test_redis_without_the_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)  # import redis → ImportError
    store = create_store(LabelStoreConfig(backend="redis", url="redis://127.0.0.1:1/0"))
    with pytest.raises(MissingDependencyError, match=r"pip install 'inference-sidecar\[redis\]'"):
        store.open()


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("redis://:secret@redis.serving.svc:6379/0", "redis://redis.serving.svc:6379/0#p:"),
        ("redis://redis", "redis://redis:6379/0#p:"),
        ("rediss://user:pw@[::1]:7000/3?ssl_cert_reqs=none", "rediss://[::1]:7000/3#p:"),
        ("unix:///run/redis.sock?db=2&password=pw", "unix:///run/redis.sock?db=2#p:"),
    ],
)
def test_shared_store_name_leaves_out_credentials(url: str, name: str) -> None:
    """The pending gauge's store label names the shared store, never its password."""
    assert shared_store_name(url, "p:") == name
    store = create_store(LabelStoreConfig(backend="redis", url=url, key_prefix="p:"))
    assert store.scope == name
