"""StoreWorker: a bounded queue on the request side, batched writes, failures contained."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from exporters.labels import LabelMetrics
from sidecar.config import LabelStoreConfig, MonitoringConfig
from sidecar.labels.errors import StoreUnavailableError
from sidecar.labels.join import Label, LabelJoiner, ModelSpec
from sidecar.labels.store import PredictionStore
from sidecar.labels.store_sqlite import SqliteStore
from sidecar.labels.types import Lookup, PutResult, StoredPrediction
from sidecar.labels.worker import StoreWorker
from tests.labels.fakes import FlakyStore
from tests.labels.helpers import sample

CLASSIFY = MonitoringConfig.model_validate(
    {"task": "classification", "classification": {"output": "p", "class_names": ["a", "b", "c"]}}
)
REGRESS = MonitoringConfig.model_validate({"task": "regression", "regression": {"outputs": ["y"]}})


class Clock:
    def __init__(self) -> None:
        self.now = 10_000.0

    def __call__(self) -> float:
        return self.now


def make(
    store: PredictionStore, **settings: object
) -> tuple[StoreWorker, CollectorRegistry, ModelSpec, ModelSpec, Clock]:
    registry = CollectorRegistry()
    metrics = LabelMetrics(registry, (1.0,), (1.0,), store.backend)
    clock = Clock()
    joiner = LabelJoiner(store, metrics, max_row=1000, clock=clock)
    config = LabelStoreConfig.model_validate(settings)
    clf = ModelSpec.from_config("clf", CLASSIFY, 60.0)
    reg = ModelSpec.from_config("reg", REGRESS, 60.0)
    assert clf is not None and reg is not None
    for spec in (clf, reg):
        joiner.register(spec)
        metrics.prepare_model(spec.name, "1", spec.class_names)
    return StoreWorker(store, joiner, metrics, config, clock=clock), registry, clf, reg, clock


def scores(*classes: int) -> np.ndarray:
    return np.eye(3, dtype=np.float32)[list(classes)]


def test_flush_writes_one_row_per_prediction() -> None:
    store = FlakyStore()
    worker, registry, clf, reg, clock = make(store)
    worker.submit("r1", clf, "1", scores(2, 0, 1), 3, clock.now)
    worker.submit("r2", reg, "1", np.array([[1.5], [2.5]], dtype=np.float32), 2, clock.now)
    assert worker.queued_rows == 5
    assert sample(registry, "sidecar_label_store_queue_rows") == 5
    worker.flush()
    assert worker.queued_rows == 0
    taken = store.take([Lookup("r1", i, "clf") for i in range(3)] + [Lookup("r2", 1, "reg")], 1.0)
    assert [r.prediction.value for r in taken if r.prediction] == [2, 0, 1, 2.5]
    assert sample(registry, "sidecar_predictions_recorded_total", model="clf", version="1") == 3
    assert sample(registry, "sidecar_predictions_recorded_total", model="reg", version="1") == 2


def test_queue_is_bounded_and_drops_are_counted() -> None:
    worker, registry, clf, _, clock = make(FlakyStore(), queue_rows=10)
    for i in range(7):
        worker.submit(f"r{i}", clf, "1", scores(0, 1), 2, clock.now)
    assert worker.queued_rows == 10
    assert sample(registry, "sidecar_predictions_dropped_total", model="clf",
                  reason="queue_full") == 4  # fmt: skip


def test_write_failure_drops_counts_logs_once_and_recovers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = FlakyStore()
    worker, registry, clf, _, clock = make(store)
    store.broken = True
    with caplog.at_level(logging.ERROR, logger="sidecar.labels.worker"):
        for i in range(3):
            worker.submit(f"r{i}", clf, "1", scores(0), 1, clock.now)
            worker.flush()
    assert sample(registry, "sidecar_label_store_errors_total", backend="flaky",
                  operation="write") == 3  # fmt: skip
    assert sample(registry, "sidecar_predictions_dropped_total", model="clf",
                  reason="store_error") == 3  # fmt: skip
    assert len([r for r in caplog.records if "write failed" in r.getMessage()]) == 1
    store.broken = False
    worker.submit("ok", clf, "1", scores(1), 1, clock.now)
    with caplog.at_level(logging.WARNING, logger="sidecar.labels.worker"):
        worker.flush()
    assert any("works again" in r.getMessage() for r in caplog.records)
    assert store.take([Lookup("ok", 0, "clf")], clock.now)[0].prediction is not None


def test_sweep_counts_expiry_and_sets_pending() -> None:
    worker, registry, clf, _, clock = make(FlakyStore())
    worker.submit("r1", clf, "1", scores(0, 1), 2, clock.now)
    worker.flush()
    worker.sweep()
    assert sample(registry, "sidecar_pending_predictions", model="clf", store="local") == 2
    clock.now += 61
    worker.sweep()
    assert sample(registry, "sidecar_predictions_expired_total", model="clf") == 2
    assert sample(registry, "sidecar_pending_predictions", model="clf", store="local") == 0


def test_outputs_that_are_not_one_value_per_row_are_skipped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = FlakyStore()
    worker, _, _, reg, clock = make(store)
    with caplog.at_level(logging.ERROR, logger="sidecar.labels.worker"):
        for i in range(2):
            worker.submit(f"r{i}", reg, "1", np.zeros((2, 2), dtype=np.float32), 2, clock.now)
            worker.flush()
    assert len(store) == 0
    assert len([r for r in caplog.records if "not kept" in r.getMessage()]) == 1


def test_started_worker_joins_flushes_on_stop_and_then_refuses(tmp_path: Path) -> None:
    path = tmp_path / "w.db"
    store = SqliteStore(path, 1000, 60.0)
    worker, _, clf, _, clock = make(store, flush_interval_ms=60_000)

    async def scenario() -> None:
        await worker.start()
        worker.submit("r1", clf, "1", scores(1), 1, clock.now)
        # the label wakes the worker, which writes the queue first
        outcomes = await worker.join([Label("r1", "clf", 0, "class_name", "b")])
        assert [o.outcome for o in outcomes] == ["matched"]
        worker.submit("r2", clf, "1", scores(2), 1, clock.now)
        await worker.stop()  # long before the 60 s flush interval
        with pytest.raises(StoreUnavailableError):
            await worker.join([Label("r2", "clf", 0, "class_name", "c")])

    asyncio.run(scenario())
    reopened = SqliteStore(path, 1000, 60.0)
    reopened.open()
    assert [r.found.value for r in reopened.take([Lookup("r2", 0, "clf")], clock.now)] == [
        "matched"
    ]
    reopened.close()


def test_label_batch_during_store_outage_is_unavailable() -> None:
    store = FlakyStore()
    worker, registry, clf, _, clock = make(store)

    async def scenario() -> None:
        await worker.start()
        try:
            store.broken = True
            with pytest.raises(StoreUnavailableError, match="retry"):
                await worker.join([Label("r1", "clf", 0, "class_name", "b")])
            store.broken = False
            worker.submit("r1", clf, "1", scores(1), 1, clock.now)
            outcomes = await worker.join([Label("r1", "clf", 0, "class_name", "b")])
            assert [o.outcome for o in outcomes] == ["matched"]
        finally:
            await worker.stop()

    asyncio.run(scenario())
    assert sample(registry, "sidecar_label_store_errors_total", backend="flaky",
                  operation="read") == 1  # fmt: skip


class BuggyStore(FlakyStore):
    """Raises a plain exception (not a StoreError) from its next write."""

    def __init__(self) -> None:
        super().__init__()
        self.bug = True

    def put(self, rows: Sequence[StoredPrediction], now: float) -> PutResult:
        if self.bug:
            self.bug = False
            raise RuntimeError("a bug in the store")
        return super().put(rows, now)


def test_a_bug_in_the_store_loses_its_rows_not_the_worker(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = BuggyStore()
    worker, registry, clf, _, clock = make(store)

    async def scenario() -> None:
        await worker.start()
        try:
            worker.submit("lost", clf, "1", scores(1), 1, clock.now)
            outcomes = await worker.join([Label("lost", "clf", 0, "class_name", "b")])
            assert [o.outcome for o in outcomes] == ["unknown_id"]
            worker.submit("kept", clf, "1", scores(1), 1, clock.now)
            outcomes = await worker.join([Label("kept", "clf", 0, "class_name", "b")])
            assert [o.outcome for o in outcomes] == ["matched"]
        finally:
            await worker.stop()

    with caplog.at_level(logging.ERROR, logger="sidecar.labels.worker"):
        asyncio.run(scenario())
    assert any(r.exc_info and "a bug in the store" in str(r.exc_info[1]) for r in caplog.records)
    assert sample(registry, "sidecar_predictions_dropped_total", model="clf",
                  reason="store_error") == 1  # fmt: skip


def test_shadow_predictions_are_scored_under_their_own_version() -> None:
    worker, registry, clf, reg, clock = make(FlakyStore())

    def count(name: str, **labels: str) -> float:
        return sample(registry, name, **labels)

    async def scenario() -> None:
        await worker.start()
        try:
            # the usual order: primary, then its shadow, then the labels
            worker.submit("r1", clf, "1", scores(2, 0), 2, clock.now)
            worker.submit_shadow("r1", clf, "1", "2", scores(2, 1), 2, clock.now)
            labels = [
                Label("r1", "clf", 0, "class_name", "c"),
                Label("r1", "clf", 1, "class_index", 0),
            ]
            assert [o.outcome for o in await worker.join(labels)] == ["matched", "matched"]
            # the race: the label comes before the shadow's prediction was written
            worker.submit("r2", clf, "1", scores(1), 1, clock.now)
            outcomes = await worker.join([Label("r2", "clf", 0, "class_name", "b")])
            assert [o.outcome for o in outcomes] == ["matched"]
            assert count("sidecar_labeled_predictions_total", model="clf", version="2",
                         correct="false") == 1  # fmt: skip
            worker.submit_shadow("r2", clf, "1", "2", scores(0), 1, clock.now)
            await worker.join([])  # a label call flushes the queue first
            # a shadow whose primary was never kept
            worker.submit_shadow("never", clf, "1", "2", scores(0), 1, clock.now)
            # regression: errors per version
            worker.submit("q", reg, "1", np.array([[10.0]], np.float32), 1, clock.now)
            worker.submit_shadow("q", reg, "1", "2", np.array([[13.0]], np.float32), 1, clock.now)
            outcomes = await worker.join([Label("q", "reg", 0, "number", 11.0)])
            assert [o.outcome for o in outcomes] == ["matched"]
        finally:
            await worker.stop()

    asyncio.run(scenario())
    labeled = "sidecar_labeled_predictions_total"
    assert count(labeled, model="clf", version="1", correct="true") == 3
    assert count(labeled, model="clf", version="1", correct="false") == 0
    assert count(labeled, model="clf", version="2", correct="true") == 1
    assert count(labeled, model="clf", version="2", correct="false") == 2
    assert count("sidecar_confusion_matrix_total", model="clf", version="2", actual="a",
                 predicted="b") == 1  # fmt: skip
    assert count("sidecar_class_outcomes_total", model="clf", version="2", **{"class": "b"},
                 outcome="fn") == 1  # fmt: skip
    for name, outcome in (("a", "fp"), ("a", "fn"), ("b", "fp"), ("c", "tp")):
        assert count("sidecar_class_outcomes_total", model="clf", version="2",
                     outcome=outcome, **{"class": name}) == 1  # fmt: skip
    # one label, one delay and one outcome, whatever the number of versions scored
    assert count("sidecar_label_delay_seconds_count", model="clf") == 3
    assert count("sidecar_labels_received_total", model="clf", outcome="matched") == 3
    assert count("sidecar_predictions_recorded_total", model="clf", version="2") == 3
    assert count("sidecar_predictions_dropped_total", model="clf", reason="no_primary") == 1
    assert count("sidecar_label_squared_error_total", model="reg", version="1") == 1.0
    assert count("sidecar_label_squared_error_total", model="reg", version="2") == 4.0
    assert count("sidecar_label_absolute_error_count", model="reg", version="2") == 1


def test_a_failed_shadow_write_leaves_the_primary_alone() -> None:
    store = FlakyStore()
    worker, registry, clf, _, clock = make(store)
    worker.submit("r1", clf, "1", scores(1), 1, clock.now)
    worker.flush()
    store.broken = True
    worker.submit_shadow("r1", clf, "1", "2", scores(0), 1, clock.now)
    worker.flush()
    store.broken = False
    assert sample(registry, "sidecar_predictions_dropped_total", model="clf",
                  reason="store_error") == 1  # fmt: skip
    (taken,) = store.take([Lookup("r1", 0, "clf", 1.0)], clock.now)
    assert taken.prediction is not None
    assert (taken.prediction.value, taken.prediction.shadow_version) == (1.0, "")


class RecordingStore(FlakyStore):
    """A store that keeps every row it was asked to write, in order."""

    def __init__(self) -> None:
        super().__init__(max_entries=10_000)
        self.written: list[StoredPrediction] = []

    def put(self, rows: Sequence[StoredPrediction], now: float) -> PutResult:
        self.written.extend(rows)
        return super().put(rows, now)


def test_a_flush_of_many_requests_writes_what_flushing_them_one_by_one_writes() -> None:
    """One argmax for all the queued requests that fit together, per-request otherwise:
    the same rows, values and order either way."""
    rng = np.random.default_rng(3)
    queued = []
    for i in range(60):
        kind = i % 6
        if kind == 0:  # the common case: a (rows, classes) float32 table
            queued.append(("clf", rng.random((int(rng.integers(1, 4)), 3), dtype=np.float32)))
        elif kind == 1:  # another dtype: joined with its own kind only
            queued.append(("clf", rng.random((2, 3))))
        elif kind == 2:  # (rows, 1, classes): reshaped per request
            queued.append(("clf", rng.random((2, 1, 3), dtype=np.float32)))
        elif kind == 3:  # a regression value per row, as (rows, 1) and as (rows,)
            queued.append(("reg", rng.normal(size=(3, 1)).astype(np.float32)))
        elif kind == 4:
            queued.append(("reg", rng.normal(size=3)))
        else:  # two values per row: not kept (logged once)
            queued.append(("reg", np.zeros((2, 2), dtype=np.float32)))
    together, apart = RecordingStore(), RecordingStore()
    worker, _, clf, reg, clock = make(together)
    one_by_one, _, clf1, reg1, _ = make(apart)
    for i, (model, output) in enumerate(queued):
        rows = output.shape[0]
        worker.submit(f"r{i}", clf if model == "clf" else reg, "1", output, rows, clock.now + i)
        one_by_one.submit(
            f"r{i}", clf1 if model == "clf" else reg1, "1", output, rows, clock.now + i
        )
        one_by_one.flush()
    worker.flush()
    assert together.written == apart.written
    assert len(together.written) == sum(
        o.shape[0] for _, o in queued if not (o.ndim == 2 and o.shape[1] == 2)
    )


def test_an_idle_worker_writes_a_prediction_one_flush_interval_after_it_came() -> None:
    """With nothing queued the worker sleeps (here: until an hour-long sweep interval);
    the prediction that comes wakes it, and is written after flush_interval_ms."""
    store = RecordingStore()
    worker, _, clf, _, clock = make(store, flush_interval_ms=20, sweep_interval_seconds=3600)

    async def scenario() -> None:
        await worker.start()
        try:
            for request in ("r1", "r2"):  # each time from idle
                worker.submit(request, clf, "1", scores(1), 1, clock.now)
                deadline = time.monotonic() + 10
                while not any(row.request_id == request for row in store.written):
                    assert time.monotonic() < deadline, f"{request} was never written"
                    await asyncio.sleep(0.005)
        finally:
            await worker.stop()

    asyncio.run(scenario())
    assert [row.request_id for row in store.written] == ["r1", "r2"]


def test_queued_predictions_add_nothing_for_the_garbage_collector_to_walk() -> None:
    """Predictions wait for the flush: the queue holds plain tuples of strings, numbers and
    the output array, which the collector stops tracking (no promotions, no full
    collections triggered by a busy server's queue)."""
    import gc

    worker, _, clf, _, clock = make(FlakyStore(), queue_rows=100_000)
    outputs = [scores(i % 3) for i in range(5000)]
    ids = [f"r{i}" for i in range(5000)]
    gc.collect()
    before = len(gc.get_objects())
    for request_id, output in zip(ids, outputs, strict=True):
        worker.submit(request_id, clf, "1", output[None, :], 1, clock.now)
    gc.collect()
    assert worker.queued_rows == 5000
    assert len(gc.get_objects()) - before < 100
