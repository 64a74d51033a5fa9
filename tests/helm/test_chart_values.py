"""Bad values fail `helm template` (and `helm install`, `helm lint`) with a message
that names the value: the schema for one value at a time, the chart's checks for
values that only go wrong together."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helm.chart import CHART, OPERATOR_API, Helm

SIDECAR = {"mode": "sidecar", "app": {"image": "registry.example/app:1"}}

#: (values, what the error must say)
BAD_VALUES: dict[str, tuple[dict[str, Any], str]] = {
    "unknown mode": (
        {"mode": "daemonset"},
        "at '/mode': value must be one of 'standalone', 'sidecar'",
    ),
    "negative gRPC port": (
        {"config": {"grpc": {"port": -1}}},
        "at '/config/grpc/port': minimum: got -1, want 1",
    ),
    "port 0 (any free port) has no place in a pod": (
        {"config": {"metrics": {"port": 0}}},
        "at '/config/metrics/port': minimum: got 0, want 1",
    ),
    "port above 65535": (
        {"config": {"grpc": {"port": 70000}}},
        "at '/config/grpc/port': maximum: got 70,000, want 65,535",
    ),
    "negative app port": (
        {**SIDECAR, "app": {"image": "a:1", "ports": [{"name": "http", "containerPort": -80}]}},
        "at '/app/ports/0/containerPort': minimum: got -80, want 1",
    ),
    "GPU count without a GPU device": (
        {"gpu": {"count": 1}, "config": {"device": "cpu"}},
        'gpu.count is 1 but config.device is "cpu"',
    ),
    "GPU device without a GPU count": (
        {"config": {"device": "cuda"}},
        'config.device is "cuda" but gpu.count is 0',
    ),
    "GPU index beyond the GPUs requested": (
        {"config": {"device": "cuda:2"}, "gpu": {"count": 2}},
        'config.device is "cuda:2" but gpu.count is 2: the container sees GPUs cuda:0 to cuda:1',
    ),
    "negative GPU count": (
        {"gpu": {"count": -1}},
        "at '/gpu/count': minimum: got -1, want 0",
    ),
    "unknown device": (
        {"config": {"device": "tpu"}},
        "at '/config/device': 'tpu' does not match pattern",
    ),
    "sidecar mode without the application image": (
        {"mode": "sidecar"},
        "app.image is required when mode is sidecar",
    ),
    "typo in a server setting": (
        {"config": {"grpc": {"prot": 9001}}},
        "at '/config/grpc': additional properties 'prot' not allowed",
    ),
    "typo in a model setting": (
        {
            "models": {"digits": {"batching": {"max_batch": 8}}},
            "modelRepository": {"source": "pvc", "pvc": {"claimName": "m"}},
        },
        "at '/models/digits/batching': additional properties 'max_batch' not allowed",
    ),
    "model setting of the wrong type": (
        {"models": {"digits": {"monitoring": {"task": "ranking"}}}},
        "at '/models/digits/monitoring/task': value must be one of",
    ),
    "model repository path chosen by the chart": (
        {"config": {"model_repository": "/data"}},
        "at '/config': additional properties 'model_repository' not allowed",
    ),
    "negative drain time": (
        {"config": {"shutdown": {"grace_period_seconds": -5}}},
        "at '/config/shutdown/grace_period_seconds': minimum: got -5, want 0",
    ),
    "unknown top-level value": (
        {"replicas": 3},
        "additional properties 'replicas' not allowed",
    ),
    "unknown model source": (
        {"modelRepository": {"source": "s3"}},
        "at '/modelRepository/source': value must be one of",
    ),
    "model configs with the bundled examples": (
        {"models": {"digits": {}}},
        "models gives configs for digits but modelRepository.source is bundled",
    ),
    "pvc without a claim": (
        {"modelRepository": {"source": "pvc"}},
        "modelRepository.pvc.claimName is required when modelRepository.source is pvc",
    ),
    "image source without an image": (
        {"modelRepository": {"source": "image"}},
        "modelRepository.image.repository is required when modelRepository.source is image",
    ),
    "configMap source without items": (
        {"modelRepository": {"source": "configMap", "configMap": {"name": "tiny"}}},
        "modelRepository.configMap.items is required",
    ),
    "configMap item escaping the repository": (
        {
            "modelRepository": {
                "source": "configMap",
                "configMap": {"name": "t", "items": [{"key": "k", "path": "../etc/passwd"}]},
            }
        },
        "at '/modelRepository/configMap/items/0/path': 'not' failed",
    ),
    "configMap item clashing with a rendered model config": (
        {
            "models": {"digits": {}},
            "modelRepository": {
                "source": "configMap",
                "configMap": {"name": "t", "items": [{"key": "c", "path": "digits/config.yaml"}]},
            },
        },
        "modelRepository.configMap.items puts digits/config.yaml, which models.digits also",
    ),
    "termination grace shorter than the drain": (
        {"terminationGracePeriodSeconds": 25},
        "terminationGracePeriodSeconds (25) must exceed the server's drain time, "
        "config.shutdown.drain_delay_seconds + grace_period_seconds = 30 s",
    ),
    "liveness that would kill a draining server": (
        {"probes": {"liveness": {"periodSeconds": 5, "failureThreshold": 3}}},
        "probes.liveness: periodSeconds × failureThreshold = 15 s must exceed the server's "
        "drain time (30 s)",
    ),
    "server ports that collide": (
        {"config": {"metrics": {"port": 8001}}},
        "config.grpc.port and config.metrics.port are both 8001",
    ),
    "TLS on the gRPC port without a plaintext health port for the probes": (
        {"config": {"grpc": {"tls": {"cert_file": "/t/tls.crt", "key_file": "/t/tls.key"}}}},
        "config.grpc.tls.cert_file is set (TLS on the gRPC port) but config.grpc.health_port "
        "is not: Kubernetes' gRPC probes cannot speak TLS",
    ),
    "health port on the gRPC port": (
        {"config": {"grpc": {"health_port": 8001}}},
        "config.grpc.health_port and config.grpc.port are both 8001",
    ),
    "health port on the metrics port": (
        {"config": {"grpc": {"health_port": 8002}}},
        "config.grpc.health_port and config.metrics.port are both 8002",
    ),
    "health port 0 (any free port) cannot be probed": (
        {"config": {"grpc": {"health_port": 0}}},
        "at '/config/grpc/health_port'",
    ),
    "app port that collides with the health port": (
        {
            **SIDECAR,
            "app": {"image": "a:1", "ports": [{"name": "h", "containerPort": 8003}]},
            "config": {"grpc": {"health_port": 8003}},
        },
        "app.ports: containerPort 8003 is the server's port",
    ),
    "app port that collides with the server": (
        {**SIDECAR, "app": {"image": "a:1", "ports": [{"name": "m", "containerPort": 8002}]}},
        "app.ports: containerPort 8002 is the server's port",
    ),
    "server overrides in extraEnv": (
        {"extraEnv": [{"name": "SIDECAR_GRPC__PORT", "value": "9000"}]},
        "extraEnv: SIDECAR_GRPC__PORT overrides a setting the chart derives",
    ),
    "two Redis URLs": (
        {"labels": {"redis": {"url": "redis://r:6379/0", "existingSecret": "s"}}},
        "labels.redis.url and labels.redis.existingSecret are both set",
    ),
    "label store environment set twice": (
        {
            "labels": {"redis": {"existingSecret": "s"}},
            "extraEnv": [{"name": "SIDECAR_LABELS__URL", "value": "redis://r"}],
        },
        "extraEnv: SIDECAR_LABELS__URL conflicts with labels.redis",
    ),
    "not a Redis URL": (
        {"labels": {"redis": {"url": "http://r:6379"}}},
        "at '/labels/redis/url': 'http://r:6379' does not match pattern",
    ),
    "autoscaling range upside down": (
        {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}},
        "autoscaling.minReplicas (5) is larger than autoscaling.maxReplicas (2)",
    ),
    "disruption budget with both bounds": (
        {"podDisruptionBudget": {"minAvailable": 1}},
        "podDisruptionBudget: set exactly one of maxUnavailable and minAvailable",
    ),
    "unknown monitor kind": (
        {"prometheus": {"monitor": {"kind": "Probe"}}},
        "at '/prometheus/monitor/kind': value must be one of 'ServiceMonitor', 'PodMonitor'",
    ),
    "bad scrape interval": (
        {"prometheus": {"monitor": {"interval": "15 seconds"}}},
        "at '/prometheus/monitor/interval': '15 seconds' does not match pattern",
    ),
    "bad image digest": (
        {"image": {"digest": "latest"}},
        "at '/image/digest': 'latest' does not match pattern",
    ),
}


@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_bad_values_fail_with_a_message_naming_the_value(helm: Helm, case: str) -> None:
    values, message = BAD_VALUES[case]
    error = helm.template_error(values)
    assert message in error, error


def test_service_monitor_needs_the_service(helm: Helm) -> None:
    """Only with the Operator's CRDs does a ServiceMonitor render, and need the Service."""
    values = {"service": {"enabled": False}}
    assert helm.template(values)  # nothing to monitor through: annotations only
    error = helm.template_error(values, (OPERATOR_API,))
    assert "prometheus.monitor.kind is ServiceMonitor but service.enabled is false" in error
    assert helm.template({**values, "prometheus": {"monitor": {"kind": "PodMonitor"}}})


