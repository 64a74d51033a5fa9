"""Drift of per-row layer means against the same layers on reference inputs.

The reference: the model runs once, at load, on the configured reference
input rows with its activation taps on (``ActivationTaps.profile``); each row
gives one mean per layer. Those ``(rows, layers)`` means are fitted as a
``detectors`` reference with the layer names as features. The window: the
most recent sampled live rows' layer means (``ActivationStats.window``). A
window is tested with ``detectors.drift.DriftDetector`` (its default tests,
combined per layer, Benjamini-Hochberg across layers) when it is read and
new batches arrived since the last test, never on the request path.

The window slides: successive results share rows, so a drifted verdict on
consecutive scrapes is one finding, not several.
"""

from __future__ import annotations

import threading

import numpy as np

from detectors.drift import DriftConfig, DriftDetector, DriftResult
from detectors.errors import DetectorError
from detectors.reference import Reference
from sidecar.insight.activations import ActivationStats


class LayerDriftError(ValueError):
    """The reference layer means cannot be fitted; the message says why."""


class LayerMeanDrift:
    """Tests the recent layer means of one model version against its reference."""

    def __init__(self, stats: ActivationStats, reference_means: np.ndarray, alpha: float) -> None:
        try:
            reference = Reference.fit(reference_means, stats.layers)
            self._detector = DriftDetector(reference, DriftConfig(alpha=alpha))
        except DetectorError as exc:
            raise LayerDriftError(str(exc)) from exc
        self._stats = stats
        self._lock = threading.Lock()
        self._tested_at = -1
        self._result: DriftResult | None = None

    @property
    def reference_rows(self) -> int:
        """Reference rows the layer means were fitted on."""
        return self._detector.reference.n_rows

    def result(self) -> DriftResult | None:
        """The verdict on the current window (re-tested only after new sampled batches)."""
        with self._lock:
            batches = self._stats.batches
            if batches != self._tested_at:
                window = self._stats.window()
                self._result = self._detector.score(window) if len(window) else None
                self._tested_at = batches
            return self._result
