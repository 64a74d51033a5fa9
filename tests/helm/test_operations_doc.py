"""The no-chart sidecar snippet in docs/operations.md is valid Kubernetes, a
configuration the server accepts, and in step with what the chart renders."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from sidecar.config import load_server_config
from tests.helm.chart import ROOT, Helm, container, one, pod_spec, validate_kubernetes

DOC = ROOT / "docs" / "operations.md"
HEADING = "## Add the sidecar to an existing Deployment without the chart"


def snippet() -> list[dict[str, Any]]:
    """The objects of the first yaml block under the heading."""
    text = DOC.read_text()
    assert HEADING in text, f"{DOC}: heading {HEADING!r} not found"
    block = re.search(r"```yaml\n(.*?)```", text[text.index(HEADING) :], re.S)
    assert block, "no yaml block under the heading"
    return [doc for doc in yaml.safe_load_all(block.group(1)) if doc]


def test_snippet_is_valid_kubernetes() -> None:
    objects = snippet()
    assert [o["kind"] for o in objects] == ["ConfigMap", "Deployment"]
    assert validate_kubernetes(objects) == []


def test_snippet_matches_its_server_config(tmp_path: Path) -> None:
    objects = snippet()
    path = tmp_path / "sidecar.yaml"
    path.write_text(one(objects, "ConfigMap")["data"]["sidecar.yaml"])
    config = load_server_config(path, env={})
    spec = pod_spec(objects)
    server = container(spec, "server")
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    assert ports == {"grpc": config.grpc.port, "metrics": config.metrics.port}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert server[probe]["grpc"] == {"port": config.grpc.port}
    drain = config.shutdown.drain_delay_seconds + config.shutdown.grace_period_seconds
    assert spec["terminationGracePeriodSeconds"] > drain
    liveness = server["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] > drain
    app = container(spec, "app")
    assert {"name": "INFERENCE_SIDECAR_GRPC_ADDRESS", "value": f"localhost:{config.grpc.port}"} in (
        app["env"]
    )
    annotations = one(objects, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(config.metrics.port)


def test_snippet_is_in_step_with_the_chart(helm: Helm) -> None:
    objects = snippet()
    values = {
        "mode": "sidecar",
        "app": {"image": "registry.example/shop/api:1.4.2"},
        "modelRepository": {"source": "pvc", "pvc": {"claimName": "model-store"}},
        "config": yaml.safe_load(one(objects, "ConfigMap")["data"]["sidecar.yaml"]),
    }
    chart_spec = pod_spec(helm.template(values))
    chart_server = container(chart_spec, "server")
    spec = pod_spec(objects)
    server = container(spec, "server")
    assert server["command"] == chart_server["command"]
    assert server["args"] == chart_server["args"]
    assert server["resources"] == chart_server["resources"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert server[probe].items() <= chart_server[probe].items(), probe
    assert server["securityContext"].items() <= chart_server["securityContext"].items()
    assert spec["terminationGracePeriodSeconds"] == chart_spec["terminationGracePeriodSeconds"]
    paths = {m["mountPath"]: m.get("readOnly", False) for m in server["volumeMounts"]}
    assert paths == {m["mountPath"]: m.get("readOnly", False) for m in chart_server["volumeMounts"]}
