"""A real Prometheus scrapes a live server: what it stores equals the traffic sent."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from exporters.gpu import GpuCollector
from sidecar.app import AppParts
from sidecar.metrics_listener import ServerMetrics
from tests.exporters.traffic import DIGIT_NAMES, send_example_traffic
from tests.helpers import running_server, server_config
from tests.prom import PrometheusError, prometheus

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"


def doc_promql() -> list[str]:
    """Every ```promql block of docs/metrics.md."""
    blocks = re.findall(r"```promql\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    return [" ".join(block.split()) for block in blocks]


@pytest.mark.prometheus
def test_prometheus_sees_what_was_sent(digits_and_diabetes: Path, tmp_path: Path) -> None:
    config = server_config(digits_and_diabetes)
    metrics = ServerMetrics(config.metrics, gpu=GpuCollector(None, lambda: None))
    with (
        running_server(config, AppParts(metrics=metrics)) as server,
        prometheus(
            tmp_path / "prometheus", {"sidecar": [f"127.0.0.1:{metrics.http.port}"]}
        ) as prom,
    ):
        prom.wait_until_up("sidecar")  # one scrape before any traffic: the 0 baselines
        sent = send_example_traffic(server.address, requests=12, seed=1)

        ok = 'sidecar_inference_requests_total{model="digits",code="OK"}'
        assert prom.wait_for(ok, lambda v: v == sent.ok["digits"]) == 12
        prom.wait_for_next_scrape("sidecar")  # the remaining series come from the same scrape

        assert prom.value('sidecar_inference_requests_total{model="diabetes",code="OK"}') == 12
        for model in ("digits", "diabetes"):
            rows = prom.value(f'sidecar_inference_samples_total{{model="{model}"}}')
            assert rows == sent.rows[model]
        for (model, code), count in sent.errors.items():
            expr = f'sidecar_inference_requests_total{{model="{model}",code="{code}"}}'
            assert prom.value(expr) == count, expr

        # predicted-class counts equal the classes the model returned to the client
        predicted = prom.values('sidecar_predictions_total{model="digits"}', "class")
        assert predicted == {name: float(sent.classes[name]) for name in DIGIT_NAMES}

        for q in (0.5, 0.99):
            latency = prom.value(
                f"histogram_quantile({q}, sum by (le) "
                '(sidecar_request_duration_seconds_bucket{model="digits"}))'
            )
            assert latency is not None and math.isfinite(latency) and 0 < latency < 10
        median = prom.value(
            "histogram_quantile(0.5, sum by (le) "
            '(sidecar_output_value_bucket{model="diabetes",output="prediction"}))'
        )
        assert median is not None and 10 < median <= 1000  # diabetes progression scores

        # rate() over the scrapes before and after the traffic sees it
        increase = prom.value(f"increase({ok}[1m])")
        assert increase is not None and increase > 0
        # no _created series reach Prometheus
        assert prom.query('{__name__=~"sidecar_.*_created"}') == []

        # every PromQL example in docs/metrics.md is valid and evaluates
        examples = doc_promql()
        assert len(examples) >= 10
        for expr in examples:
            prom.query(expr)  # raises PrometheusError on a parse or evaluation error
        rps = prom.values(examples[0], "model")
        assert set(rps) == {"", "digits", "diabetes"}

        # the helper reports a bad query and a wait that never comes true
        with pytest.raises(PrometheusError, match="parse error"):
            prom.query("sum(")
        with pytest.raises(PrometheusError, match=r"timed out after 0\.3s"):
            prom.wait_for(ok, lambda v: v == -1, timeout=0.3)
