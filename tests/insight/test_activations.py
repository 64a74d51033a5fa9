"""Activation taps on torch.export graphs: layer choice, statistics, sampling, removal."""

from __future__ import annotations

import asyncio
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sidecar.config import ActivationsConfig, ModelConfig, ThreadsConfig
from sidecar.errors import ModelLoadError
from sidecar.examples import MODEL_REPOSITORY
from sidecar.insight.activations import STAT_NAMES, ActivationStats, decode, statistics
from sidecar.insight.layer_drift import LayerDriftError, LayerMeanDrift
from sidecar.runtimes.torch import TorchRuntime

EXPORT = MODEL_REPOSITORY / "digits_export" / "1" / "model.pt2"
SCRIPT = MODEL_REPOSITORY / "digits_torch" / "1" / "model.pt"
RENAME: dict[str, Any] = {
    "inputs": [{"name": "x", "rename": "input"}],
    "outputs": [{"name": "output0", "rename": "logits"}],
}


def _runtime(path: Path, activations: dict[str, Any] | None, **extra: Any) -> TorchRuntime:
    data: dict[str, Any] = {**RENAME, **extra} if path.suffix == ".pt2" else {**extra}
    if activations is not None:
        data["insight"] = {"activations": activations}
    config = ModelConfig.model_validate(data)
    return TorchRuntime("digits", path, config, "cpu", ThreadsConfig())


def _loaded(activations: dict[str, Any] | None) -> TorchRuntime:
    runtime = _runtime(EXPORT, activations)
    asyncio.run(runtime.load())
    return runtime


@pytest.fixture(scope="module")
def holdout() -> np.ndarray:
    return np.load(MODEL_REPOSITORY / "digits" / "holdout_features.npy")


def _true_layer_outputs(x: np.ndarray) -> dict[str, np.ndarray]:
    """The layers' outputs as ordinary forward hooks see them (on the unflattened module)."""
    program = torch.export.load(str(EXPORT))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.export.unflatten(program)
    seen: dict[str, np.ndarray] = {}
    for name, sub in module.named_modules():
        if name:
            sub.register_forward_hook(
                lambda _m, _i, out, name=name: seen.__setitem__(name, out.detach().numpy().copy())
            )
    with torch.inference_mode():
        module(torch.from_numpy(x))
    return seen


def test_unknown_layer_is_a_load_error_listing_the_layers() -> None:
    runtime = _runtime(EXPORT, {"layers": ["body.0", "encoder.*"]})
    with pytest.raises(ModelLoadError) as info:
        asyncio.run(runtime.load())
    message = info.value.message
    assert "'encoder.*'" in message
    for layer in ("body (Sequential)", "body.0 (Linear)", "body.1 (ReLU)", "body.2 (Linear)"):
        assert layer in message, message


def test_torchscript_says_hooks_are_not_supported() -> None:
    config = ModelConfig.model_validate(
        {
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 64], "rename": "input"}],
            "outputs": [
                {"name": "logits", "datatype": "FP32", "shape": [-1, 10]},
                {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
            ],
            "insight": {"activations": {"layers": ["body.0"]}},
        }
    )
    runtime = TorchRuntime("digits_torch", SCRIPT, config, "cpu", ThreadsConfig())
    with pytest.raises(
        ModelLoadError, match="TorchScript module does not run Python forward hooks"
    ):
        asyncio.run(runtime.load())


def test_too_many_layers_is_a_load_error() -> None:
    runtime = _runtime(EXPORT, {"layers": ["body*"], "max_layers": 2})
    with pytest.raises(ModelLoadError, match="match 4 layers, more than max_layers=2"):
        asyncio.run(runtime.load())


def test_globs_select_layers_in_graph_order() -> None:
    runtime = _loaded({"layers": ["body.2", "body.?"], "sample_rate": 1.0})
    taps = runtime.activations
    assert taps is not None
    assert taps.layers == ("body.0", "body.1", "body.2")
    asyncio.run(runtime.unload())


