"""CounterFamily and ArrayHistogram.observe: what prometheus_client would export, cheaper.

The request path's families (requests, rows, latencies, batch sizes) use these
instead of prometheus_client's Counter and Histogram; the exposition must not
change by a byte.
"""

from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics

from exporters.counter import CounterFamily
from exporters.histogram import ArrayHistogram

BUCKETS = (0.00005, 0.001, 0.25, 1.0, 10.0)


def exposition(registry: CollectorRegistry) -> tuple[list[bytes], list[bytes]]:
    """Both formats, without prometheus_client's ``_created`` series (the server turns them
    off for every family; this process may or may not have done so yet)."""

    def kept(text: bytes) -> list[bytes]:
        return [line for line in text.splitlines() if b"_created" not in line]

    return kept(generate_latest(registry)), kept(openmetrics(registry))


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c"]),
            st.sampled_from(["OK", "NOT_FOUND"]),
            st.integers(min_value=0, max_value=70),
        ),
        max_size=30,
    )
)
def test_counter_family_exports_what_prometheus_client_s_counter_does(
    incs: list[tuple[str, str, int]],
) -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    family = CounterFamily("x_requests_total", "Requests.", ["model", "code"], ours)
    reference = Counter("x_requests_total", "Requests.", ["model", "code"], registry=theirs)
    for model, code, amount in incs:
        family.labels(model, code).inc(amount)
        reference.labels(model, code).inc(amount)
    assert exposition(ours) == exposition(theirs)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["m1", "m2"]),
            st.one_of(
                st.floats(min_value=0, max_value=100, allow_nan=False),
                st.sampled_from(BUCKETS),
            ),
        ),
        max_size=40,
    )
)
def test_one_value_at_a_time_exports_what_prometheus_client_s_histogram_does(
    values: list[tuple[str, float]],
) -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    family = ArrayHistogram("x_duration_seconds", "Time.", ["model"], BUCKETS, ours, "seconds")
    reference = Histogram(
        "x_duration_seconds", "Time.", ["model"], buckets=BUCKETS, unit="seconds", registry=theirs
    )
    for model, value in values:
        family.labels(model).observe(value)
        reference.labels(model).observe(value)
    assert exposition(ours) == exposition(theirs)


def test_counters_only_go_up_and_check_their_labels() -> None:
    family = CounterFamily("x_total", "X.", ["a"], CollectorRegistry())
    with pytest.raises(ValueError, match="only go up"):
        family.labels("1").inc(-1)
    with pytest.raises(ValueError, match="expected labels"):
        family.labels("1", "2")
    assert family.labels("1") is family.labels("1")


def test_increments_from_many_threads_are_all_counted() -> None:
    registry = CollectorRegistry()
    child = CounterFamily("x_total", "X.", [], registry).labels()
    histogram = ArrayHistogram("h", "H.", [], (1.0,), registry).labels()

    def work() -> None:
        for _ in range(20_000):
            child.inc()
            histogram.observe(0.5)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert registry.get_sample_value("x_total") == 80_000
    assert registry.get_sample_value("h_count") == 80_000
