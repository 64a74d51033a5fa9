"""Memory under a flood of unlabelled predictions and bogus labels, at CI scale (slow).

``benchmarks/label_memory.py`` (docs/benchmarks.md has the 10-million-row
figures) runs ``inference-sidecar serve`` with the memory label store and
floods it. With ``labels.max_entries`` 50,000 and twelve times as many
predictions, the server's RSS stays within the documented bound (about
500 bytes per kept prediction over the baseline), and 50,000 distinct bogus
label values add no metric series.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.slow

MAX_ENTRIES = 50_000
PER_ENTRY_BOUND = 1000  # bytes: twice the ~470 measured with 1,000,000 entries
SLACK_MB = 60  # transient buffers (gRPC messages, numpy batches, allocator arenas)


def test_flood_of_predictions_and_bogus_labels_stays_bounded() -> None:
    result = subprocess.run(
        [sys.executable, "benchmarks/label_memory.py", "--predictions", str(12 * MAX_ENTRIES),
         "--bogus", "50000", "--max-entries", str(MAX_ENTRIES)],
        cwd=ROOT, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["pending"] == MAX_ENTRIES
    bound = MAX_ENTRIES * PER_ENTRY_BOUND / 2**20 + SLACK_MB
    for phase in ("after_predictions_mb", "after_bogus_mb"):
        growth = figures[phase] - figures["baseline_mb"]
        assert growth < bound, f"{phase}: +{growth:.0f} MB, bound {bound:.0f} MB ({figures})"
    assert figures["series_after"] == figures["series_before"]
