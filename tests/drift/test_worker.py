"""When the drift worker runs: in large batches while rows wait, never while nothing does.

Every round of the worker costs a wake-up and a GIL hand-over whatever it finds
to do, so rows wait up to a second (or until half the queue is full) and a
monitor with nothing pending lets the worker sleep until its next row. The
fleet bin counts, done for all ordered features at once, must equal counting
feature by feature.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from detectors.reference import Reference
from sidecar.config import DriftFleetConfig
from sidecar.drift.monitor import FleetBins
from sidecar.drift.worker import DriftWorker
from sidecar.models import ServedModel
from tests.drift.helpers import SUM_WIDTH, Harness, load_sum, sum_harness
from tests.exporters.scrape import wait_for

WIDTH = SUM_WIDTH


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    return sum_harness(tmp_path)


load = load_sum


def offer(harness: Harness, model: ServedModel, n: int) -> bool:
    """Offer a request of ``n`` rows (as the tap does): True when the worker should wake."""
    x = np.random.default_rng(n).standard_normal((n, WIDTH)).astype(np.float32)
    outputs = asyncio.run(model.runtime.predict({"x": x}))
    return harness.monitor(model).offer({"x": x}, outputs, n)


def test_a_monitor_tells_the_worker_how_long_it_may_wait(harness: Harness) -> None:
    model = load(harness, flush_seconds=60, queue_rows=1000)
    monitor = harness.monitor(model)
    assert monitor.wait_limit() is None  # nothing pending: sleep until woken
    assert offer(harness, model, 10)  # the first row wakes the sleeping worker
    assert not offer(harness, model, 10)  # then rows wait for the round
    assert monitor.wait_limit() == 15.0  # rows queued: a quarter of flush_seconds at most
    harness.process()
    harness.now[0] += 1.0  # (the fleet counters take rows once a second)
    harness.process()
    # a partly filled window: nothing to do until its flush is due, 60 s after its first row
    assert monitor.wait_limit() == pytest.approx(59.0)
    assert offer(harness, model, 10)  # the worker may be asleep that long: wake it
    assert not offer(harness, model, 489)  # 499 queued
    assert offer(harness, model, 1)  # half the queue: wake the worker now


def test_without_flush_seconds_rows_are_taken_every_interval_until_they_stop(
    harness: Harness,
) -> None:
    model = load(harness)
    monitor = harness.monitor(model)
    offer(harness, model, 30)
    assert monitor.wait_limit() == math.inf  # no limit of its own: the worker's applies
    harness.process()  # takes them (the first rows go into the fleet counts at once)
    assert monitor.wait_limit() == math.inf  # rows came this round: more are likely coming
    harness.process()  # a round that took nothing
    assert monitor.wait_limit() is None  # a partial window without flush_seconds: nothing due
    assert offer(harness, model, 10)  # so the next row wakes the worker
    harness.process()
    harness.process()
    assert monitor.wait_limit() == math.inf  # the 10 rows wait for the fleet counts' second
    harness.now[0] += 1.0
    harness.process()
    assert monitor.wait_limit() is None


class CountingMonitor:
    """A Monitor that counts the worker's rounds and says how long it may wait."""

    def __init__(self, limit: float | None) -> None:
        self.model, self.version = "m", "1"
        self.limit = limit
        self.rounds = 0
        self.closed = threading.Event()

    def wait_limit(self) -> float | None:
        return self.limit

    def process(self) -> None:
        self.rounds += 1

    def close(self) -> None:
        self.closed.set()


def test_the_worker_runs_rounds_only_while_a_monitor_has_something_pending() -> None:
    worker = DriftWorker(interval=0.01)
    idle = CountingMonitor(limit=None)
    worker.add(idle)
    worker.start()
    try:
        wait_for(lambda: idle.rounds == 1, what="the round run when a monitor is added")
        # Nothing pending: the worker must stay asleep. Absence can only be observed over
        # a stretch of time: 20 of its 10 ms intervals, in which a polling worker would
        # have run ~20 rounds (not a wait for a state; the waits above and below poll).
        time.sleep(20 * 0.01)
        assert idle.rounds == 1
        worker.wake()  # what the tap does when a row comes
        wait_for(lambda: idle.rounds == 2, what="a round after wake()")
        busy = CountingMonitor(limit=math.inf)  # rows waiting: every interval
        worker.add(busy)
        wait_for(lambda: busy.rounds >= 5, what="rounds every interval while rows wait")
    finally:
        worker.stop()
    assert idle.closed.is_set() and busy.closed.is_set()


def count_feature_by_feature(fleet: FleetBins, rows: np.ndarray) -> np.ndarray:
    """The fleet counts the plain way: each feature's finite values, bin by bin."""
    out = np.zeros((len(fleet.layout.features), fleet.layout.widest), dtype=np.int64)
    for i, f in enumerate(fleet.columns):
        col = rows[:, f][np.isfinite(rows[:, f])]
        edges = fleet.edges[i]
        if fleet.categorical[i]:
            pos = np.minimum(np.searchsorted(edges, col), edges.size - 1)
            raw = np.where(edges[pos] == col, pos, edges.size)
        else:
            raw = np.searchsorted(edges, col, side="right")
        k = len(fleet.layout.reference_ratios[i])
        out[i, :k] = np.bincount(fleet.mapping[i][raw], minlength=k)
    return out


@pytest.mark.parametrize("seed", range(6))
def test_fleet_counts_of_all_features_at_once_equal_counting_one_by_one(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 3000
    columns = [
        rng.normal(size=n),
        rng.integers(0, 17, size=n).astype(float),  # discrete: a bin per value
        rng.integers(0, 8, size=n).astype(float),  # categorical
        np.round(rng.exponential(size=n), 1),  # ties, a sparse tail: merged bins
        np.where(rng.random(n) < 0.97, 0.0, rng.normal(size=n)),  # mostly one value
    ]
    reference = Reference.fit(
        np.column_stack(columns), [f"f{i}" for i in range(5)], [False, False, True, False, False]
    )
    bins, min_rows = int(rng.integers(2, 12)), int(rng.integers(20, 2000))
    fleet = FleetBins.build(reference, DriftFleetConfig(max_bins=bins, min_rows=min_rows))
    assert fleet is not None
    for size in (1, 50, 5000):  # 5000: more than one chunk of rows
        x = np.column_stack([c[rng.integers(0, n, size)] for c in columns])
        x += rng.choice([0.0, 0.0, 0.5, -3.0], size=x.shape)  # values outside the reference
        x[rng.random(x.shape) < 0.05] = np.nan
        x[rng.random(x.shape) < 0.02] = np.inf
        x[rng.random(x.shape) < 0.02] = -np.inf
        np.testing.assert_array_equal(fleet.count(x), count_feature_by_feature(fleet, x))


def test_queued_requests_add_nothing_for_the_garbage_collector_to_walk(
    harness: Harness,
) -> None:
    """Rows wait up to a second for the worker: long enough to be promoted to the collector's
    oldest generation and trigger full collections, unless queuing creates no tracked
    object (the tap keeps the request's tensor dicts, which hold only arrays)."""
    import gc

    model = load(harness, queue_rows=100_000)
    x = np.zeros((1, WIDTH), dtype=np.float32)
    requests = [({"x": x}, {"y": x[:, :1]}) for _ in range(5000)]
    monitor = harness.monitor(model)
    gc.collect()
    before = len(gc.get_objects())
    for inputs, outputs in requests:
        monitor.offer(inputs, outputs, 1)
    gc.collect()
    assert monitor.queued_rows == 5000
    assert len(gc.get_objects()) - before < 100
