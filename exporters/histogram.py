"""A Prometheus histogram that takes a whole numpy array per call, or one value cheaply.

Output-distribution metrics observe one value per row of a batch. With
prometheus_client's ``Histogram`` that is one Python call per row; here a batch
costs one ``searchsorted`` and one ``bincount`` whatever its size, so observing
a 1,000-row batch stays O(1) Python work. One value (``observe``, the request
path's latencies) is a bisect and two additions under one lock, a fraction of
prometheus_client's per-bucket locked values. Exposed as an ordinary histogram
(``_bucket``/``_sum``/``_count``): PromQL cannot tell the difference.
"""

from __future__ import annotations

import bisect
import itertools
import threading
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString


def _bounds(name: str, buckets: Sequence[float]) -> np.ndarray:
    bounds = [float(b) for b in buckets]
    if bounds and bounds[-1] == float("inf"):
        bounds = bounds[:-1]
    if not bounds or any(b <= a for a, b in itertools.pairwise(bounds)):
        raise ValueError(f"{name}: buckets must be strictly increasing, got {list(buckets)}")
    return np.asarray(bounds, dtype=np.float64)


class ArrayHistogramChild:
    """The counts of one label set; ``observe_array`` adds a batch of values."""

    __slots__ = ("_bounds", "_bounds_list", "_counts", "_lock", "_sum", "le")

    def __init__(self, bounds: np.ndarray) -> None:
        self._bounds = bounds
        self._bounds_list = [float(b) for b in bounds]
        self.le = [floatToGoString(b) for b in self._bounds_list] + ["+Inf"]
        # a plain list: one value is a list item increment, not a numpy scalar round trip
        self._counts = [0] * (len(bounds) + 1)  # last: above every bound
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        """Add one value (non-finite values are the caller's to filter out).

        Cheap enough for the request path: a bisect and two additions under a lock.
        """
        index = bisect.bisect_left(self._bounds_list, value)
        with self._lock:
            self._counts[index] += 1
            self._sum += value

    def observe_array(self, values: np.ndarray) -> None:
        """Add every element of ``values`` (finite values only: filter before calling)."""
        if values.size == 1:
            self.observe(float(values.reshape(-1)[0]))
            return
        if values.size == 0:
            return
        flat = values.reshape(-1)
        # bucket i holds values <= bounds[i]: the first bound >= value ("le" semantics)
        counts = np.bincount(np.searchsorted(self._bounds, flat, side="left"), minlength=0)
        total = float(flat.sum(dtype=np.float64))
        with self._lock:
            mine = self._counts
            for index, count in enumerate(counts.tolist()):
                mine[index] += count
            self._sum += total

    def snapshot(self) -> tuple[list[int], float]:
        """Cumulative bucket counts (last = +Inf = count) and the sum, read consistently."""
        with self._lock:
            counts = list(self._counts)
            total = self._sum
        return list(itertools.accumulate(counts)), total


class ArrayHistogram(Collector):
    """A histogram family with labels whose children accept numpy arrays."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        registry: CollectorRegistry | None = None,
        unit: str = "",
    ) -> None:
        if "le" in labelnames:
            raise ValueError(f"{name}: 'le' is reserved for histogram buckets")
        self.name = name
        self._documentation = documentation
        self._labelnames = tuple(labelnames)
        self._unit = unit
        self._bounds = _bounds(name, buckets)
        self._children: dict[tuple[str, ...], ArrayHistogramChild] = {}
        self._lock = threading.Lock()
        if registry is not None:  # None: a collector that owns this family collects it
            registry.register(self)

    @property
    def buckets(self) -> tuple[float, ...]:
        """Default upper bounds, without +Inf."""
        return tuple(float(b) for b in self._bounds)

    def labels(self, *values: str, buckets: Sequence[float] | None = None) -> ArrayHistogramChild:
        """The child for these label values (created on first use).

        ``buckets`` gives this child its own upper bounds (Prometheus keeps every
        label set's ``le`` series apart, so children of one family may differ);
        it only applies when the child is created.
        """
        if len(values) != len(self._labelnames):
            raise ValueError(f"{self.name}: expected labels {self._labelnames}, got {values}")
        key = tuple(str(v) for v in values)
        child = self._children.get(key)
        if child is None:
            bounds = self._bounds if buckets is None else _bounds(self.name, buckets)
            with self._lock:
                child = self._children.setdefault(key, ArrayHistogramChild(bounds))
        return child

    def remove(self, *values: str) -> None:
        """Forget one label set."""
        with self._lock:
            self._children.pop(tuple(str(v) for v in values), None)

    def _family(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(
            self.name, self._documentation, labels=self._labelnames, unit=self._unit
        )

    def describe(self) -> Iterable[Metric]:
        """The family without samples (for the registry's duplicate check)."""
        return [self._family()]

    def collect(self) -> Iterator[Metric]:
        """One histogram family with every child's buckets, sum and count."""
        family = self._family()
        with self._lock:
            children = list(self._children.items())
        for key, child in children:
            cumulative, total = child.snapshot()
            family.add_metric(list(key), list(zip(child.le, cumulative, strict=True)), total)
        yield family
