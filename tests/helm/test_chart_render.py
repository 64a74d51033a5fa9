"""helm lint and helm template of the chart, both modes and several value sets,
every rendered object validated against the Kubernetes schemas."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar.config import ServerConfig, load_model_config, load_server_config
from tests.helm.chart import (
    CHART,
    OPERATOR_API,
    Helm,
    check_operator_objects,
    config_map,
    container,
    find,
    one,
    pod_spec,
    validate_kubernetes,
)

APP: dict[str, Any] = {
    "image": "registry.example/shop/api:1.4.2",
    "ports": [{"name": "http", "containerPort": 8080}],
    "env": [{"name": "LOG_LEVEL", "value": "info"}],
    "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}},
    "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
    "securityContext": {"runAsNonRoot": True, "readOnlyRootFilesystem": True},
}
CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
DIGITS: dict[str, Any] = {
    "batching": {"enabled": True, "max_batch_size": 32, "max_queue_delay_us": 500},
    "monitoring": {
        "task": "classification",
        "classification": {
            "output": "probabilities",
            "class_names": CLASSES,
        },
    },
}
DIABETES: dict[str, Any] = {
    "monitoring": {"task": "regression", "regression": {"outputs": ["prediction"]}}
}

#: Value sets covering both modes, every model source, GPUs, autoscaling, Redis.
SCENARIOS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "standalone-gpu-pvc-autoscaled": {
        "config": {"device": "cuda", "logging": {"level": "DEBUG"}},
        "gpu": {"count": 1, "nodeSelector": {"nvidia.com/gpu.present": "true"}},
        "modelRepository": {"source": "pvc", "pvc": {"claimName": "model-store"}},
        "autoscaling": {
            "enabled": True,
            "minReplicas": 2,
            "maxReplicas": 6,
            "metrics": [
                {
                    "type": "Pods",
                    "pods": {
                        "metric": {"name": "sidecar_inflight_requests"},
                        "target": {"type": "AverageValue", "averageValue": "8"},
                    },
                }
            ],
        },
        "podDisruptionBudget": {"minAvailable": 1, "maxUnavailable": None},
        "service": {"type": "LoadBalancer"},
    },
    "standalone-image-models": {
        "image": {"digest": "sha256:" + "ab" * 32},
        "config": {
            "grpc": {"port": 9001, "max_message_bytes": 16 * 1024 * 1024},
            "metrics": {"port": 9002, "latency_buckets": [0.00005, 0.001, 0.01, 0.1, 1.0]},
            "limits": {"max_batch_rows": 1024},
            "shutdown": {"drain_delay_seconds": 2.5, "grace_period_seconds": 30},
            "threads": {"executor_workers": 2},
            "startup": {"strict_readiness": False},
        },
        "models": {"digits": DIGITS, "diabetes": DIABETES},
        "modelRepository": {
            "source": "image",
            "image": {"repository": "registry.example/models", "tag": "2026-11-01"},
        },
        "labels": {"redis": {"url": "redis://:secret@redis.serving.svc:6379/0"}},
        "prometheus": {"monitor": {"kind": "PodMonitor", "labels": {"release": "kps"}}},
        "extraEnv": [{"name": "OMP_NUM_THREADS", "value": "2"}],
    },
    "sidecar": {
        "mode": "sidecar",
        "app": APP,
        "models": {"digits": DIGITS},
        "modelRepository": {
            "source": "configMap",
            "configMap": {
                "name": "tiny-models",
                "items": [{"key": "digits.onnx", "path": "digits/1/model.onnx"}],
            },
        },
        "config": {"device": "cpu"},
    },
    "sidecar-native-pvc-gpu": {
        "mode": "sidecar",
        "sidecar": {"native": True},
        "app": {**APP, "grpcAddressEnv": "MODEL_SERVER"},
        "config": {"device": "cuda:1"},
        "gpu": {"count": 2},
        "models": {"digits": DIGITS},
        "modelRepository": {
            "source": "pvc",
            "pvc": {"claimName": "model-store", "subPath": "repository"},
        },
        "labels": {"redis": {"existingSecret": "label-store", "existingSecretKey": "redis-url"}},
        "terminationGracePeriodSeconds": 120,
    },
    "tls-servicemonitor": {
        "config": {
            "grpc": {
                "tls": {
                    "cert_file": "/etc/sidecar-tls/tls.crt",
                    "key_file": "/etc/sidecar-tls/tls.key",
                },
                "health_port": 8003,
            },
            "metrics": {
                "tls": {
                    "cert_file": "/etc/sidecar-tls/tls.crt",
                    "key_file": "/etc/sidecar-tls/tls.key",
                }
            },
        },
        "extraVolumes": [{"name": "tls", "secret": {"secretName": "sidecar-tls"}}],
        "extraVolumeMounts": [{"name": "tls", "mountPath": "/etc/sidecar-tls", "readOnly": True}],
        "prometheus": {
            "monitor": {
                "tls": {"serverName": "scorer.example", "ca": {"secretName": "sidecar-tls"}}
            }
        },
    },
    "sidecar-mtls-podmonitor": {
        "mode": "sidecar",
        "app": APP,
        "config": {
            "grpc": {
                "port": 9001,
                "tls": {
                    "cert_file": "/etc/sidecar-tls/tls.crt",
                    "key_file": "/etc/sidecar-tls/tls.key",
                    "client_ca_file": "/etc/sidecar-tls/ca.crt",
                },
                "health_port": 9003,
            },
            "metrics": {
                "port": 9002,
                "tls": {
                    "cert_file": "/etc/sidecar-tls/tls.crt",
                    "key_file": "/etc/sidecar-tls/tls.key",
                    "client_ca_file": "/etc/sidecar-tls/ca.crt",
                },
            },
        },
        "extraVolumes": [{"name": "tls", "secret": {"secretName": "sidecar-tls"}}],
        "extraVolumeMounts": [{"name": "tls", "mountPath": "/etc/sidecar-tls", "readOnly": True}],
        "prometheus": {
            "monitor": {
                "kind": "PodMonitor",
                "tls": {
                    "ca": {"secretName": "sidecar-ca", "key": "root.pem"},
                    "clientCert": {"secretName": "prometheus-client"},
                },
            }
        },
    },
    "metrics-off": {
        "config": {"metrics": {"enabled": False}},
        "podDisruptionBudget": {"enabled": False},
        "serviceAccount": {"create": False},
    },
}
OPERATOR = {"without-operator": (), "with-operator": (OPERATOR_API,)}


@pytest.fixture(scope="module", params=list(SCENARIOS))
def scenario(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module", params=list(OPERATOR))
def apis(request: pytest.FixtureRequest) -> tuple[str, ...]:
    return OPERATOR[request.param]


@pytest.fixture(scope="module")
def rendered(helm: Helm, scenario: str, apis: tuple[str, ...]) -> list[dict[str, Any]]:
    return helm.template(SCENARIOS[scenario], apis)


def chart_values() -> dict[str, Any]:
    """The chart's values.yaml."""
    values: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    return values


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Helm's merge of values: maps merge key by key, null removes a key."""
    out = dict(base)
    for key, value in over.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def render(helm: Helm, values: dict[str, Any], operator: bool = False) -> list[dict[str, Any]]:
    return helm.template(values, (OPERATOR_API,) if operator else ())


