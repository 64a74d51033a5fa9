"""Insight inside a real server over loopback gRPC: anomaly parameters, shadows, activations."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import yaml
from prometheus_client import CollectorRegistry
from tritonclient.grpc import service_pb2, service_pb2_grpc

from exporters.gpu import GpuCollector
from exporters.insight import InsightMetrics
from sidecar.app import AppParts
from sidecar.config import ShadowConfig
from sidecar.examples import MODEL_REPOSITORY
from sidecar.insight.convert import quantize
from sidecar.insight.hub import Insight
from sidecar.insight.shadow import ShadowPrediction, ShadowRunner
from sidecar.metrics_listener import ServerMetrics
from sidecar.runtimes.fakes import SumRuntime
from tests.exporters.scrape import scrape
from tests.exporters.test_docs import compare, documented
from tests.helpers import ServerThread, running_server, server_config

Stub = service_pb2_grpc.GRPCInferenceServiceStub
DIGITS = MODEL_REPOSITORY / "digits"


def _write_failing_onnx(path: Path) -> None:
    """Same signature as digits, but Reshape to [1, 64] fails on any batch of 2+ rows."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("Reshape", ["input", "shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "fails_on_batches",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 64])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 10]),
        ],
        initializer=[
            numpy_helper.from_array(np.zeros((64, 10), np.float32), "w"),
            numpy_helper.from_array(np.array([1, 64], np.int64), "shape"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def _model(root: Path, name: str, source: Path, insight: dict[str, Any], **extra: Any) -> Path:
    target = root / name
    (target / "1").mkdir(parents=True)
    shutil.copy(source / "1" / next(p.name for p in (source / "1").iterdir()), target / "1")
    config = yaml.safe_load((source / "config.yaml").read_text()) or {}
    config.update(extra)
    config["insight"] = insight
    (target / "config.yaml").write_text(yaml.safe_dump(config))
    for data in source.glob("*.npy"):
        shutil.copy(data, target / data.name)
    return target


class Recorder:
    """A shadow listener that keeps what it is given."""

    def __init__(self) -> None:
        self.predictions: list[ShadowPrediction] = []

    def on_shadow_prediction(self, prediction: ShadowPrediction) -> None:
        self.predictions.append(prediction)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("insight-repo")
    shadow = {"version": 2}
    digits = _model(
        root,
        "digits",
        DIGITS,
        {
            "anomaly": {"reference": "reference.npy", "quantile": 0.99, "return_score": True},
            "shadow": shadow,
        },
        versions=[1],
    )
    quantize(DIGITS / "1" / "model.onnx", digits / "2" / "model.onnx")
    failing = _model(root, "failing_shadow", DIGITS, {"shadow": shadow}, versions=[1])
    _write_failing_onnx(failing / "2" / "model.onnx")
    mismatched = _model(root, "mismatched_shadow", DIGITS, {"shadow": shadow}, versions=[1])
    (mismatched / "2").mkdir()
    shutil.copy(MODEL_REPOSITORY / "diabetes" / "1" / "model.onnx", mismatched / "2")
    diabetes = _model(
        root, "diabetes", MODEL_REPOSITORY / "diabetes", {"shadow": shadow}, versions=[1]
    )
    quantize(MODEL_REPOSITORY / "diabetes" / "1" / "model.onnx", diabetes / "2" / "model.onnx")
    _model(
        root,
        "digits_export",
        MODEL_REPOSITORY / "digits_export",
        {
            "activations": {
                "layers": ["body.0", "body.1"],
                "sample_rate": 1.0,
                "reference": "../digits/reference.npy",
            }
        },
    )
    _model(root, "onnx_activations", DIGITS, {"activations": {"layers": ["relu0"]}})
    wrong = {"anomaly": {"reference": "../diabetes/reference.npy"}}
    _model(root, "wrong_reference", DIGITS, wrong)
    return root


@pytest.fixture(scope="module")
def metrics(repo: Path) -> ServerMetrics:
    config = server_config(repo)
    return ServerMetrics(config.metrics, gpu=GpuCollector(None, lambda: None))


@pytest.fixture(scope="module")
def served(
    repo: Path, metrics: ServerMetrics
) -> Iterator[tuple[ServerThread, Insight, CollectorRegistry, Recorder]]:
    recorder = Recorder()
    config = server_config(repo, startup={"strict_readiness": False})
    insight = Insight(config, metrics.registry, shadow_listeners=[recorder])
    with running_server(config, AppParts(metrics=metrics, insight=insight)) as thread:
        yield thread, insight, metrics.registry, recorder


@pytest.fixture
def stub(served: tuple[ServerThread, Any, Any, Any]) -> Iterator[Stub]:
    with grpc.insecure_channel(served[0].address) as channel:
        yield Stub(channel)


def _request(model: str, rows: np.ndarray, width: int = 64) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=model)
    request.inputs.add(name="input", datatype="FP32", shape=[rows.shape[0], width])
    request.raw_input_contents.append(np.ascontiguousarray(rows, np.float32).tobytes())
    return request


def _outputs(response: service_pb2.ModelInferResponse) -> dict[str, np.ndarray]:
    return {
        out.name: np.frombuffer(raw, np.float32).reshape(tuple(out.shape))
        for out, raw in zip(response.outputs, response.raw_output_contents, strict=True)
    }


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def _join_shadow(thread: ServerThread, insight: Insight, name: str) -> ShadowRunner:
    model = thread.server.plane.models.resolve(name, "1")
    runner = insight.shadow(model)
    assert runner is not None
    thread.call(runner.join())
    return runner


@pytest.fixture(scope="module")
def holdout() -> np.ndarray:
    return np.load(DIGITS / "holdout_features.npy")


def test_anomaly_scores_come_back_as_response_parameters(
    served: tuple[ServerThread, Insight, CollectorRegistry, Recorder],
    stub: Stub,
    holdout: np.ndarray,
) -> None:
    _, _, registry, _ = served
    labels = {"model": "digits", "version": "1"}
    before = _value(registry, "sidecar_anomaly_score_count", **labels)
    flagged_before = _value(registry, "sidecar_anomalous_rows_total", **labels)
    normal = stub.ModelInfer(_request("digits", holdout[:10]), timeout=30)
    params = normal.parameters
    scores = [float(s) for s in params["sidecar_anomaly_scores"].string_param.split(",")]
    assert len(scores) == 10
    assert params["sidecar_anomaly_score"].double_param == pytest.approx(max(scores), rel=1e-3)
    assert params["sidecar_anomalous_rows"].int64_param == sum(s > 1 for s in scores)
    assert sum(s > 1 for s in scores) <= 2

    corrupted = holdout[:5].copy()
    corrupted[:, :8] = 16.0
    odd = stub.ModelInfer(_request("digits", corrupted), timeout=30)
    assert odd.parameters["sidecar_anomalous_rows"].int64_param == 5
    assert odd.parameters["sidecar_anomaly_score"].double_param > 1
    assert _value(registry, "sidecar_anomaly_score_count", **labels) == before + 15
    flagged = _value(registry, "sidecar_anomalous_rows_total", **labels) - flagged_before
    assert flagged == 5 + sum(s > 1 for s in scores)
    assert _value(registry, "sidecar_anomaly_threshold", **labels) > 0


def test_models_without_anomaly_config_get_no_parameters(stub: Stub) -> None:
    response = stub.ModelInfer(_request("diabetes", np.zeros((2, 10)), width=10), timeout=30)
    assert "sidecar_anomaly_score" not in response.parameters


def test_shadow_classifier_agreement_and_predictions(
    served: tuple[ServerThread, Insight, CollectorRegistry, Recorder],
    stub: Stub,
    holdout: np.ndarray,
) -> None:
    thread, insight, registry, recorder = served
    labels = {"model": "digits", "version": "1", "shadow_version": "2"}
    ids = []
    for start in range(0, 60, 3):
        response = stub.ModelInfer(_request("digits", holdout[start : start + 3]), timeout=30)
        ids.append(response.id)
    _join_shadow(thread, insight, "digits")
    compared = _value(registry, "sidecar_shadow_requests_total", outcome="compared", **labels)
    assert compared >= 20
    rows = _value(registry, "sidecar_shadow_compared_rows_total", **labels)
    agreements = _value(registry, "sidecar_shadow_agreements_total", **labels)
    assert rows >= 60
    assert 0.9 * rows <= agreements <= rows  # int8 weights: nearly always the same class
    assert _value(registry, "sidecar_shadow_output_difference_count", **labels) == rows
    assert _value(registry, "sidecar_shadow_duration_seconds_count", **labels) == compared
    seen = {p.request_id: p for p in recorder.predictions if p.model == "digits"}
    assert set(ids) <= set(seen)
    one = seen[ids[0]]
    assert (one.version, one.shadow_version, one.output, one.rows) == ("1", "2", "probabilities", 3)
    assert one.shadow.shape == one.primary.shape == (3, 10)


def test_shadow_regression_differences(
    served: tuple[ServerThread, Insight, CollectorRegistry, Recorder], stub: Stub
) -> None:
    thread, insight, registry, _ = served
    labels = {"model": "diabetes", "version": "1", "shadow_version": "2"}
    reference = np.load(MODEL_REPOSITORY / "diabetes" / "reference.npy")
    _join_shadow(thread, insight, "diabetes")
    names = ("compared_rows_total", "output_difference_count", "output_difference_sum")
    before = {n: _value(registry, f"sidecar_shadow_{n}", **labels) for n in names}
    for start in range(0, 40, 4):
        stub.ModelInfer(_request("diabetes", reference[start : start + 4], width=10), timeout=30)
    _join_shadow(thread, insight, "diabetes")
    added = {n: _value(registry, f"sidecar_shadow_{n}", **labels) - before[n] for n in names}
    assert added["compared_rows_total"] == 40
    assert added["output_difference_count"] == 40
    assert _value(registry, "sidecar_shadow_agreements_total", **labels) == 0
    # int8 weights move a regression output a little: not by nothing, not by a lot
    assert 0 < added["output_difference_sum"] / 40 < 10


def test_a_failing_shadow_never_touches_the_primary(
    served: tuple[ServerThread, Insight, CollectorRegistry, Recorder],
    stub: Stub,
    holdout: np.ndarray,
) -> None:
    thread, insight, registry, _ = served
    labels = {"model": "failing_shadow", "version": "1", "shadow_version": "2"}
    for start in range(0, 20, 2):
        batch = holdout[start : start + 2]
        answer = _outputs(stub.ModelInfer(_request("failing_shadow", batch), timeout=30))
        plain = _outputs(stub.ModelInfer(_request("digits", batch), timeout=30))
        np.testing.assert_array_equal(answer["probabilities"], plain["probabilities"])
    _join_shadow(thread, insight, "failing_shadow")
    assert _value(registry, "sidecar_shadow_requests_total", outcome="failed", **labels) == 10
    assert _value(registry, "sidecar_shadow_requests_total", outcome="compared", **labels) == 0


def test_a_shadow_that_cannot_load_leaves_the_primary_serving(
    served: tuple[ServerThread, Insight, CollectorRegistry, Recorder], stub: Stub
) -> None:
    thread, insight, registry, _ = served
    labels = {"model": "mismatched_shadow", "version": "1", "shadow_version": "2"}
    model = thread.server.plane.models.resolve("mismatched_shadow")
    assert model.ready and insight.shadow(model) is None
    assert _value(registry, "sidecar_shadow_requests_total", outcome="failed", **labels) == 1
    response = stub.ModelInfer(_request("mismatched_shadow", np.zeros((1, 64))), timeout=30)
    assert response.outputs[1].name == "probabilities"


def test_activation_gauges_per_layer(
    served: tuple[ServerThread, Insight, CollectorRegistry, Recorder],
    stub: Stub,
    holdout: np.ndarray,
) -> None:
    _, _, registry, _ = served
    model = {"model": "digits_export", "version": "1"}
    before = _value(registry, "sidecar_layer_activation_sampled_batches_total", **model)
    for start in range(0, 30, 10):
        stub.ModelInfer(_request("digits_export", holdout[start : start + 10]), timeout=30)
    after = _value(registry, "sidecar_layer_activation_sampled_batches_total", **model)
    assert after == before + 3
    zeros = _value(registry, "sidecar_layer_activation_zero_ratio", layer="body.1", **model)
    assert 0.05 < zeros < 0.95
    assert _value(registry, "sidecar_layer_activation_zero_ratio", layer="body.0", **model) < 0.01
    for stat in ("mean", "std", "nonfinite_ratio", "max_abs"):
        assert (
            registry.get_sample_value(
                f"sidecar_layer_activation_{stat}", {**model, "layer": "body.0"}
            )
            is not None
        )


def test_activations_on_an_onnx_model_fail_that_model(
    served: tuple[ServerThread, Insight, CollectorRegistry, Recorder],
) -> None:
    models = served[0].server.plane.models
    error = models.failures[("onnx_activations", "1")]
    assert "insight.activations needs a torch.export model" in error
    assert not models.is_ready("onnx_activations")
    error = models.failures[("wrong_reference", "1")]
    assert "insight.anomaly.reference" in error
    assert "has shape [442, 10], but input 'input' is FP32[-1, 64]" in error


def test_full_shadow_queue_drops_and_counts() -> None:
    async def scenario() -> tuple[float, float, float]:
        registry = CollectorRegistry()
        metrics = InsightMetrics(registry).shadow("m", "1", "2", (0.1, 1.0))
        runtime = SumRuntime()
        await runtime.load()
        runner = ShadowRunner(
            "m", "1", "2", runtime, ShadowConfig(version=2, queue_size=2), "sum", False, metrics
        )
        x = np.ones((3, 4), np.float32)
        for i in range(5):  # the task is not running yet: two fit, three drop
            runner.offer(f"r{i}", {"x": x}, {"sum": x.sum(axis=1, keepdims=True)})
        runner.start()
        await runner.join()
        await runner.stop()
        labels = {"model": "m", "version": "1", "shadow_version": "2"}
        return (
            _value(registry, "sidecar_shadow_requests_total", outcome="dropped", **labels),
            _value(registry, "sidecar_shadow_requests_total", outcome="compared", **labels),
            _value(registry, "sidecar_shadow_output_difference_bucket", le="0.1", **labels),
        )

    dropped, compared, exact = asyncio.run(scenario())
    assert (dropped, compared, exact) == (3, 2, 6)


def test_docs_list_exactly_the_insight_families(
    served: tuple[ServerThread, Insight, CollectorRegistry, Recorder],
    metrics: ServerMetrics,
    stub: Stub,
    holdout: np.ndarray,
) -> None:
    stub.ModelInfer(_request("digits", holdout[:2]), timeout=30)  # every family has a series
    stub.ModelInfer(_request("digits_export", holdout[:60]), timeout=30)  # a drift window
    _join_shadow(served[0], served[1], "digits")
    rows = [r for r in documented() if r.section.startswith("Model insight")]
    assert len(rows) == 18
    ours = {r.family for r in rows}
    prefixes = ("sidecar_layer_", "sidecar_anomal", "sidecar_shadow_")
    families = {
        name: family
        for name, family in scrape(metrics.http.port).families.items()
        if name in ours or name.startswith(prefixes)
    }
    problems = compare(rows, families, "/metrics of a server with insight configured")
    assert not problems, "\n".join(problems)


def test_no_insight_families_without_insight_config() -> None:
    registry = CollectorRegistry()
    insight_metrics = InsightMetrics(registry)
    assert not [f.name for f in registry.collect() if f.name.startswith("sidecar_")]
    insight_metrics.anomaly("m", "1", 3.0, (0.5, 1.0, 2.0))
    names = {f.name for f in registry.collect()}
    assert {"sidecar_anomaly_score", "sidecar_anomaly_threshold"} <= names
    assert not any(n.startswith("sidecar_shadow") for n in names)


def test_validate_reports_insight_problems_and_stops_shadows(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sidecar.cli import main

    assert main(["validate", str(repo)]) == 1
    out = capsys.readouterr().out
    failed = sorted(line for line in out.splitlines() if line.startswith("FAILED"))
    assert len(failed) == 2, out
    assert "onnx_activations v1" in failed[0]
    assert "insight.activations needs a torch.export model" in failed[0]
    assert "wrong_reference v1" in failed[1]
    assert "ok     digits v1" in out and "ok     digits_export v1" in out
