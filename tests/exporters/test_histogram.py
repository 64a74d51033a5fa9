"""ArrayHistogram: exactly what prometheus_client's Histogram would export, one array at a time."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram

from exporters.histogram import ArrayHistogram

BUCKETS = (-1.0, 0.0, 0.25, 0.5, 1.0, 10.0)


def exported(registry: CollectorRegistry, name: str) -> dict[tuple[str, str], float]:
    return {
        (s.name, s.labels.get("le", "")): s.value
        for family in registry.collect()
        for s in family.samples
        if s.name.startswith(name) and not s.name.endswith("_created")
    }


finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
on_bounds = st.sampled_from(BUCKETS)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.one_of(finite, on_bounds), max_size=20), max_size=5))
def test_matches_prometheus_client(batches: list[list[float]]) -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    array = ArrayHistogram("h", "doc", ["m"], BUCKETS, ours).labels("a")
    reference = Histogram("h", "doc", ["m"], buckets=BUCKETS, registry=theirs).labels("a")
    for batch in batches:
        array.observe_array(np.asarray(batch, dtype=np.float64))
        for v in batch:
            reference.observe(v)
    a, b = exported(ours, "h"), exported(theirs, "h")
    assert a.keys() == {k for k in b if k[0] == "h_bucket"}  # negative buckets: no _sum/_count
    for key, got in a.items():
        assert got == b[key], key


def test_positive_buckets_have_sum_and_count() -> None:
    registry = CollectorRegistry()
    child = ArrayHistogram("h", "doc", [], (1.0, 2.0), registry).labels()
    child.observe_array(np.array([0.5, 1.0, 1.5, 3.0], dtype=np.float32))
    child.observe(2.0)
    got = exported(registry, "h")
    assert got[("h_bucket", "1.0")] == 2
    assert got[("h_bucket", "2.0")] == 4
    assert got[("h_bucket", "+Inf")] == 5
    assert got[("h_count", "")] == 5
    assert got[("h_sum", "")] == pytest.approx(8.0)


def test_children_may_have_their_own_buckets() -> None:
    registry = CollectorRegistry()
    family = ArrayHistogram("h", "doc", ["m"], (1.0, 2.0), registry)
    family.labels("default").observe(1.5)
    custom = family.labels("custom", buckets=(10.0, 20.0, 30.0))
    custom.observe_array(np.array([15.0, 25.0]))
    assert family.labels("custom", buckets=(99.0,)) is custom  # buckets apply at creation only
    les = {
        (s.labels["m"], s.labels["le"])
        for f in registry.collect()
        for s in f.samples
        if s.name == "h_bucket"
    }
    assert les == {
        ("default", "1.0"),
        ("default", "2.0"),
        ("default", "+Inf"),
        ("custom", "10.0"),
        ("custom", "20.0"),
        ("custom", "30.0"),
        ("custom", "+Inf"),
    }
    family.remove("custom")
    assert {s.labels["m"] for f in registry.collect() for s in f.samples} == {"default"}


@pytest.mark.parametrize("buckets", [(), (1.0, 1.0), (2.0, 1.0), (float("inf"),)])
def test_bad_buckets_are_refused(buckets: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="strictly increasing"):
        ArrayHistogram("h", "doc", [], buckets, CollectorRegistry())


def test_label_count_and_le_are_checked() -> None:
    registry = CollectorRegistry()
    with pytest.raises(ValueError, match="reserved"):
        ArrayHistogram("h", "doc", ["le"], (1.0,), registry)
    family = ArrayHistogram("h", "doc", ["a", "b"], (1.0,), registry)
    with pytest.raises(ValueError, match="expected labels"):
        family.labels("only-one")


def test_duplicate_names_are_refused_by_the_registry() -> None:
    registry = CollectorRegistry()
    ArrayHistogram("h", "doc", [], (1.0,), registry)
    with pytest.raises(ValueError, match="Duplicated"):
        Histogram("h", "doc", registry=registry)


def test_concurrent_observers_lose_nothing() -> None:
    registry = CollectorRegistry()
    child = ArrayHistogram("h", "doc", [], (0.5,), registry).labels()
    batch = np.array([0.25, 0.75] * 50)

    def work() -> None:
        for _ in range(200):
            child.observe_array(batch)
            child.observe(0.1)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = exported(registry, "h")
    assert got[("h_count", "")] == 4 * 200 * 101
    assert got[("h_bucket", "0.5")] == 4 * 200 * 51
