"""docs/metrics.md and the real /metrics exposition say the same, in both directions."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.exposition import generate_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from exporters.gpu import GpuCollector
from sidecar.app import AppParts
from sidecar.examples import MODEL_REPOSITORY
from sidecar.metrics_listener import ServerMetrics
from tests.exporters.conftest import copy_examples
from tests.exporters.fakes import FakeGpu, FakeNvml, FakeTorchCuda
from tests.exporters.scrape import Scrape, scrape, wait_for
from tests.exporters.traffic import send_example_traffic
from tests.helpers import running_server, server_config

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
CONDITIONAL = "(conditional"


@dataclass(frozen=True)
class Row:
    """One family as docs/metrics.md describes it."""

    name: str  # as written, with _total on counters
    type: str
    labels: frozenset[str]
    unit: str
    meaning: str
    section: str

    @property
    def family(self) -> str:
        """The family name an OpenMetrics parser reports (counters lose ``_total``)."""
        return self.name.removesuffix("_total") if self.type == "counter" else self.name

    @property
    def conditional(self) -> bool:
        """Listed in a section marked '(conditional: ...)': present only on some machines."""
        return CONDITIONAL in self.section


def documented() -> list[Row]:
    rows: list[Row] = []
    section = ""
    for line in DOC.read_text().splitlines():
        if line.startswith("#"):
            section = line.lstrip("#").strip()
            continue
        match = re.match(r"^\|\s*`([a-z_:][a-z0-9_:]*)`\s*\|", line)
        if not match:
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        assert len(cells) >= 5, f"docs/metrics.md: table row needs 5 columns: {line}"
        name, kind, labels, unit = cells[0].strip("`"), cells[1], cells[2], cells[3]
        meaning = "|".join(cells[4:]).strip()
        rows.append(
            Row(
                name,
                kind,
                frozenset(x.strip() for x in labels.split(",") if x.strip()),
                unit,
                meaning,
                section,
            )
        )
    return rows


def exposed_labels(family: Metric) -> frozenset[str]:
    return frozenset(k for s in family.samples for k in s.labels if k not in ("le", "quantile"))


def compare(rows: list[Row], families: dict[str, Metric], where: str) -> list[str]:
    """Every difference between the rows and the families, as readable lines."""
    problems: list[str] = []
    by_family = {r.family: r for r in rows}
    for missing in sorted(set(by_family) - set(families)):
        problems.append(f"documented but not in {where}: {by_family[missing].name}")
    for extra in sorted(set(families) - set(by_family)):
        family = families[extra]
        shown = f"{extra}_total" if family.type == "counter" else extra
        problems.append(f"in {where} but not documented: {shown} ({family.type})")
    for name in sorted(set(by_family) & set(families)):
        row, family = by_family[name], families[name]
        if row.type != family.type:
            problems.append(f"{row.name}: documented as {row.type}, exposed as {family.type}")
        if family.unit and row.unit != family.unit:
            problems.append(f"{row.name}: documented unit {row.unit!r}, exposed {family.unit!r}")
        if not family.samples:
            problems.append(f"{row.name}: no samples in {where}, so its labels went unchecked")
        elif exposed_labels(family) != row.labels:
            problems.append(
                f"{row.name}: documented labels {sorted(row.labels)}, "
                f"exposed {sorted(exposed_labels(family))}"
            )
        if not row.meaning:
            problems.append(f"{row.name}: no meaning given")
    return problems


@pytest.fixture(scope="module")
def live_scrape(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scrape]:
    """A server that served digits (classification) and diabetes (regression) requests,
    refused one, and failed to load a model whose monitoring config does not fit it."""
    repository = copy_examples(tmp_path_factory.mktemp("repository"), "digits", "diabetes")
    broken = copy_examples(tmp_path_factory.mktemp("broken"), "digits") / "digits"
    (broken / "config.yaml").write_text(
        "monitoring:\n  task: classification\n  classification:\n"
        "    output: probabilities\n    class_names: [a, b, c]\n"
    )
    broken.rename(repository / "misconfigured")
    config = server_config(repository, limits={"max_batch_rows": 8})
    metrics = ServerMetrics(config.metrics, gpu=GpuCollector(None, lambda: None))
    with running_server(config, AppParts(metrics=metrics)) as thread:
        send_example_traffic(thread.address, requests=3)
        client = triton.InferenceServerClient(thread.address)
        x = np.zeros((9, 64), dtype=np.float32)
        inp = triton.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        with pytest.raises(InferenceServerException, match="RESOURCE_EXHAUSTED"):
            client.infer("digits", [inp])
        fill_drift_window(client, rows=400, batch=8)  # the digits example's window
        client.close()
        wait_for(
            lambda: (
                scrape(metrics.http.port).value(
                    "sidecar_drift_evaluations_total", model="digits", version="1", scope="inputs"
                )
                == 1
            ),
            what="a drift evaluation of digits",
        )
        yield scrape(metrics.http.port)


def fill_drift_window(client: triton.InferenceServerClient, rows: int, batch: int) -> None:
    """Send ``rows`` hold-out rows to digits, ``batch`` rows per request."""
    holdout = np.load(MODEL_REPOSITORY / "digits" / "holdout_features.npy").astype(np.float32)
    x = holdout[np.arange(rows) % len(holdout)]
    for start in range(0, rows, batch):
        part = x[start : start + batch]
        inp = triton.InferInput("input", list(part.shape), "FP32")
        inp.set_data_from_numpy(part)
        client.infer("digits", [inp])


def test_doc_table_is_parsed() -> None:
    rows = documented()
    names = [r.name for r in rows]
    assert len(names) == len(set(names)), "a family is documented twice"
    assert "sidecar_inference_requests_total" in names
    assert any(r.conditional for r in rows) and not all(r.conditional for r in rows)
    kinds = {r.type for r in rows}
    assert kinds <= {"counter", "gauge", "histogram"}, kinds


def test_doc_matches_the_live_exposition(live_scrape: Scrape) -> None:
    rows = [r for r in documented() if not r.conditional]
    problems = compare(rows, live_scrape.families, "a live server's /metrics")
    assert not problems, "docs/metrics.md and /metrics differ:\n" + "\n".join(problems)


def test_conditional_gpu_families_match_the_fake_gpu_collector() -> None:
    registry = CollectorRegistry()
    registry.register(
        GpuCollector(
            FakeNvml([FakeGpu(), FakeGpu()]),
            lambda: FakeTorchCuda(allocated=[1, 2], reserved=[3, 4]),
        )
    )
    text = generate_latest(registry).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    rows = [r for r in documented() if r.conditional and r.section.startswith("Hardware")]
    problems = compare(rows, families, "the GPU collector's output")
    assert not problems, "docs/metrics.md and the GPU collector differ:\n" + "\n".join(problems)


def test_the_live_server_exposes_no_gpu_family_without_a_gpu(live_scrape: Scrape) -> None:
    conditional = {r.family for r in documented() if r.conditional}
    assert not conditional & set(live_scrape.families)


def test_monitoring_mismatch_is_a_load_failure(live_scrape: Scrape) -> None:
    assert live_scrape.value("sidecar_model_load_failures_total", model="misconfigured") == 1
    assert live_scrape.value("sidecar_model_ready", model="misconfigured", version="1") == 0