# --------------------------------------------------------------------------- every value set


def test_lint(helm: Helm, scenario: str) -> None:
    out = helm.lint(SCENARIOS[scenario])
    assert "0 chart(s) failed" in out


def test_every_object_is_valid_kubernetes(rendered: list[dict[str, Any]]) -> None:
    skipped = validate_kubernetes(rendered)
    assert set(skipped) <= {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
    check_operator_objects(rendered)


def test_server_accepts_the_rendered_config(
    rendered: list[dict[str, Any]], scenario: str, tmp_path: Path
) -> None:
    data = config_map(rendered)["data"]
    server_file = tmp_path / "sidecar.yaml"
    server_file.write_text(data["sidecar.yaml"])
    config = load_server_config(server_file, env={})
    # The server sees exactly what the values say: the chart's defaults with the
    # release's values over them, nothing lost, every number still the number.
    expected = merge(chart_values()["config"], SCENARIOS[scenario].get("config", {}))
    assert config.model_dump(mode="json", exclude_unset=True, by_alias=True) == expected
    models = {k.removeprefix("model.").removesuffix(".yaml"): v for k, v in data.items()}
    models = {k: v for k, v in models.items() if k not in ("sidecar", "model-layout.sh")}
    assert set(models) == set(SCENARIOS[scenario].get("models", {}))
    for name, text in models.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.yaml").write_text(text)
        loaded = load_model_config(tmp_path / name / "config.yaml")
        dumped_model = loaded.model_dump(mode="json", exclude_unset=True, by_alias=True)
        assert dumped_model == yaml.safe_load(text) == SCENARIOS[scenario]["models"][name]


def test_server_container_is_hardened(rendered: list[dict[str, Any]]) -> None:
    spec = pod_spec(rendered)
    server = container(spec, "server")
    security = server["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert security["seccompProfile"]["type"] == "RuntimeDefault"
    mounts = {m["mountPath"]: m["name"] for m in server["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert spec["automountServiceAccountToken"] is False
    for init in spec.get("initContainers", []):
        assert init["securityContext"] == security, init["name"]


def test_probes_use_the_grpc_health_service(rendered: list[dict[str, Any]], scenario: str) -> None:
    """On the gRPC port, or on the plaintext health port when there is one (with TLS on
    the gRPC port there must be: kubelet's gRPC probes cannot speak TLS)."""
    server = container(pod_spec(rendered), "server")
    grpc = SCENARIOS[scenario].get("config", {}).get("grpc", {})
    port = grpc.get("port", 8001)
    health = grpc.get("health_port")
    if "tls" in grpc:
        assert health is not None
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert server[probe]["grpc"] == {"port": health or port}, probe
    assert {"name": "grpc", "containerPort": port, "protocol": "TCP"} in server["ports"]
    health_ports = [p for p in server["ports"] if p["name"] == "grpc-health"]
    if health is None:
        assert health_ports == []
    else:
        assert health_ports == [{"name": "grpc-health", "containerPort": health, "protocol": "TCP"}]


def test_termination_grace_outlasts_the_drain(
    rendered: list[dict[str, Any]], scenario: str, helm: Helm
) -> None:
    values = chart_values()
    shutdown = {**values["config"]["shutdown"]}
    shutdown.update(SCENARIOS[scenario].get("config", {}).get("shutdown", {}))
    drain = shutdown["drain_delay_seconds"] + shutdown["grace_period_seconds"]
    chosen = SCENARIOS[scenario].get("terminationGracePeriodSeconds")
    expected = chosen or math.ceil(drain + values["terminationMarginSeconds"])
    spec = pod_spec(rendered)
    assert spec["terminationGracePeriodSeconds"] == expected
    assert spec["terminationGracePeriodSeconds"] > drain
    liveness = container(spec, "server")["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] > drain


def test_scraping(rendered: list[dict[str, Any]], scenario: str, apis: tuple[str, ...]) -> None:
    """A ServiceMonitor or PodMonitor with the Operator, else prometheus.io annotations."""
    values = SCENARIOS[scenario]
    enabled = values.get("config", {}).get("metrics", {}).get("enabled", True)
    annotations = one(rendered, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    monitors = find(rendered, "ServiceMonitor") + find(rendered, "PodMonitor")
    server = container(pod_spec(rendered), "server")
    port = values.get("config", {}).get("metrics", {}).get("port", 8002)
    if not enabled:
        assert not monitors and "prometheus.io/scrape" not in annotations
        assert [p["name"] for p in server["ports"]] == ["grpc"]
        return
    assert {"name": "metrics", "containerPort": port, "protocol": "TCP"} in server["ports"]
    https = "tls" in values.get("config", {}).get("metrics", {})
    if apis:
        kind = values.get("prometheus", {}).get("monitor", {}).get("kind", "ServiceMonitor")
        assert [m["kind"] for m in monitors] == [kind]
        assert "prometheus.io/scrape" not in annotations
        endpoints = monitors[0]["spec"][
            "endpoints" if kind == "ServiceMonitor" else "podMetricsEndpoints"
        ]
        assert [e.get("scheme", "http") for e in endpoints] == ["https" if https else "http"]
        assert all(("tlsConfig" in e) == https for e in endpoints)
    else:
        assert not monitors
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == str(port)
        assert annotations["prometheus.io/path"] == "/metrics"
        assert annotations.get("prometheus.io/scheme", "http") == ("https" if https else "http")


# --------------------------------------------------------------------------- modes


def test_standalone_runs_the_server_alone(helm: Helm) -> None:
    objects = render(helm, {})
    spec = pod_spec(objects)
    assert [c["name"] for c in spec["containers"]] == ["server"]
    assert "initContainers" not in spec
    server = container(spec, "server")
    assert server["args"] == ["serve", "--config", "/etc/sidecar/sidecar.yaml"]
    ports = {p["name"]: p["port"] for p in one(objects, "Service")["spec"]["ports"]}
    assert ports == {"grpc": 8001, "metrics": 8002}
    assert one(objects, "Deployment")["spec"]["replicas"] == 1
    assert one(objects, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    assert not find(objects, "HorizontalPodAutoscaler") and not find(objects, "Secret")
    named = container(pod_spec(render(helm, {"probes": {"service": "digits"}})), "server")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert named[probe]["grpc"] == {"port": 8001, "service": "digits"}


def test_sidecar_runs_next_to_the_app(helm: Helm) -> None:
    objects = render(helm, SCENARIOS["sidecar"])
    spec = pod_spec(objects)
    assert [c["name"] for c in spec["containers"]] == ["app", "server"]
    app = container(spec, "app")
    assert app["image"] == APP["image"]
    assert app["env"][0] == {"name": "INFERENCE_SIDECAR_GRPC_ADDRESS", "value": "localhost:8001"}
    assert app["env"][1:] == APP["env"]
    assert app["readinessProbe"] == APP["readinessProbe"]
    ports = {p["name"]: p["port"] for p in one(objects, "Service")["spec"]["ports"]}
    assert ports == {"grpc": 8001, "metrics": 8002, "http": 8080}


def test_native_sidecar_starts_before_and_stops_after_the_app(helm: Helm) -> None:
    spec = pod_spec(render(helm, SCENARIOS["sidecar-native-pvc-gpu"]))
    assert [c["name"] for c in spec["containers"]] == ["app"]
    assert [c["name"] for c in spec["initContainers"]] == ["model-layout", "server"]
    assert container(spec, "server")["restartPolicy"] == "Always"
    assert container(spec, "app")["env"][0] == {"name": "MODEL_SERVER", "value": "localhost:8001"}


# --------------------------------------------------------------------------- pieces


def test_gpu_request_node_selector_and_tolerations(helm: Helm) -> None:
    spec = pod_spec(render(helm, SCENARIOS["standalone-gpu-pvc-autoscaled"]))
    resources = container(spec, "server")["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1
    assert resources["requests"]["nvidia.com/gpu"] == 1
    assert resources["requests"]["memory"] == "512Mi"  # the GPU is added, nothing replaced
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec[
        "tolerations"
    ]
    cpu_only = pod_spec(render(helm, {}))
    assert "nvidia.com/gpu" not in container(cpu_only, "server")["resources"]["limits"]
    assert "tolerations" not in cpu_only and "nodeSelector" not in cpu_only


def test_autoscaling_leaves_replicas_to_the_hpa(helm: Helm) -> None:
    objects = render(helm, SCENARIOS["standalone-gpu-pvc-autoscaled"])
    assert "replicas" not in one(objects, "Deployment")["spec"]
    hpa = one(objects, "HorizontalPodAutoscaler")["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 6)
    assert hpa["metrics"][0]["pods"]["metric"]["name"] == "sidecar_inflight_requests"
    assert hpa["scaleTargetRef"]["name"] == one(objects, "Deployment")["metadata"]["name"]
    assert one(objects, "PodDisruptionBudget")["spec"]["minAvailable"] == 1
    default_hpa = one(render(helm, {"autoscaling": {"enabled": True}}), "HorizontalPodAutoscaler")
    assert default_hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 70


def test_model_repository_from_a_pvc(helm: Helm) -> None:
    spec = pod_spec(render(helm, SCENARIOS["standalone-gpu-pvc-autoscaled"]))
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"] == {
        "claimName": "model-store",
        "readOnly": True,
    }
    server = container(spec, "server")
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in server["volumeMounts"]
    assert server["args"][-2:] == ["--model-repository", "/models"]


def test_model_repository_from_a_pvc_with_chart_model_configs(helm: Helm) -> None:
    spec = pod_spec(render(helm, SCENARIOS["sidecar-native-pvc-gpu"]))
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in volumes["models"]
    assert volumes["model-source"]["persistentVolumeClaim"]["claimName"] == "model-store"
    source_mount = {
        "name": "model-source",
        "mountPath": "/models/.source",
        "readOnly": True,
        "subPath": "repository",
    }
    assert source_mount in container(spec, "server")["volumeMounts"]
    assert source_mount in container(spec, "model-layout")["volumeMounts"]
    items = volumes["layout"]["configMap"]["items"]
    assert {"key": "model.digits.yaml", "path": "models/digits.yaml"} in items


def test_model_repository_from_an_image(helm: Helm) -> None:
    spec = pod_spec(render(helm, SCENARIOS["standalone-image-models"]))
    assert [c["name"] for c in spec["initContainers"]] == ["copy-models", "model-layout"]
    copy = container(spec, "copy-models")
    assert copy["image"] == "registry.example/models:2026-11-01"
    assert {"name": "SOURCE", "value": "/models"} in copy["env"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["models"]["emptyDir"] == {"sizeLimit": "2Gi"}
    assert container(spec, "server")["image"] == "inference-sidecar@sha256:" + "ab" * 32


def test_model_repository_from_a_configmap(helm: Helm) -> None:
    spec = pod_spec(render(helm, SCENARIOS["sidecar"]))
    assert "initContainers" not in spec
    sources = {v["name"]: v for v in spec["volumes"]}["models"]["projected"]["sources"]
    assert sources[0]["configMap"] == {
        "name": "tiny-models",
        "items": [{"key": "digits.onnx", "path": "digits/1/model.onnx"}],
    }
    assert sources[1]["configMap"]["items"] == [
        {"key": "model.digits.yaml", "path": "digits/config.yaml"}
    ]


def _label_store_env(objects: list[dict[str, Any]]) -> dict[str, str]:
    """The server's SIDECAR_LABELS__* environment, Secret references resolved."""
    secrets = {s["metadata"]["name"]: s.get("stringData", {}) for s in find(objects, "Secret")}
    secrets["label-store"] = {"redis-url": "redis://redis.serving.svc:6379/1"}  # existing
    env = {}
    for item in container(pod_spec(objects), "server").get("env", []):
        if item["name"].startswith("SIDECAR_LABELS__"):
            ref = item.get("valueFrom", {}).get("secretKeyRef")
            env[item["name"]] = secrets[ref["name"]][ref["key"]] if ref else item["value"]
    return env


def test_redis_url_reaches_the_server_from_a_secret(helm: Helm) -> None:
    objects = render(helm, SCENARIOS["standalone-image-models"])
    secret = one(objects, "Secret")
    assert secret["stringData"] == {"url": "redis://:secret@redis.serving.svc:6379/0"}
    env = container(pod_spec(objects), "server")["env"]
    assert env[:2] == [
        {"name": "SIDECAR_LABELS__BACKEND", "value": "redis"},
        {
            "name": "SIDECAR_LABELS__URL",
            "valueFrom": {"secretKeyRef": {"name": secret["metadata"]["name"], "key": "url"}},
        },
    ]
    assert "secret@" not in yaml.safe_dump(config_map(objects))
    existing = render(helm, SCENARIOS["sidecar-native-pvc-gpu"])
    assert not find(existing, "Secret")
    assert _label_store_env(existing) == {
        "SIDECAR_LABELS__BACKEND": "redis",
        "SIDECAR_LABELS__URL": "redis://redis.serving.svc:6379/1",
    }
    assert not _label_store_env(render(helm, {}))


@pytest.mark.parametrize("scenario_name", ["standalone-image-models", "sidecar-native-pvc-gpu"])
def test_server_takes_the_label_store_from_the_environment(
    helm: Helm, scenario_name: str, tmp_path: Path
) -> None:
    objects = render(helm, SCENARIOS[scenario_name])
    path = tmp_path / "sidecar.yaml"
    path.write_text(config_map(objects)["data"]["sidecar.yaml"])
    env = _label_store_env(objects)
    config: Any = load_server_config(path, env=env)
    assert config.labels.backend == "redis"
    assert config.labels.url == env["SIDECAR_LABELS__URL"]


def test_label_store_url_stays_out_of_the_configmap(helm: Helm) -> None:
    error = helm.template_error({"config": {"labels": {"url": "redis://:pw@r:6379/0"}}})
    assert "config.labels.url would put the label store's URL" in error, error


def test_config_change_rolls_the_pods(helm: Helm) -> None:
    def checksum(values: dict[str, Any]) -> str:
        deployment = one(render(helm, values), "Deployment")
        return str(deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"])

    assert checksum({}) == checksum({})
    assert checksum({}) != checksum({"config": {"logging": {"level": "DEBUG"}}})


def test_server_defaults_fill_removed_keys(helm: Helm) -> None:
    """A config key removed with null falls back to the server's own default."""
    defaults = ServerConfig()
    values = {"config": {"grpc": None, "metrics": None, "shutdown": None, "device": None}}
    objects = render(helm, values)
    spec = pod_spec(objects)
    server = container(spec, "server")
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    assert ports == {"grpc": defaults.grpc.port, "metrics": defaults.metrics.port}
    drain = defaults.shutdown.drain_delay_seconds + defaults.shutdown.grace_period_seconds
    chart = chart_values()
    assert spec["terminationGracePeriodSeconds"] == math.ceil(
        drain + chart["terminationMarginSeconds"]
    )
    assert yaml.safe_load(config_map(objects)["data"]["sidecar.yaml"]) == {
        "logging": chart["config"]["logging"]
    }


def test_names_and_labels(helm: Helm) -> None:
    objects = render(helm, {"commonLabels": {"team": "ml"}, "fullnameOverride": "scorer"})
    for obj in objects:
        assert obj["metadata"]["name"].startswith("scorer"), obj["kind"]
        assert obj["metadata"]["labels"]["team"] == "ml", obj["kind"]
        assert obj["metadata"]["labels"]["app.kubernetes.io/instance"] == "demo"


# --------------------------------------------------------------------------- TLS


def test_probes_move_to_the_health_port_with_tls(helm: Helm) -> None:
    """kubelet's gRPC probes cannot speak TLS: with TLS on the gRPC port they call the
    plaintext config.grpc.health_port, which the container opens (not the Service)."""
    plain = container(pod_spec(render(helm, {})), "server")
    values = SCENARIOS["tls-servicemonitor"]
    objects = render(helm, values)
    server = container(pod_spec(objects), "server")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert plain[probe]["grpc"] == {"port": 8001}, probe
        assert server[probe]["grpc"] == {"port": 8003}, probe
        assert {k: v for k, v in server[probe].items() if k != "grpc"} == {
            k: v for k, v in plain[probe].items() if k != "grpc"
        }
    assert [p["name"] for p in plain["ports"]] == ["grpc", "metrics"]
    assert [p["name"] for p in server["ports"]] == ["grpc", "grpc-health", "metrics"]
    service_ports = {p["name"] for p in one(objects, "Service")["spec"]["ports"]}
    assert service_ports == {"grpc", "metrics"}
    assert {"name": "tls", "mountPath": "/etc/sidecar-tls", "readOnly": True} in server[
        "volumeMounts"
    ]
    # a health port without TLS is used by the probes too, and the service name stays
    named = {"config": {"grpc": {"health_port": 8003}}, "probes": {"service": "digits"}}
    server = container(pod_spec(render(helm, named)), "server")
    assert server["livenessProbe"]["grpc"] == {"port": 8003, "service": "digits"}


def test_server_serves_the_health_port_the_probes_call(helm: Helm, tmp_path: Path) -> None:
    """The rendered sidecar.yaml gives the server the port the probes call."""
    objects = render(helm, SCENARIOS["sidecar-mtls-podmonitor"])
    path = tmp_path / "sidecar.yaml"
    path.write_text(config_map(objects)["data"]["sidecar.yaml"])
    config = load_server_config(path, env={})
    assert config.grpc.tls.enabled and config.grpc.health_port == 9003
    server = container(pod_spec(objects), "server")
    assert server["readinessProbe"]["grpc"]["port"] == config.grpc.health_port


def test_monitor_scrapes_https_with_the_ca_and_client_certificate(helm: Helm) -> None:
    service_monitor = one(render(helm, SCENARIOS["tls-servicemonitor"], True), "ServiceMonitor")
    [endpoint] = service_monitor["spec"]["endpoints"]
    assert endpoint["scheme"] == "https"
    assert endpoint["tlsConfig"] == {
        "serverName": "scorer.example",
        "ca": {"secret": {"name": "sidecar-tls", "key": "ca.crt"}},
    }
    pod_monitor = one(render(helm, SCENARIOS["sidecar-mtls-podmonitor"], True), "PodMonitor")
    [endpoint] = pod_monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["scheme"] == "https"
    assert endpoint["tlsConfig"] == {
        "serverName": "demo-inference-sidecar.serving.svc",  # the default: the Service's name
        "ca": {"secret": {"name": "sidecar-ca", "key": "root.pem"}},
        "cert": {"secret": {"name": "prometheus-client", "key": "tls.crt"}},
        "keySecret": {"name": "prometheus-client", "key": "tls.key"},
    }
    skip = merge(
        SCENARIOS["tls-servicemonitor"],
        {
            "prometheus": {
                "monitor": {"tls": {"ca": {"secretName": ""}, "insecureSkipVerify": True}}
            }
        },
    )
    [endpoint] = one(render(helm, skip, True), "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["tlsConfig"] == {"serverName": "scorer.example", "insecureSkipVerify": True}
    # plain HTTP metrics: no scheme, no tlsConfig, whatever prometheus.monitor.tls says
    plain = {"prometheus": SCENARIOS["tls-servicemonitor"]["prometheus"]}
    [endpoint] = one(render(helm, plain, True), "ServiceMonitor")["spec"]["endpoints"]
    assert "scheme" not in endpoint and "tlsConfig" not in endpoint