def test_lint_rejects_bad_values_too(helm: Helm) -> None:
    proc = helm.run("lint", "--strict", "--set", "mode=daemonset", str(CHART), check=False)
    assert proc.returncode != 0
    assert "at '/mode': value must be one of 'standalone', 'sidecar'" in proc.stdout + proc.stderr


def test_helm_install_rejects_bad_values_and_prints_notes(helm: Helm) -> None:
    """`helm install` (client-side dry run: no cluster) checks the same values."""
    base = ["install", "demo", str(CHART), "--dry-run=client", "--namespace", "serving"]
    bad = helm.run(*base, "--set", "mode=sidecar", check=False)
    assert bad.returncode != 0
    assert "app.image is required when mode is sidecar" in bad.stderr
    good = helm.run(*base, "--set", "mode=sidecar", "--set", "app.image=registry.example/app:1")
    notes = good.stdout[good.stdout.index("NOTES:") :]
    assert 'The application container "app" reaches the server at localhost:8001' in notes
    assert "prometheus.io/* scrape annotations" in notes


METRICS_TLS = {"cert_file": "/t/tls.crt", "key_file": "/t/tls.key"}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"config": {"metrics": {"tls": METRICS_TLS}}},
            "config.metrics.tls is on (HTTPS metrics port) and the chart renders a monitor: "
            "set prometheus.monitor.tls.ca.secretName",
        ),
        (
            {
                "config": {"metrics": {"tls": {**METRICS_TLS, "client_ca_file": "/t/ca.crt"}}},
                "prometheus": {"monitor": {"tls": {"ca": {"secretName": "ca"}}}},
            },
            "config.metrics.tls.client_ca_file is set (mutual TLS on the metrics port): "
            "set prometheus.monitor.tls.clientCert.secretName",
        ),
        (
            {"prometheus": {"monitor": {"tls": {"ca": {"secretName": "ca", "key": ""}}}}},
            "at '/prometheus/monitor/tls/ca/key'",
        ),
        (
            {"prometheus": {"monitor": {"tls": {"caSecret": "ca"}}}},
            "at '/prometheus/monitor/tls': additional properties 'caSecret' not allowed",
        ),
    ],
)
def test_https_metrics_need_what_prometheus_verifies_with(
    helm: Helm, values: dict[str, Any], message: str
) -> None:
    """With the Operator the monitor must be able to verify (and, for mutual TLS,
    authenticate to) the HTTPS metrics port; without it the annotations say https."""
    error = helm.template_error(values, (OPERATOR_API,))
    assert message in error, error
