"""docs/metrics.md's "Delayed labels" table lists exactly what LabelMetrics exports."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import CollectorRegistry

from exporters.labels import LabelMetrics

DOCS = Path(__file__).resolve().parents[2] / "docs"


def documented() -> dict[str, tuple[str, frozenset[str]]]:
    section = (DOCS / "metrics.md").read_text().split("\n## Delayed labels\n", 1)[1]
    section = section.split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        if not re.match(r"^\|\s*`sidecar_", line):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        assert len(cells) == 5 and all(cells[i] for i in (0, 1, 3, 4)), line
        labels = frozenset(x.strip() for x in cells[2].split(",") if x.strip())
        rows[cells[0].strip("`")] = (cells[1], labels)
    return rows


def exported() -> dict[str, tuple[str, frozenset[str]]]:
    registry = CollectorRegistry()
    metrics = LabelMetrics(registry, (1.0,), (1.0,), "memory")
    metrics.prepare_model("clf", "1", ("a", "b"), confusion=True)
    metrics.prepare_model("reg", "1", ())
    found = {}
    for family in registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        labels: set[str] = set()
        for sample in family.samples:
            labels |= set(sample.labels) - {"le"}
        found[name] = (family.type, frozenset(labels))
    return found


def test_metrics_table_matches_the_registry() -> None:
    assert documented() == exported()


def test_every_family_has_samples_from_the_start() -> None:
    registry = CollectorRegistry()
    metrics = LabelMetrics(registry, (1.0,), (1.0,), "memory")
    metrics.prepare_model("clf", "1", ("a", "b", "c"), confusion=True)
    metrics.prepare_model("reg", "1", ())
    empty = [f.name for f in registry.collect() if not f.samples]
    assert empty == []
    cells = [s for f in registry.collect() for s in f.samples
             if s.name == "sidecar_confusion_matrix_total"]  # fmt: skip
    assert len(cells) == 9 and all(s.value == 0 for s in cells)


def test_labels_doc_names_every_config_field() -> None:
    from sidecar.config import LabelsConfig, LabelStoreConfig

    text = (DOCS / "labels.md").read_text()
    for field in [*LabelStoreConfig.model_fields, *LabelsConfig.model_fields]:
        assert f"`{field}`" in text, field
