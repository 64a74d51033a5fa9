"""Reference files at load: formats, a mismatch with the model is a load error naming both,
reductions, and a reference captured from the first live rows and reused after a restart."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sidecar.cli import main
from sidecar.examples import MODEL_REPOSITORY
from sidecar.runtimes.fakes import SumRuntime
from tests.drift.helpers import FakeRuntime, Harness, signature, write_reference

REF = {"window_size": 100, "min_window": 50, "outputs": False}


def drift(reference: str, **more: Any) -> dict[str, Any]:
    return {"reference": reference, **REF, **more}


def load_error(harness: Harness, settings: dict[str, Any], runtime: Any = None) -> str:
    model = harness.add(settings, runtime or SumRuntime(4))
    assert not model.ready, "the model should have failed to load"
    assert harness.drift.monitor(model) is None
    return model.error


def test_reference_shape_not_matching_the_input_fails_the_load(tmp_path: Path) -> None:
    write_reference(tmp_path, "m", "ref.npy", np.zeros((1000, 5), dtype=np.float32))
    error = load_error(Harness(tmp_path), drift("ref.npy"))
    assert "shape [1000, 5]" in error and "dtype float32" in error  # the file's
    assert "FP32[-1, 4]" in error and "[N, 4]" in error  # the model's
    assert str(tmp_path / "m" / "ref.npy") in error and "'m' version 1" in error


def test_reference_dtype_not_matching_the_input_fails_the_load(tmp_path: Path) -> None:
    runtime = FakeRuntime(signature({"ids": ("INT64", (-1, 3))}))
    write_reference(tmp_path, "m", "ref.npy", np.full((100, 3), 0.5))
    error = load_error(Harness(tmp_path), drift("ref.npy"), runtime)
    assert "dtype float64" in error and "INT64[-1, 3]" in error


def test_missing_reference_without_capture_fails_the_load(tmp_path: Path) -> None:
    error = load_error(Harness(tmp_path), drift("nowhere.npy"))
    assert "does not exist" in error and "capture_rows" in error


def test_npz_reference_is_keyed_by_input_name(tmp_path: Path) -> None:
    runtime = FakeRuntime(signature({"a": ("FP32", (-1, 2)), "b": ("FP32", (-1, 3))}))
    rng = np.random.default_rng(0)
    write_reference(tmp_path, "m", "ref.npz", {"a": rng.random((300, 2))})
    harness = Harness(tmp_path)
    error = load_error(harness, drift("ref.npz"), runtime)
    assert "'b'" in error and "['a']" in error
    write_reference(
        tmp_path, "ok", "ref.npz", {"a": rng.random((300, 2)), "b": rng.random((300, 3))}
    )
    model = harness.add(drift("ref.npz"), runtime, name="ok")
    assert model.ready, model.error
    names = {dict(k)["feature"] for k in harness.samples("sidecar_drift_reference_bin_ratio")}
    assert names == {"a[0]", "a[1]", "b[0]", "b[1]", "b[2]"}
    # one array for two inputs cannot be bound
    write_reference(tmp_path, "one", "ref.npy", rng.random((300, 2)))
    error = harness.add(drift("ref.npy"), runtime, name="one").error
    assert "use a .npz keyed by input name" in error


def test_csv_reference_with_header_names_the_features(tmp_path: Path) -> None:
    rows = "\n".join(",".join(str(v) for v in r) for r in np.random.default_rng(0).random((200, 4)))
    write_reference(tmp_path, "m", "ref.csv", "age,income,height,weight\n" + rows + "\n")
    harness = Harness(tmp_path)
    model = harness.add(drift("ref.csv", categorical=[]), SumRuntime(4))
    assert model.ready, model.error
    names = {dict(k)["feature"] for k in harness.samples("sidecar_drift_reference_bin_ratio")}
    assert names == {"age", "income", "height", "weight"}
    write_reference(tmp_path, "bad", "ref.csv", "1,2,3\n4,5,6\n")
    error = harness.add(drift("ref.csv"), SumRuntime(4), name="bad").error
    assert "3 columns" in error and "FP32[-1, 4]" in error


def test_configured_names_and_categorical_features(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    reference = np.column_stack([rng.integers(0, 3, 500), rng.random((500, 3))])
    write_reference(tmp_path, "m", "ref.npy", reference.astype(np.float32))
    harness = Harness(tmp_path)
    names = ["colour", "p", "q", "r"]
    model = harness.add(
        drift("ref.npy", feature_names={"x": names}, categorical=["colour"]), SumRuntime(4)
    )
    assert model.ready, model.error
    x = np.column_stack([np.full(100, 5.0), rng.random((100, 3))]).astype(np.float32)  # unseen
    harness.request(model, {"x": x})
    harness.process()
    tests = {dict(k)["test"] for k in harness.samples("sidecar_drift_p_value", feature="colour")}
    assert tests == {"chi2", "combined", "adjusted"}  # categorical: chi-squared only
    assert harness.value(
        "sidecar_drift_p_value", model="m", version="1", scope="inputs", feature="colour",
        test="adjusted",
    ) < 1e-6  # fmt: skip
    errors = [
        harness.add(drift("ref.npy", feature_names={"x": ["a"]}), SumRuntime(4), name="m").error,
        harness.add(drift("ref.npy", categorical=["nope"]), SumRuntime(4), name="m").error,
        harness.add(drift("ref.npy", inputs=["nope"]), SumRuntime(4), name="m").error,
        harness.add(drift("ref.npy", max_features=3), SumRuntime(4), name="m").error,
    ]
    assert "has 1 names but a row of input 'x' has 4 elements" in errors[0]
    assert "categorical names ['nope']" in errors[1]
    assert "inputs names 'nope', not an input; inputs are: x" in errors[2]
    assert "more than max_features=3" in errors[3] and "reduction" in errors[3]


@pytest.mark.parametrize(
    ("reduction", "expected"),
    [
        (
            {"method": "channel_stats"},
            {f"img:channel{c}_{s}" for c in range(3) for s in ("mean", "std")},
        ),
        ({"method": "random_projection", "k": 5, "seed": 7}, {f"img:proj{i}" for i in range(5)}),
    ],
)
def test_reductions_turn_images_into_few_features(
    tmp_path: Path, reduction: dict[str, Any], expected: set[str]
) -> None:
    runtime = FakeRuntime(signature({"img": ("FP32", (-1, 3, 8, 8))}))
    rng = np.random.default_rng(0)
    write_reference(tmp_path, "m", "ref.npy", rng.random((400, 3, 8, 8)).astype(np.float32))
    harness = Harness(tmp_path)
    model = harness.add(drift("ref.npy", reduction=reduction), runtime)
    assert model.ready, model.error
    brighter = (rng.random((100, 3, 8, 8)) + 0.3).astype(np.float32)
    harness.request(model, {"img": brighter})
    harness.process()
    labels = {"model": "m", "version": "1", "scope": "inputs"}
    features = {dict(k)["feature"] for k in harness.samples("sidecar_drift_p_value", **labels)}
    assert features == expected
    assert harness.value("sidecar_drift_detected", **labels) == 1


def test_captured_reference_is_written_and_reused_after_a_restart(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    settings = drift("captured.npy", capture_rows=200)
    model = harness.add(settings, SumRuntime(4))
    assert model.ready, model.error
    labels = {"model": "m", "version": "1", "scope": "inputs"}
    assert harness.value("sidecar_drift_reference_samples", **labels) is None  # not yet
    x = np.random.default_rng(3).standard_normal((250, 4)).astype(np.float32)
    for start in range(0, 250, 30):
        harness.request(model, {"x": x[start : start + 30]}, outputs={})
    harness.process()
    path = tmp_path / "m" / "captured.npy"
    np.testing.assert_array_equal(np.load(path), x[:200])  # exactly the first rows
    assert harness.value("sidecar_drift_reference_samples", **labels) == 200
    assert harness.value("sidecar_drift_evaluations_total", **labels) == 0  # 50 rows in window
    assert sum(harness.samples("sidecar_drift_bin_rows_total", **labels).values()) == 50 * 4

    restarted = Harness(tmp_path)
    again = restarted.add(settings, SumRuntime(4))
    assert again.ready, again.error
    assert restarted.value("sidecar_drift_reference_samples", **labels) == 200  # at load


@contextlib.contextmanager
def unwritable(directory: Path) -> Iterator[None]:
    """Make ``directory`` really unwritable for this process, then writable again.

    Permission bits do not stop root (these tests may run as root in a container), the
    immutable attribute does; as another user, mode 0o500 does. Either way the block
    is checked by trying to create a file.
    """
    directory.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(directory)], check=True)
        undo = ["chattr", "-i", str(directory)]
    else:
        directory.chmod(0o500)
        undo = ["chmod", "700", str(directory)]
    try:
        with pytest.raises(PermissionError):
            (directory / "probe").touch()
        yield
    finally:
        subprocess.run(undo, check=True)


def test_an_unwritable_capture_is_kept_in_memory_and_retried_until_written(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The reference's directory refuses the file, then accepts it: retried with backoff."""
    now = [1000.0]
    harness = Harness(tmp_path, now)
    settings = drift("volume/captured.npy", capture_rows=200)
    model = harness.add(settings, SumRuntime(4))
    assert model.ready, model.error
    base = {"model": "m", "version": "1"}
    scope = {**base, "scope": "inputs"}
    assert harness.value("sidecar_drift_reference_state", **base, state="capturing") == 1
    volume = tmp_path / "m" / "volume"
    path = volume / "captured.npy"
    x = np.random.default_rng(3).standard_normal((400, 4)).astype(np.float32)
    failures = "sidecar_drift_reference_write_failures_total"
    with caplog.at_level(logging.INFO, logger="sidecar.drift"), unwritable(volume):
        harness.request(model, {"x": x[:250]}, outputs={})
        harness.process()
        assert not path.exists()
        assert harness.value(failures, **base) == 1
        assert harness.value("sidecar_drift_reference_state", **base, state="unsaved") == 1
        assert harness.value("sidecar_drift_reference_state", **base, state="ready") == 0
        assert "cannot write the captured drift reference (200 rows)" in caplog.text
        assert str(path) in caplog.text and "retrying in 1 s" in caplog.text
        # The captured rows are the reference meanwhile: windows are evaluated against it.
        assert harness.value("sidecar_drift_reference_samples", **scope) == 200
        harness.request(model, {"x": x[250:]}, outputs={})
        harness.process()
        assert harness.value("sidecar_drift_evaluations_total", **scope) == 2
        # Backoff: 1 s, then 2 s, then 4 s between attempts.
        assert harness.value(failures, **base) == 1  # not retried before its time
        for wait, attempts in ((0.5, 1), (0.5, 2), (1.5, 2), (0.5, 3), (3.9, 3), (0.1, 4)):
            now[0] += wait
            harness.process()
            assert harness.value(failures, **base) == attempts, (wait, attempts)
        assert not path.exists()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="sidecar.drift"):
        now[0] += 7.9  # the next attempt is due 8 s after the fourth
        harness.process()
        assert not path.exists()
        now[0] += 0.1
        harness.process()
    np.testing.assert_array_equal(np.load(path), x[:200])  # exactly the first rows
    assert "wrote 200 captured reference rows" in caplog.text
    assert "after 4 failed attempts" in caplog.text
    assert harness.value(failures, **base) == 4
    assert harness.value("sidecar_drift_reference_state", **base, state="ready") == 1
    assert harness.value("sidecar_drift_reference_state", **base, state="unsaved") == 0
    now[0] += 1000
    harness.process()
    assert harness.value(failures, **base) == 4  # written: no more attempts

    restarted = Harness(tmp_path)
    again = restarted.add(settings, SumRuntime(4))
    assert again.ready, again.error
    assert restarted.value("sidecar_drift_reference_samples", **scope) == 200  # at load
    assert restarted.value("sidecar_drift_reference_state", **base, state="ready") == 1


