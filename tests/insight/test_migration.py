"""``inference-sidecar convert`` and ``compare`` on the bundled example models."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from sidecar.cli import main
from sidecar.config import ModelConfig, ThreadsConfig
from sidecar.examples import MODEL_REPOSITORY
from sidecar.insight.compare import compare
from sidecar.insight.convert import convert
from sidecar.insight.errors import DataMismatchError
from sidecar.runtimes.onnx import OnnxRuntime

DIGITS = MODEL_REPOSITORY / "digits"
FEATURES = DIGITS / "holdout_features.npy"
LABELS = DIGITS / "holdout_labels.npy"
SCRIPT = MODEL_REPOSITORY / "digits_torch" / "1" / "model.pt"
EXPORT = MODEL_REPOSITORY / "digits_export" / "1" / "model.pt2"


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("converted")
    code = main(["convert", str(SCRIPT), str(out / "model.onnx"), "--int8", str(out / "int8.onnx")])
    assert code == 0
    return out / "model.onnx", out / "int8.onnx"


def test_torchscript_converts_with_the_names_clients_use(converted: tuple[Path, Path]) -> None:
    fp32, int8 = converted
    runtime = OnnxRuntime("converted", fp32, ModelConfig(), "cpu", ThreadsConfig())
    asyncio.run(runtime.load())
    sig = runtime.signature
    assert [(s.name, s.datatype, s.shape) for s in sig.inputs] == [("input", "FP32", (-1, 64))]
    assert [(s.name, s.shape) for s in sig.outputs] == [
        ("logits", (-1, 10)),
        ("probabilities", (-1, 10)),
    ]
    x = np.load(FEATURES)[:7]
    assert asyncio.run(runtime.predict({"input": x}))["probabilities"].shape == (7, 10)
    asyncio.run(runtime.unload())
    assert int8.stat().st_size < fp32.stat().st_size


def test_compare_source_with_its_conversion(
    converted: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    fp32, _ = converted
    code = main(
        ["compare", str(SCRIPT), str(fp32), "--data", str(FEATURES), "--labels", str(LABELS)]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "rows compared: 450" in out
    report = compare(SCRIPT, fp32, FEATURES, LABELS)
    assert {(o.name_a, o.name_b) for o in report.outputs} == {
        ("logits", "logits"),
        ("probabilities", "probabilities"),
    }
    for o in report.outputs:
        assert o.max_abs_diff < 1e-4
        assert o.class_agreement == 1.0
    assert report.a.accuracy == report.b.accuracy
    assert report.a.accuracy is not None and report.a.accuracy > 0.9
    assert report.a.parameters == report.b.parameters == 4810
    assert report.a.size_bytes == SCRIPT.stat().st_size
    assert report.a.seconds_per_row > 0 and report.b.seconds_per_row > 0


def test_compare_int8_reports_small_differences(
    converted: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    fp32, int8 = converted
    code = main(
        [
            "compare",
            str(fp32),
            str(int8),
            "--data",
            str(FEATURES),
            "--labels",
            str(LABELS),
            "--json",
        ]
    )
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    probs = next(o for o in report["outputs"] if o["name_a"] == "probabilities")
    assert 0 < probs["max_abs_diff"] < 0.2
    assert probs["class_agreement"] > 0.97
    assert abs(report["a"]["accuracy"] - report["b"]["accuracy"]) < 0.02
    assert report["b"]["size_bytes"] < report["a"]["size_bytes"]


@pytest.mark.slow
def test_torch_export_converts_with_the_dynamo_exporter(tmp_path: Path) -> None:
    version = tmp_path / "digits_onnx" / "2"
    result = convert(EXPORT, version / "model.onnx")
    assert result.max_abs_diff < 1e-4
    shutil.copy(MODEL_REPOSITORY / "digits" / "config.yaml", version.parent / "config.yaml")
    report = compare(EXPORT.parent, version, FEATURES, LABELS)
    assert {o.name_a for o in report.outputs} == {"logits", "probabilities"}
    assert all(o.max_abs_diff < 1e-4 and o.class_agreement == 1.0 for o in report.outputs)
    assert report.b.accuracy == report.a.accuracy


def test_compare_regression_with_labels(tmp_path: Path) -> None:
    reference = np.load(MODEL_REPOSITORY / "diabetes" / "reference.npy")[:50]
    model = MODEL_REPOSITORY / "diabetes" / "1" / "model.onnx"
    runtime = OnnxRuntime("d", model, ModelConfig(), "cpu", ThreadsConfig())
    asyncio.run(runtime.load())
    predicted = asyncio.run(runtime.predict({"input": reference}))["prediction"][:, 0]
    asyncio.run(runtime.unload())
    labels = tmp_path / "labels.csv"
    labels.write_text("target\n" + "\n".join(str(v + 2.0) for v in predicted) + "\n")
    data = tmp_path / "data.npy"
    np.save(data, reference)
    report = compare(model, model, data, labels)
    assert report.a.mean_abs_error == pytest.approx(2.0, abs=1e-3)
    assert report.outputs[0].max_abs_diff == 0.0 and report.outputs[0].class_agreement is None


def test_data_that_does_not_fit_names_both_shapes(capsys: pytest.CaptureFixture[str]) -> None:
    diabetes = MODEL_REPOSITORY / "diabetes" / "1" / "model.onnx"
    code = main(["compare", str(DIGITS / "1"), str(diabetes), "--data", str(FEATURES)])
    err = capsys.readouterr().err
    assert code == 2
    assert "[450, 64]" in err and "FP32[-1, 10]" in err and str(diabetes) in err, err


def test_labels_that_do_not_fit_name_both(tmp_path: Path) -> None:
    short = tmp_path / "labels.npy"
    np.save(short, np.load(LABELS)[:100])
    with pytest.raises(DataMismatchError, match=r"100 rows .* but the data has 450 rows"):
        compare(DIGITS / "1", DIGITS / "1", FEATURES, short)


def test_outputs_that_do_not_pair_name_both(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("Identity", ["input"], ["a"]),
            helper.make_node("Relu", ["input"], ["b"]),
        ],
        "two_outputs",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 10])],
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 10]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["batch", 10]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    two = tmp_path / "two.onnx"
    onnx.save(model, str(two))
    data = tmp_path / "x.npy"
    np.save(data, np.zeros((4, 10), np.float32))
    diabetes = MODEL_REPOSITORY / "diabetes" / "1" / "model.onnx"
    with pytest.raises(DataMismatchError, match=r"outputs a, b .* has prediction: no common name"):
        compare(two, diabetes, data)


def test_convert_refuses_other_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["convert", str(DIGITS / "1" / "model.onnx"), str(tmp_path / "x.onnx")])
    assert code == 2
    assert "TorchScript (.pt) or torch.export (.pt2)" in capsys.readouterr().err
