"""``inference-sidecar drift REFERENCE CURRENT``: the server's tests offline, table or JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sidecar.cli import main
from sidecar.examples import MODEL_REPOSITORY

REFERENCE = MODEL_REPOSITORY / "digits" / "reference.npy"
HOLDOUT = MODEL_REPOSITORY / "digits" / "holdout_features.npy"


def drift(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["drift", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_same_distribution_is_no_drift(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = drift(capsys, str(REFERENCE), str(HOLDOUT))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["feature", "kind", "n"]
    assert len([line for line in lines if line.startswith("feature[")]) == 64
    assert "skipped: the reference column is constant" in out  # pixel 0 is always 0
    assert lines[-1].startswith("no drift: 0 of 59 tested features, 5 skipped; 450 rows")


def test_shifted_pixels_are_named_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    x = np.load(HOLDOUT)
    x[:, [19, 27, 43]] = np.minimum(x[:, [19, 27, 43]] + 4, 16)
    current = tmp_path / "current.npy"
    np.save(current, x)
    code, out, _ = drift(capsys, str(REFERENCE), str(current))
    assert code == 1
    flagged = [line.split()[0] for line in out.splitlines() if line.endswith("DRIFT")]
    assert flagged == ["feature[19]", "feature[27]", "feature[43]"]
    assert out.splitlines()[-1].startswith(
        "DRIFT: 3 of 59 tested features (feature[19], feature[27], feature[43])"
    )
    code, out, _ = drift(capsys, str(REFERENCE), str(current), "--json")
    result = json.loads(out)
    assert code == 1 and result["drifted"] and result["n_drifted"] == 3
    drifted = [f["name"] for f in result["features"] if f["drifted"]]
    assert drifted == ["feature[19]", "feature[27]", "feature[43]"]
    assert all(
        t["p_value"] is None or 0 <= t["p_value"] <= 1
        for f in result["features"]
        for t in f["tests"]
    )


def test_csv_with_header_categorical_column_and_nan(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(2)

    def write(path: Path, n: int, colours: list[int], shift: float) -> None:
        lines = ["colour,height"]
        for _ in range(n):
            lines.append(f"{rng.choice(colours)},{rng.normal(170 + shift, 10):.1f}")
        lines[3] = "1,nan"
        path.write_text("\n".join(lines) + "\n")

    write(tmp_path / "ref.csv", 2000, [0, 1, 2], 0.0)
    write(tmp_path / "same.csv", 500, [0, 1, 2], 0.0)
    write(tmp_path / "new.csv", 500, [0, 1, 2, 3], 0.0)  # a colour never seen
    ref, same, new = (str(tmp_path / f) for f in ("ref.csv", "same.csv", "new.csv"))
    code, out, _ = drift(capsys, ref, same, "--categorical", "colour")
    assert code == 0, out
    code, out, _ = drift(capsys, ref, new, "--categorical", "colour", "--json")
    result = json.loads(out)
    assert code == 1
    colour, height = result["features"]
    assert colour["kind"] == "categorical" and colour["drifted"]
    assert [t["test"] for t in colour["tests"]] == ["chi2", "psi"]
    assert not height["drifted"], height
    assert height["n_window"] == 499  # the NaN left out
    assert result["n_nonfinite_rows_excluded"] == 1


def test_files_that_cannot_be_compared_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    narrow = tmp_path / "narrow.npy"
    np.save(narrow, np.zeros((100, 3)))
    code, _, err = drift(capsys, str(REFERENCE), str(narrow))
    assert code == 2
    assert "the files need the same layout" in err and "(64)" in err and "(3)" in err
    code, _, err = drift(capsys, str(REFERENCE), str(tmp_path / "missing.npy"))
    assert code == 2 and "no such file" in err
    code, _, err = drift(capsys, str(REFERENCE), str(HOLDOUT), "--categorical", "nope")
    assert code == 2 and "--categorical ['nope']: no such column" in err
    few = tmp_path / "few.npy"
    np.save(few, np.load(HOLDOUT)[:10])
    code, out, _ = drift(capsys, str(REFERENCE), str(few))
    assert code == 0 and out.splitlines()[-1].startswith("not evaluated: window has 10 rows")