def test_statistics_match_forward_hooks(holdout: np.ndarray) -> None:
    runtime = _loaded({"layers": ["body", "body.1", "body.2"], "sample_rate": 1.0})
    taps = runtime.activations
    assert taps is not None
    batch = holdout[:40]
    outputs = asyncio.run(runtime.predict({"input": batch}))
    snap = taps.stats.snapshot()
    assert snap.batches == 1 and snap.rows == 40
    truth = _true_layer_outputs(batch)
    for row, layer in enumerate(snap.layers):
        value = truth[layer].astype(np.float64)
        expected = [
            value.mean(),
            value.std(),
            np.mean(value == 0),
            0.0,
            np.abs(value).max(),
        ]
        np.testing.assert_allclose(snap.stats[row], expected, rtol=1e-4, atol=1e-5)
    relu = snap.stats[snap.layers.index("body.1"), STAT_NAMES.index("zero_ratio")]
    assert 0.05 < relu < 0.95  # a ReLU layer has dead units on real data
    np.testing.assert_allclose(outputs["logits"], truth["body"], rtol=1e-6)
    window = taps.stats.window()
    assert window.shape == (40, 3)
    np.testing.assert_allclose(window[:, 1], truth["body.1"].mean(axis=1), rtol=1e-4, atol=1e-6)
    asyncio.run(runtime.unload())


def test_non_finite_values_are_counted_and_left_out(holdout: np.ndarray) -> None:
    runtime = _loaded({"layers": ["body.0"], "sample_rate": 1.0})
    taps = runtime.activations
    assert taps is not None
    batch = holdout[:4].copy()
    batch[0, 0] = np.nan  # row 0 of the first Linear's output becomes all NaN
    asyncio.run(runtime.predict({"input": batch}))
    stats = taps.stats.snapshot().stats[0]
    clean = _true_layer_outputs(batch[1:])["body.0"].astype(np.float64)
    assert stats[STAT_NAMES.index("nonfinite_ratio")] == pytest.approx(0.25)
    assert stats[STAT_NAMES.index("mean")] == pytest.approx(clean.mean(), rel=1e-4)
    assert stats[STAT_NAMES.index("max_abs")] == pytest.approx(np.abs(clean).max(), rel=1e-5)
    asyncio.run(runtime.unload())


def test_only_sampled_batches_are_summarised(holdout: np.ndarray) -> None:
    runtime = _loaded({"layers": ["body.0"], "sample_rate": 0.25, "seed": 7})
    taps = runtime.activations
    assert taps is not None
    for i in range(200):
        asyncio.run(runtime.predict({"input": holdout[i : i + 1]}))
    batches = taps.stats.snapshot().batches
    assert 25 <= batches <= 75, batches  # Binomial(200, 0.25): mean 50, sd 6.1
    asyncio.run(runtime.unload())


def test_taps_exist_only_when_configured_and_go_away_on_unload(holdout: np.ndarray) -> None:
    bare = _loaded(None)
    assert bare.activations is None
    assert "sidecar_activation_tap" not in bare.module.code
    asyncio.run(bare.unload())

    runtime = _loaded({"layers": ["body.0", "body.2"], "sample_rate": 1.0})
    module, taps = runtime.module, runtime.activations
    assert taps is not None and taps.attached
    assert sum("sidecar_activation_tap" in line for line in module.code.splitlines()) == 2
    asyncio.run(runtime.unload())
    assert not taps.attached
    assert "sidecar_activation_tap" not in module.code
    before = taps.stats.snapshot().batches
    with torch.inference_mode():
        module(torch.from_numpy(holdout[:3]))
    assert taps.stats.snapshot().batches == before


