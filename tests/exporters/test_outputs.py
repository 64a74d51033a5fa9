"""OutputCollector: outputs analysed off the request path, bounded, exact at scrape time."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from exporters.outputs import OutputCollector, OutputMonitoring
from tests.exporters.scrape import wait_for

CLASSIFIER = OutputMonitoring(
    float_outputs=("p",), classification_output="p", class_names=("a", "b", "c")
)


def get(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_nothing_to_watch_means_no_state() -> None:
    collector = OutputCollector(CollectorRegistry())
    assert collector.stats("m", "1", OutputMonitoring()) is None


def test_state_survives_a_reload_with_the_same_config() -> None:
    registry = CollectorRegistry()
    collector = OutputCollector(registry)
    first = collector.stats("m", "1", CLASSIFIER)
    assert first is not None
    collector.submit(first, {"p": np.array([[0.1, 0.2, 0.7]])})
    assert collector.stats("m", "1", CLASSIFIER) is first
    changed = OutputMonitoring(float_outputs=("p",), regression_outputs=("p",))
    assert collector.stats("m", "1", changed) is not first
    assert get(registry, "sidecar_nonfinite_outputs_total", model="m", version="1", output="p") == 0


def test_scrape_analyses_what_is_queued() -> None:
    registry = CollectorRegistry()
    collector = OutputCollector(registry)
    stats = collector.stats("m", "1", CLASSIFIER)
    assert stats is not None
    for _ in range(5):
        collector.submit(stats, {"p": np.array([[0.1, 0.2, 0.7], [0.6, 0.3, 0.1]])})
    assert collector.pending == 5
    labels = {"model": "m", "version": "1"}
    assert get(registry, "sidecar_predictions_total", **labels, **{"class": "c"}) == 5
    assert get(registry, "sidecar_predictions_total", **labels, **{"class": "a"}) == 5
    assert get(registry, "sidecar_prediction_confidence_count", **labels) == 10
    assert collector.pending == 0


def test_the_worker_drains_without_a_scrape() -> None:
    collector = OutputCollector(CollectorRegistry(), interval=0.01)
    stats = collector.stats("m", "1", CLASSIFIER)
    assert stats is not None
    collector.start()
    try:
        collector.submit(stats, {"p": np.array([[0.1, 0.2, 0.7]])})
        wait_for(lambda: collector.pending == 0, what="the worker to drain the queue")
    finally:
        collector.stop()
    assert stats.class_counts.tolist() == [0, 0, 1, 0]


def test_stop_analyses_the_rest() -> None:
    collector = OutputCollector(CollectorRegistry(), interval=3600)
    stats = collector.stats("m", "1", CLASSIFIER)
    assert stats is not None
    collector.start()
    collector.submit(stats, {"p": np.array([[0.9, 0.05, 0.05]])})
    collector.stop()
    assert collector.pending == 0
    assert stats.class_counts.tolist() == [1, 0, 0, 0]


def test_queue_is_bounded_by_requests_and_bytes() -> None:
    registry = CollectorRegistry()
    collector = OutputCollector(registry, max_pending=2, max_pending_bytes=10_000)
    stats = collector.stats("m", "1", CLASSIFIER)
    assert stats is not None
    small = {"p": np.zeros((1, 3))}
    for _ in range(3):
        collector.submit(stats, small)
    assert collector.pending == 2
    assert get(registry, "sidecar_output_observations_dropped_total") == 1
    big = {"p": np.zeros((1000, 3))}  # 24 kB > 10 kB budget
    collector.submit(stats, big)
    assert collector.pending == 0  # the scrape above drained; the big one was refused
    assert get(registry, "sidecar_output_observations_dropped_total") == 2
    # unmonitored outputs cost nothing against the budget
    collector.submit(stats, {**small, "huge": np.zeros(100_000)})
    assert collector.pending == 1


def test_differing_class_dimensions_are_analysed_apart() -> None:
    registry = CollectorRegistry()
    collector = OutputCollector(registry)
    stats = collector.stats("m", "1", CLASSIFIER)
    assert stats is not None
    collector.submit(stats, {"p": np.array([[0.1, 0.8, 0.1]])})
    collector.submit(stats, {"p": np.array([[0.1, 0.1, 0.1, 0.7], [0.7, 0.1, 0.1, 0.1]])})
    collector.drain()
    assert stats.class_counts.tolist() == [1, 1, 0, 1]  # a, b, c, other


def test_a_failing_analysis_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    collector = OutputCollector(registry)
    good = collector.stats("good", "1", CLASSIFIER)
    bad = collector.stats("bad", "1", CLASSIFIER)
    assert good is not None and bad is not None
    collector.submit(bad, {"p": np.array([["not", "numbers", "!"]])})  # argmax of strings fails
    collector.submit(good, {"p": np.array([[0.1, 0.8, 0.1]])})
    with caplog.at_level(logging.ERROR, logger="exporters.outputs"):
        collector.drain()
    assert good.class_counts.tolist() == [0, 1, 0, 0]
    assert collector.pending == 0
    assert "output analysis of bad v1 failed" in caplog.text


def test_the_thread_drains_early_once_a_quarter_of_the_queue_is_used() -> None:
    collector = OutputCollector(CollectorRegistry(), interval=3600, max_pending=8)
    stats = collector.stats("m", "1", CLASSIFIER)
    assert stats is not None
    collector.start()
    try:
        collector.submit(stats, {"p": np.array([[0.1, 0.2, 0.7]])})  # wakes it: the wait starts
        collector.submit(stats, {"p": np.array([[0.8, 0.1, 0.1]])})  # 2 of 8: drain now
        wait_for(lambda: collector.pending == 0, what="the worker to drain before its interval")
    finally:
        collector.stop()
    assert stats.class_counts.tolist() == [1, 0, 1, 0]


def _snapshot(registry: CollectorRegistry) -> list[tuple[str, tuple[tuple[str, str], ...], float]]:
    return sorted(
        (s.name, tuple(sorted(s.labels.items())), s.value)
        for family in registry.collect()
        for s in family.samples
    )


@pytest.mark.parametrize("logits", [False, True])
def test_a_drain_of_many_requests_equals_draining_them_one_by_one(logits: bool) -> None:
    """One concatenation per output for the whole queue: the same classes, confidences,
    histogram values and NaN counts as analysing each request alone."""
    monitoring = OutputMonitoring(
        float_outputs=("p", "y"),
        classification_output="p",
        class_names=("a", "b", "c"),
        logits=logits,
        regression_outputs=("y",),
    )
    rng = np.random.default_rng(4)
    requests = []
    for i in range(40):
        rows = int(rng.integers(1, 5))
        p = rng.normal(size=(rows, 3)).astype(np.float32 if i % 3 else np.float64)
        if i % 7 == 0:
            p[0, 1] = np.nan  # a row without a class
        if i % 11 == 0:
            p = rng.normal(size=(rows, 4))  # a 4th class ("other"), another width
        y = rng.normal(size=(rows, 1)) * 100
        if i % 5 == 0:
            y[-1, 0] = np.inf
        requests.append({"p": p, "y": y})
    together, apart = CollectorRegistry(), CollectorRegistry()
    many, one = OutputCollector(together), OutputCollector(apart)
    stats_many, stats_one = many.stats("m", "1", monitoring), one.stats("m", "1", monitoring)
    assert stats_many is not None and stats_one is not None
    for outputs in requests:
        many.submit(stats_many, outputs)
        one.submit(stats_one, outputs)
        one.drain()
    assert many.pending == len(requests)
    many.drain()
    got, want = _snapshot(together), _snapshot(apart)
    assert [(name, labels) for name, labels, _ in got] == [(n, la) for n, la, _ in want]
    for (name, labels, value), (_, _, expected) in zip(got, want, strict=True):
        if name.endswith("_sum"):  # summed in another order: equal up to rounding
            assert value == pytest.approx(expected, rel=1e-12), (name, labels)
        else:
            assert value == expected, (name, labels)
    assert stats_many.class_counts.sum() > 0 and stats_many.nonfinite["y"] > 0


def test_queued_outputs_add_nothing_for_the_garbage_collector_to_walk() -> None:
    """Outputs wait up to a second for the thread: queuing them must create no object the
    collector tracks (they would be promoted and trigger full collections)."""
    import gc

    collector = OutputCollector(CollectorRegistry())
    stats = collector.stats("m", "1", CLASSIFIER)
    assert stats is not None
    requests = [{"p": np.array([[0.1, 0.2, 0.7]])} for _ in range(5000)]
    gc.collect()
    before = len(gc.get_objects())
    for outputs in requests:
        collector.submit(stats, outputs)
    gc.collect()
    assert collector.pending == 5000
    assert len(gc.get_objects()) - before < 100
