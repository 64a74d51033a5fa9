"""Drift end to end: two server processes with the shipped digits example (its
config.yaml monitors drift against its reference.npy) and a copy of it named
"steady", one real Prometheus scraping both with the shipped rules.

1. One replica: traffic from the reference distribution (the hold-out rows the
   model never saw) gives drift 0 on a real scrape; the same rows with three
   pixels brightened give drift 1, and the drifted features are exactly those.
2. The fleet: both replicas count rows over the reference's bins, the recording
   rules add them up and compute a chi-squared statistic equal to scipy's on
   the same counts, and the fleet alert goes pending on exactly the shifted
   features of the shifted model, never on "steady", which neither replica
   alone has enough rows to test.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton
from scipy.stats import chi2_contingency

from sidecar.examples import MODEL_REPOSITORY
from tests.helm.test_alerts import ALERTS
from tests.labels.process import ServerProcess
from tests.prom import Prometheus, _rfc3339, prometheus

pytestmark = [pytest.mark.prometheus, pytest.mark.slow]

#: Pixels brightened in the shifted traffic (never constant in the reference).
SHIFTED = (19, 27, 43)
DIGITS = MODEL_REPOSITORY / "digits"


def shifted(x: np.ndarray) -> np.ndarray:
    out = x.copy()
    out[:, SHIFTED] = np.minimum(out[:, SHIFTED] + 4, 16)
    return out


def send(address: str, model: str, x: np.ndarray, per_request: int = 50) -> None:
    client = triton.InferenceServerClient(address)
    try:
        for start in range(0, len(x), per_request):
            part = np.ascontiguousarray(x[start : start + per_request], dtype=np.float32)
            inp = triton.InferInput("input", list(part.shape), "FP32")
            inp.set_data_from_numpy(part)
            client.infer(model, [inp])
    finally:
        client.close()


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """Two server processes serving the digits example and a copy, "steady"."""
    repository = tmp_path / "models"
    for name in ("digits", "steady"):
        shutil.copytree(DIGITS, repository / name)
    servers = [
        ServerProcess(tmp_path / f"replica{i}", repository, {"enabled": False}) for i in (1, 2)
    ]
    with ExitStack() as stack:
        for server in servers:  # start both, then wait: they load in parallel
            stack.callback(server.stop)
            server.start()
        for server in servers:
            server.wait_ready()
        yield servers[0], servers[1]


def fleet_chi2_matches_scipy(prom: Prometheus, model: str, feature: str) -> None:
    """The recorded fleet statistic equals scipy's on the same table of counts
    (all read at one instant, once the rule group finished evaluating it)."""
    now = time.time()
    deadline = time.monotonic() + 30
    while not any(
        g["name"] == "inference-sidecar.drift-fleet" and _rfc3339(g["lastEvaluation"]) > now
        for g in prom.rules()
    ):
        assert time.monotonic() < deadline, "the fleet rules stopped evaluating"
        time.sleep(0.1)
    at = f"{now:.3f}"

    def values(expr: str) -> dict[str, float]:
        result = prom.api("query", query=expr, time=at)["result"]
        return {r["metric"].get("bin", ""): float(r["value"][1]) for r in result}

    labels = f'model="{model}", scope="inputs", feature="{feature}"'
    live = values(f"sidecar:drift_bin_rows:increase1h{{{labels}}}")
    ref = values(f"sidecar:drift_reference_bin_rows{{{labels}}}")
    bins = sorted(live, key=int)
    table = np.array([[live[b] for b in bins], [ref[b] for b in bins]])
    table = table[:, table.sum(axis=0) > 0]
    expected = chi2_contingency(table, correction=False)[0]
    (got,) = values(f"sidecar:drift_fleet_chi2:1h{{{labels}}}").values()
    assert got == pytest.approx(expected, rel=1e-9)


def test_drift_on_one_replica_and_across_the_fleet(
    tmp_path: Path, replicas: tuple[ServerProcess, ServerProcess]
) -> None:
    one = replicas[0]
    holdout = np.load(DIGITS / "holdout_features.npy")
    reference = np.load(DIGITS / "reference.npy")
    rng = np.random.default_rng(5)
    with prometheus(
        tmp_path / "prom",
        {"sidecar": [f"127.0.0.1:{r.metrics_port}" for r in replicas]},
        rule_files=[ALERTS],
        scrape_interval="2s",  # two models' drift series: a scrape can take most of a second here
    ) as prom:
        prom.wait_until_up("sidecar")

        # 1. One replica, windows of 400 rows (the example's window_size).
        at_one = f'model="digits", instance="127.0.0.1:{one.metrics_port}"'
        inputs = f'{{{at_one}, scope="inputs"}}'
        evaluations = f"sidecar_drift_evaluations_total{inputs}"
        send(one.address, "digits", holdout[rng.permutation(len(holdout))[:400]])
        prom.wait_for(evaluations, lambda v: v == 1)
        prom.wait_for_next_scrape("sidecar")
        assert prom.values(f"sidecar_drift_detected{{{at_one}}}", "scope") == {
            "inputs": 0,
            "outputs": 0,
        }
        assert prom.value(f"sidecar_drift_features_drifted{inputs}") == 0
        assert prom.value(f"sidecar_drift_window_samples{inputs}") == 400
        assert prom.value(f"sidecar_drift_reference_samples{inputs}") == 1347
        assert prom.value(f"sidecar_drift_features_skipped_total{inputs}") == 5  # constant pixels

        send(one.address, "digits", shifted(holdout[rng.permutation(len(holdout))[:400]]))
        prom.wait_for(evaluations, lambda v: v == 2)
        prom.wait_for_next_scrape("sidecar")
        assert prom.value(f"sidecar_drift_detected{inputs}") == 1
        assert prom.value(f"sidecar_drift_features_drifted{inputs}") == len(SHIFTED)
        adjusted = f'sidecar_drift_p_value{{{at_one}, scope="inputs", test="adjusted"}}'
        drifted = prom.values(f"{adjusted} <= 0.05", "feature")
        assert set(drifted) == {f"input[{i}]" for i in SHIFTED}
        # every exported p-value is a real one
        assert prom.query("sidecar_drift_p_value != sidecar_drift_p_value") == []  # no NaN
        assert prom.query("sidecar_drift_p_value > 1 or sidecar_drift_p_value < 0") == []

        # 2. The fleet: 600 reference rows per replica to "steady", shifted ones to digits.
        rows = reference[rng.permutation(len(reference))[:1200]]
        for replica, part in zip(replicas, (rows[:600], rows[600:]), strict=True):
            send(replica.address, "steady", part, per_request=200)
            send(replica.address, "digits", shifted(part), per_request=200)
        steady = 'sidecar_drift_bin_rows_total{model="steady", scope="inputs", feature="input[19]"}'
        prom.wait_for(f"sum({steady})", lambda v: v == 1200)
        # each replica counted its own 600 rows; only the fleet has the alert's 1000
        assert set(prom.values(f"sum by (instance) ({steady})", "instance").values()) == {600.0}
        rows_1h = 'sidecar:drift_rows:increase1h{model="steady", scope="inputs"}'
        prom.wait_for(f"min({rows_1h})", lambda v: v is not None and v >= 1200)
        for model in ("steady", "digits"):
            for feature in ("input[19]", "input[36]"):
                fleet_chi2_matches_scipy(prom, model, feature)

        want = {("digits", f"input[{i}]") for i in SHIFTED}
        alerts = 'ALERTS{alertname="SidecarFleetDrift", scope="inputs"}'
        prom.wait_for(f"count({alerts})", lambda v: v == len(want))
        found = {
            (a["labels"]["model"], a["labels"]["feature"])
            for a in prom.alerts()
            if a["labels"]["alertname"] == "SidecarFleetDrift" and a["labels"]["scope"] == "inputs"
        }
        assert found == want
        assert not [a for a in prom.alerts() if a["labels"].get("model") == "steady"]
        z = prom.values('sidecar:drift_fleet_chi2_z:1h{model="steady", scope="inputs"}', "feature")
        assert len(z) > 40 and max(z.values()) < 4.75