def test_profile_gives_reference_layer_means(holdout: np.ndarray) -> None:
    runtime = _loaded({"layers": ["body.1", "body.2"], "sample_rate": 1.0})
    taps = runtime.activations
    assert taps is not None
    means = taps.profile({"input": holdout[:100]}, chunk=32)
    truth = _true_layer_outputs(holdout[:100])
    np.testing.assert_allclose(means[:, 0], truth["body.1"].mean(axis=1), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(means[:, 1], truth["body.2"].mean(axis=1), rtol=1e-4, atol=1e-6)
    assert taps.stats.snapshot().batches == 0  # profiling is not live traffic
    asyncio.run(runtime.unload())


def test_decode_without_a_batch_dimension() -> None:
    # layer 0 has rows; layer 1 is a scalar: its row means are NaN, its sums still count
    values = np.array([1.0, 3.0, 1.0, 2.0, 2.0, 1.0, 1.0, 1.0, 4.0, 6.0, 2.0])
    reductions, numel, row_means = decode(values, ((4, 2), (1, 1)), rows=2)
    assert numel.tolist() == [4, 1]
    assert reductions[:, 4].tolist() == [10.0, 2.0]
    assert row_means[:, 0].tolist() == [2.0, 3.0] and np.isnan(row_means[:, 1]).all()


def test_statistics_from_reductions() -> None:
    # layer 0: [[1, 0, nan], [3, -4, 0]] → L2 √26, max abs 4, 5 finite, 4 non-zero, sum 0
    # layer 1: every value non-finite: no mean, std or max abs, but the ratios are known
    # layer 2: an empty output
    reductions = np.array(
        [[np.sqrt(26.0), 4.0, 5.0, 4.0, 0.0], [0.0, 0.0, 0.0, 4.0, 0.0], [0.0] * 5]
    )
    stats = statistics(reductions, np.array([6, 4, 0]))
    assert stats[0].tolist() == pytest.approx([0.0, np.sqrt(26 / 5), 2 / 6, 1 / 6, 4.0])
    assert np.isnan(stats[1, [0, 1, 4]]).all()
    assert stats[1, 2:4].tolist() == [0.0, 1.0]
    assert np.isnan(stats[2]).all()


def test_window_keeps_the_most_recent_rows_in_order() -> None:
    stats = ActivationStats(("a",), window=5)

    def batch(row_sums: np.ndarray) -> None:  # one layer, one value per row
        values = np.concatenate([np.ones(4), row_sums])
        stats.add(values, ((len(row_sums), len(row_sums)),), len(row_sums))

    batch(np.arange(3.0))
    batch(np.arange(3.0, 7.0))
    assert stats.window()[:, 0].tolist() == [2.0, 3.0, 4.0, 5.0, 6.0]
    batch(np.arange(7.0, 9.0))
    for value in range(9, 20):  # more batches than the window queues between reads
        batch(np.array([float(value)]))
    assert stats.window()[:, 0].tolist() == [15.0, 16.0, 17.0, 18.0, 19.0]
    assert stats.snapshot().rows == 20


def test_config_needs_at_least_one_layer() -> None:
    with pytest.raises(ValueError, match="layers"):
        ActivationsConfig.model_validate({"layers": []})


@pytest.mark.parametrize(("shift", "drifted"), [(0.0, False), (2.0, True)])
def test_layer_means_drift_against_the_reference(
    holdout: np.ndarray, shift: float, drifted: bool
) -> None:
    runtime = _loaded({"layers": ["body.0", "body.1", "body.2"], "sample_rate": 1.0, "window": 300})
    taps = runtime.activations
    assert taps is not None
    reference = np.load(MODEL_REPOSITORY / "digits" / "reference.npy")
    drift = LayerMeanDrift(taps.stats, taps.profile({"input": reference}), alpha=0.05)
    assert drift.reference_rows == len(reference)
    assert drift.result() is None  # nothing sampled yet
    live = np.clip(holdout + shift, 0, 16).astype(np.float32)
    for start in range(0, 300, 10):
        asyncio.run(runtime.predict({"input": live[start : start + 10]}))
    result = drift.result()
    assert result is not None and result.evaluated and result.n_window == 300
    assert result.drifted is drifted
    assert {f.name for f in result.features} == {"body.0", "body.1", "body.2"}
    assert drift.result() is result  # no new batch: not tested again
    asyncio.run(runtime.unload())


def test_reference_means_must_match_the_layers() -> None:
    stats = ActivationStats(("a",), window=10)
    with pytest.raises(LayerDriftError):
        LayerMeanDrift(stats, np.ones((5, 2)), alpha=0.05)  # 2 columns for 1 layer
