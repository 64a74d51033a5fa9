"""Redis store: replicas share predictions; a Redis outage never stops serving."""

from __future__ import annotations

import sys
import threading
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
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


class Traffic:
    """Client threads, each on its own channel, that send inference and then a label for
    each prediction, continuously, until stopped; every answer is kept by phase."""

    def __init__(self, address: str, workers: int = 4) -> None:
        self.phase = "before"
        self._lock = threading.Lock()
        # Phase changes wait for every worker's current inference + label round trip,
        # so that a round trip is counted in the phase whose Redis state it met.
        self._turn = threading.Condition()
        self._busy = 0
        self._switching = False
        self.inferred: dict[str, Counter[str]] = defaultdict(Counter)  # phase → status
        self.labelled: dict[str, Counter[str]] = defaultdict(Counter)  # phase → outcome/status
        self._stop = threading.Event()
        self._start = threading.Barrier(workers)
        self._threads = [
            threading.Thread(target=self._run, args=(address, i), daemon=True)
            for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def _run(self, address: str, worker: int) -> None:
        rng = np.random.default_rng(worker)
        with Client(address) as client:
            self._start.wait(10)
            while not self._stop.is_set():
                with self._turn:
                    while self._switching:
                        self._turn.wait()
                    self._busy += 1
                    phase = self.phase
                try:
                    self._round_trip(client, rng, phase)
                finally:
                    with self._turn:
                        self._busy -= 1
                        self._turn.notify_all()

    def _round_trip(self, client: Client, rng: np.random.Generator, phase: str) -> None:
        """One inference, then a label for its prediction; both answers kept under ``phase``."""
        try:
            rid, _ = client.infer("digits", rng.random((2, 64)) * 16)
            inferred = "OK"
        except grpc.RpcError as exc:
            rid, inferred = "", exc.code().name
        with self._lock:
            self.inferred[phase][inferred] += 1
        if not rid:
            return
        label = class_label(rid, "digits", int(rng.integers(10)), row=int(rng.integers(2)))
        try:
            outcome = client.outcomes([label])[0]
        except grpc.RpcError as exc:
            outcome = exc.code().name
        with self._lock:
            self.labelled[phase][outcome] += 1

    @contextmanager
    def switch(self, phase: str) -> Iterator[None]:
        """Pause every worker between round trips, enter ``phase``, resume after the block."""
        with self._turn:
            self._switching = True
            while self._busy:
                self._turn.wait()
            self.phase = phase
        try:
            yield
        finally:
            with self._turn:
                self._switching = False
                self._turn.notify_all()

    def count(self, phase: str, outcome: str) -> int:
        """Label answers of ``outcome`` (an outcome or a status name) in ``phase`` so far."""
        with self._lock:
            return self.labelled[phase][outcome]

    def stop(self) -> None:
        """Stop and wait for every worker."""
        self._stop.set()
        for thread in self._threads:
            thread.join(30)
            assert not thread.is_alive(), "a client thread hung"


def test_redis_outage_under_concurrent_traffic_keeps_serving_and_recovers(
    labels_repo: Path, tmp_path: Path
) -> None:
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
        assert parts.metrics is not None
        with running_server(config, parts) as srv:
            port = parts.metrics.http.port

            def exported(name: str, **labels: str) -> float:
                return scrape(port).value(name, **labels) or 0.0

            def labelled_predictions() -> float:
                return sum(
                    exported("sidecar_labeled_predictions_total", model="digits", version="1",
                             correct=correct)
                    for correct in ("true", "false")
                )  # fmt: skip

            traffic = Traffic(srv.address)
            try:
                wait_for("labels to match", lambda: traffic.count("before", "matched") >= 20)

                with traffic.switch("down"):
                    redis_server.stop()
                wait_for("store errors in the exported metrics", lambda: (
                    exported("sidecar_label_store_errors_total", backend="redis",
                             operation="write") >= 1
                    and exported("sidecar_predictions_dropped_total", model="digits",
                                 reason="store_error") >= 1
                ))  # fmt: skip
                wait_for(
                    "label calls refused while Redis is down",
                    lambda: traffic.count("down", "UNAVAILABLE") >= 5,
                )
                during = labelled_predictions()

                with traffic.switch("back"):
                    redis_server.start()  # same port, empty (no persistence)
                wait_for("labels to match again", lambda: traffic.count("back", "matched") >= 20)
                # the accuracy series moves again, in what /metrics exports
                wait_for("the accuracy series to move", lambda: labelled_predictions() > during)
            finally:
                traffic.stop()

            # Serving never failed: every inference of every phase was answered OK.
            for phase in ("before", "down", "back"):
                inferred = traffic.inferred[phase]
                assert set(inferred) == {"OK"} and inferred["OK"] >= 5, (phase, inferred)
            # Labels: matched before; refused (UNAVAILABLE, retryable) or answered while down;
            # never another status. A prediction made during the outage was dropped, so its
            # label is unknown_id once Redis is back.
            assert set(traffic.labelled["before"]) == {"matched"}
            for phase in ("down", "back"):
                assert set(traffic.labelled[phase]) <= {"matched", "unknown_id", "UNAVAILABLE"}

            errors_then = exported("sidecar_label_store_errors_total", backend="redis",
                                   operation="sweep")  # fmt: skip
            pending = redis_server.client()
            try:
                wait_for("the pending gauge to refresh from Redis", lambda: (
                    exported("sidecar_pending_predictions", model="digits", store=store)
                    == pending.zcard("sidecar:labels:pending:digits")
                ))  # fmt: skip
            finally:
                pending.close()
            assert exported("sidecar_label_store_errors_total", backend="redis",
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
