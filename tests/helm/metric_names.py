"""Metric names the alert rules and dashboards use, checked against docs/metrics.md."""

from __future__ import annotations

import re
from collections.abc import Iterable

from tests.helm.chart import ROOT

METRICS_DOC = ROOT / "docs" / "metrics.md"

#: Names the rules and dashboards use that docs/metrics.md does not list yet, by
#: the issue that adds them. They come from shared/design/METRICS.md and the
#: branches in progress. When a name lands in docs/metrics.md a test says to take
#: it out of here; when the documented name differs, fix the rules and dashboards.
PENDING: dict[str, str] = {}


def metric_names(expressions: Iterable[str]) -> set[str]:
    """The sidecar_* families the expressions read (histogram series folded)."""
    names = {n for e in expressions for n in re.findall(r"\bsidecar_[a-z0-9_]+", e)}
    return {re.sub(r"_(bucket|count|sum)$", "", n) for n in names}


def documented() -> set[str]:
    """Families docs/metrics.md lists (none while it does not exist)."""
    if not METRICS_DOC.exists():
        return set()
    return set(re.findall(r"`(sidecar_[a-z0-9_]+)`", METRICS_DOC.read_text()))


def check(used: set[str], pending: Iterable[str]) -> None:
    """Every name used is documented or pending; no pending name is documented yet."""
    docs = documented()
    missing = used - docs - set(pending)
    assert not missing, f"metric names not in docs/metrics.md: {sorted(missing)}"
    landed = set(pending) & docs
    assert not landed, f"now in docs/metrics.md, take them out of PENDING: {sorted(landed)}"