def test_capture_takes_a_classifier_s_outputs_from_live_traffic(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    model = harness.add(
        {"reference": "cap.npy", "capture_rows": 100, "window_size": 100, "min_window": 50},
        SumRuntime(4),
        task="classification",
        classification={"output": "echo", "class_names": ["a", "b", "c", "d"]},
    )
    assert model.ready, model.error
    x = np.random.default_rng(4).random((200, 4)).astype(np.float32)
    for start in range(0, 200, 20):
        harness.request(model, {"x": x[start : start + 20]})
    harness.process()
    labels = {"model": "m", "version": "1", "scope": "outputs"}
    assert harness.value("sidecar_drift_reference_samples", **labels) == 100
    assert harness.value("sidecar_drift_evaluations_total", **labels) == 1
    assert harness.value("sidecar_drift_detected", **labels) == 0


def test_validate_reports_a_mismatched_reference_of_the_example(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The bundled digits model with a reference of 63 columns: `validate` names both."""
    shutil.copytree(MODEL_REPOSITORY / "digits", tmp_path / "digits")
    np.save(tmp_path / "digits" / "reference.npy", np.zeros((10, 63), dtype=np.float32))
    assert main(["validate", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "FAILED digits v1" in out
    assert "shape [10, 63]" in out and "FP32[-1, 64]" in out
