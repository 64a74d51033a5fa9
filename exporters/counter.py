"""A labelled Prometheus counter for the request path: an addition under a lock per call.

prometheus_client's ``Counter.inc`` checks the metric's state and takes the lock
of a value object on every call; the request path increments two counters per
request, so here a child is a float behind its family's lock and the family is a
collector that yields an ordinary ``CounterMetricFamily`` at scrape time: the
exposition is the same (``name_total``, children in the order they were
created), PromQL cannot tell the difference.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client.metrics_core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry


class CounterChild:
    """The value of one label set."""

    __slots__ = ("_lock", "_value")

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock
        self._value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        """Add ``amount`` (not negative: counters only go up)."""
        if amount < 0:
            raise ValueError(f"counters only go up: cannot add {amount}")
        with self._lock:
            self._value += amount

    @property
    def value(self) -> float:
        """The count so far."""
        return self._value


class CounterFamily(Collector):
    """A counter family with labels; ``labels(...)`` gives (and keeps) each child."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.name = name.removesuffix("_total")
        self._documentation = documentation
        self._labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], CounterChild] = {}
        self._lock = threading.Lock()
        if registry is not None:
            registry.register(self)

    def labels(self, *values: str) -> CounterChild:
        """The child for these label values (created at 0 on first use)."""
        if len(values) != len(self._labelnames):
            raise ValueError(f"{self.name}: expected labels {self._labelnames}, got {values}")
        key = tuple(str(v) for v in values)
        child = self._children.get(key)
        if child is None:
            with self._lock:
                child = self._children.setdefault(key, CounterChild(self._lock))
        return child

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(self.name, self._documentation, labels=self._labelnames)

    def describe(self) -> Iterable[Metric]:
        """The family without samples (for the registry's duplicate check)."""
        return [self._family()]

    def collect(self) -> Iterator[Metric]:
        """Every child's value."""
        family = self._family()
        with self._lock:
            values = [(key, child.value) for key, child in self._children.items()]
        for key, value in values:
            family.add_metric(list(key), value)
        yield family
