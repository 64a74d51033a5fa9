"""Scraping helpers for tests: fetch /metrics over HTTP and read samples from it."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.parser import text_string_to_metric_families

OPENMETRICS = "application/openmetrics-text;version=1.0.0"


@dataclass(frozen=True)
class Scrape:
    """One parsed OpenMetrics exposition."""

    families: dict[str, Metric]

    def value(self, sample: str, **labels: str) -> float | None:
        """The value of the sample with exactly these labels, or None."""
        for family in self.families.values():
            for s in family.samples:
                if s.name == sample and s.labels == labels:
                    return float(s.value)
        return None

    def label_values(self, sample: str, label: str) -> set[str]:
        """Every value ``label`` takes on samples named ``sample``."""
        return {
            s.labels[label]
            for family in self.families.values()
            for s in family.samples
            if s.name == sample and label in s.labels
        }


def scrape(port: int, host: str = "127.0.0.1") -> Scrape:
    """GET /metrics as OpenMetrics and parse it."""
    request = urllib.request.Request(
        f"http://{host}:{port}/metrics", headers={"Accept": OPENMETRICS}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read().decode()
    return Scrape({f.name: f for f in text_string_to_metric_families(text)})


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``predicate`` until true; AssertionError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)
