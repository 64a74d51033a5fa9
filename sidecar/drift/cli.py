"""``inference-sidecar drift REFERENCE CURRENT``: the server's drift tests, offline, on two files.

Both files use the reference formats of the server (``.npy``; ``.npz`` keyed by
name; ``.csv`` with an optional header) and must have the same layout. Every
element of a row is a feature (``name[i]``, the CSV header's names, or
``feature[i]`` for a bare array). CURRENT is tested as one window with the
server's default tests, combination and correction (docs/drift.md).

Exit status: 0 no drift, 1 drift, 2 the files could not be compared.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TextIO

import numpy as np

from sidecar.drift.reference import SINGLE, ReferenceFile, read_reference
from sidecar.errors import ConfigError, ModelLoadError

#: Name prefix of the columns of a bare array (.npy, .csv without a header).
BARE = "feature"


def _columns(ref: ReferenceFile) -> tuple[np.ndarray, tuple[str, ...]]:
    """All arrays flattened per row and side by side, with a name per column."""
    blocks: list[np.ndarray] = []
    names: list[str] = []
    rows: int | None = None
    for key in sorted(ref.arrays):
        array = np.asarray(ref.arrays[key])
        if array.ndim < 1 or (rows is not None and array.shape[0] != rows):
            raise ConfigError(f"{ref.path}: arrays must share their number of rows")
        rows = int(array.shape[0])
        flat = array.reshape(rows, -1)
        blocks.append(flat.astype(np.float64))
        if key == SINGLE and ref.header is not None:
            names += ref.header
        else:
            prefix = key if key != SINGLE else BARE
            names += (
                [prefix]
                if flat.shape[1] == 1 and key != SINGLE
                else [f"{prefix}[{i}]" for i in range(flat.shape[1])]
            )
    if not blocks:
        raise ConfigError(f"{ref.path}: no arrays")
    return np.concatenate(blocks, axis=1), tuple(names)


def _load(path: Path) -> tuple[np.ndarray, tuple[str, ...]]:
    if path.suffix.lower() not in (".npy", ".npz", ".csv"):
        raise ConfigError(f"{path}: expected a .npy, .npz or .csv file")
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        return _columns(read_reference(path))
    except ModelLoadError as exc:
        raise ConfigError(exc.message) from exc


def _p(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if value >= 1e-3 else f"{value:.1e}"


def _table(result: object, out: TextIO) -> None:
    from detectors.drift import DriftResult

    assert isinstance(result, DriftResult)
    tests = list(dict.fromkeys(t.test for f in result.features for t in f.tests))
    header = ["feature", "kind", "n", *tests, "combined p", "adjusted p", "verdict"]
    rows: list[list[str]] = []
    for f in result.features:
        by_test = {t.test: t for t in f.tests}
        cells = [f.name, f.kind, str(f.n_window)]
        for name in tests:
            t = by_test.get(name)
            if t is None:
                cells.append("")
            elif t.p_value is not None:
                cells.append(f"p={_p(t.p_value)}")
            elif t.statistic is not None:
                cells.append(f"{t.statistic:.3g}")
            else:
                cells.append("-")
        verdict = "DRIFT" if f.drifted else "ok"
        if f.skipped_reason is not None:
            verdict = f"skipped: {f.skipped_reason}"
        rows.append([*cells, _p(f.combined_p), _p(f.adjusted_p), verdict])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    for r in [header, *rows]:
        line = "  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True))
        print(f"{line}  {r[-1]}", file=out)


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Compare the two files; print the table (or JSON) and the verdict to ``out`` (stdout)."""
    out = out if out is not None else sys.stdout
    from detectors.drift import DEFAULT_CONTINUOUS_TESTS, DriftConfig, DriftDetector
    from detectors.errors import DetectorError
    from detectors.reference import Reference

    ref_rows, ref_names = _load(args.reference)
    cur_rows, cur_names = _load(args.current)
    if ref_names != cur_names:
        raise ConfigError(
            f"{args.current} has columns {_sample(cur_names)} but {args.reference} has "
            f"{_sample(ref_names)}: the files need the same layout"
        )
    unknown = [c for c in args.categorical if c not in ref_names]
    if unknown:
        raise ConfigError(f"--categorical {unknown}: no such column; columns: {_sample(ref_names)}")
    try:
        config = DriftConfig(
            alpha=args.alpha,
            correction=args.correction,
            min_window=args.min_window,
            continuous_tests=tuple(args.tests) if args.tests else DEFAULT_CONTINUOUS_TESTS,
        )
        reference = Reference.fit(
            ref_rows, ref_names, categorical=[n in args.categorical for n in ref_names]
        )
        result = DriftDetector(reference, config).score(cur_rows)
    except DetectorError as exc:
        raise ConfigError(exc.message) from exc
    if args.json:
        json.dump(asdict(result), out, indent=2, allow_nan=False)
        print(file=out)
    else:
        _table(result, out)
        print(file=out)
        print(verdict(result), file=out)
    return 1 if result.drifted else 0


def verdict(result: object) -> str:
    """One line: drift or not, how many features, which."""
    from detectors.drift import DriftResult

    assert isinstance(result, DriftResult)
    where = (
        f"{result.n_window} rows against {result.n_reference} reference rows, "
        f"alpha {result.alpha:g} after {result.correction} correction"
    )
    if not result.evaluated:
        return f"not evaluated: {result.not_evaluated_reason} ({where})"
    tested = result.n_features - result.n_skipped
    if result.drifted:
        names = ", ".join(result.drifted_features[:10])
        more = "" if result.n_drifted <= 10 else f", and {result.n_drifted - 10} more"
        return f"DRIFT: {result.n_drifted} of {tested} tested features ({names}{more}); {where}"
    skipped = f", {result.n_skipped} skipped" if result.n_skipped else ""
    return f"no drift: 0 of {tested} tested features{skipped}; {where}"


def _sample(names: Sequence[str]) -> str:
    shown = ", ".join(names[:4])
    return f"[{shown}{', ...' if len(names) > 4 else ''}] ({len(names)})"
