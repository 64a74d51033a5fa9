"""Calibration of each per-feature drift test, and of their combination, in the far null tail.

Re-run from the repository root::

    python benchmarks/drift_calibration.py --draws 1000000

The dataset-level false-alarm rate of the detector (BH or Bonferroni across
64 features at alpha 0.05) is set by how often a feature's combined p-value
falls below about alpha / 64 = 7.8e-4 when nothing drifted. This script
measures, on many null draws (features are independent, so one batch of
``--features`` columns is that many independent draws), the tail
``P(p <= t)`` of every test of the default and of the combinations, at
``t`` = 7.8e-4 (alpha / 64), 1e-2 and 5e-2, for the scenario of the power
table: reference 5,000 rows and window 1,000 rows of N(0, 1), continuous and
rounded to 0.1 ("tied"), a fresh reference per draw.

A calibrated p-value has ``P(p <= t) = t``; the script prints the ratio of
the observed rate to ``t`` with a 95 % interval (Wilson), so a ratio whose
interval lies above 1 is anti-conservative. It also groups the draws into
windows of 64 features (each with its own fresh reference, as in the power
table's fresh-reference cells) and prints the dataset-level false-alarm rate
of Benjamini-Hochberg and Bonferroni across the 64 at alpha 0.05: every
``--draws`` / 64 windows.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
from scipy import special

if __package__ in (None, ""):
    # Run as a script: import detectors from this checkout, not from elsewhere.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from detectors.correction import bonferroni_min, cauchy_combination
from detectors.drift import DEFAULT_TEST_WEIGHTS, DriftConfig, DriftDetector
from detectors.reference import Reference

N_REFERENCE = 5_000
N_WINDOW = 1_000
TESTS = ("welch", "brown_forsythe", "chi2")
THRESHOLDS = (0.05 / 64, 1e-2, 5e-2)
ALPHA = 0.05
N_FEATURES = 64


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval for k successes in n trials."""
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def null_pvalues(
    rng: np.random.Generator, n_features: int, tied: bool, n_ref: int, n_win: int
) -> dict[str, np.ndarray]:
    """Per-test p-values of ``n_features`` independent null draws (fresh reference each)."""
    ref = rng.standard_normal((n_ref, n_features))
    win = rng.standard_normal((n_win, n_features))
    if tied:
        ref, win = np.round(ref, 1), np.round(win, 1)
    names = [f"x{i}" for i in range(n_features)]
    cfg = DriftConfig(continuous_tests=TESTS, discrete_tests=TESTS, distances=())
    res = DriftDetector(Reference.fit(ref, names), cfg).score(win)
    out = {t: np.full(n_features, np.nan) for t in TESTS}
    for f, fr in enumerate(res.features):
        for tr in fr.tests:
            if tr.p_value is not None:
                out[tr.test][f] = tr.p_value
    return out


def _pct(k: int, n: int) -> str:
    lo, hi = wilson(k, n)
    return f"{100 * k / n:.2f} % [{100 * lo:.2f}, {100 * hi:.2f}]"


def combinations(p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The per-feature combinations compared: the default's and alternatives."""
    mat = np.column_stack([p[t] for t in TESTS])
    w = np.array([dict(DEFAULT_TEST_WEIGHTS)[t] for t in TESTS])
    w = w / w.sum()
    return {
        "bonferroni-min .8/.1/.1 (default)": bonferroni_min(mat, w),
        "cauchy .8/.1/.1": cauchy_combination(mat, w),
        "cauchy equal": cauchy_combination(mat),
    }


def dataset_rates(p: np.ndarray) -> tuple[int, int, int]:
    """Windows, and alarms of BH and of Bonferroni, over consecutive blocks of 64 p-values."""
    n_win = p.size // N_FEATURES
    blocks = np.sort(p[: n_win * N_FEATURES].reshape(n_win, N_FEATURES), axis=1)
    steps = ALPHA * np.arange(1, N_FEATURES + 1) / N_FEATURES
    bh = int((blocks <= steps).any(axis=1).sum())
    bonf = int((blocks[:, 0] <= ALPHA / N_FEATURES).sum())
    return n_win, bh, bonf


def conditional_rate_spread(
    n_ref: int, n_win: int, n_refs: int, rng: np.random.Generator
) -> np.ndarray:
    """Model of the no-drift alarm rate conditional on one fixed reference (mean test alone).

    With a fixed reference, every window shares its sampling error: the
    reference mean of feature f misses the truth by ``d_f`` ~ N(0, 1 / n_ref),
    so the Welch statistic of a window is centred at ``c_f = -d_f / se`` with
    ``se = sqrt(1/n_ref + 1/n_win)`` and has standard deviation
    ``sqrt(1/n_win) / se``. A feature then alarms with probability
    ``q_f = P(|Z sd + c_f| > z)`` at the two-sided threshold ``z`` of
    ``alpha / 64``, and the dataset with ``1 - prod(1 - q_f)``. Averaged over
    references this is alpha; returned are ``n_refs`` draws of it (N(0, 1)
    data, normal approximation), one per reference.
    """
    se = math.sqrt(1 / n_ref + 1 / n_win)
    sd = math.sqrt(1 / n_win) / se
    z = float(special.ndtri(1 - ALPHA / N_FEATURES / 2))
    c = rng.standard_normal((n_refs, N_FEATURES)) * math.sqrt(1 / n_ref) / se
    q = special.ndtr((-z - c) / sd) + special.ndtr((c - z) / sd)
    rates: np.ndarray = 1 - np.prod(1 - q, axis=1)
    return rates


def main(argv: list[str] | None = None) -> int:
    """Draw, count tail rates, print a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=1_000_000, help="null draws per data kind")
    parser.add_argument("--features", type=int, default=2_000, help="draws per batch")
    parser.add_argument("--n-ref", type=int, default=N_REFERENCE)
    parser.add_argument("--n-win", type=int, default=N_WINDOW)
    parser.add_argument(
        "--spread-only",
        action="store_true",
        help="only print the modelled spread of the fixed-reference false-alarm rate",
    )
    parser.add_argument("--seed", type=int, default=20_261_123)
    parser.add_argument("--out", type=Path, default=None, help="write the table here")
    parser.add_argument(
        "--save", type=Path, default=None, help="save the raw p-values (.npz) for further study"
    )
    args = parser.parse_args(argv)
    if args.spread_only:
        print(
            "| reference rows | window rows | mean | sd | 10 % | 50 % | 90 % | P(rate > 5 %) |",
            "|---:|---:|---|---|---|---|---|---|",
            sep="\n",
        )
        for n_ref in (5_000, 20_000, 50_000):
            r = conditional_rate_spread(
                n_ref, args.n_win, 200_000, np.random.default_rng(args.seed)
            )
            q10, q50, q90 = np.quantile(r, [0.1, 0.5, 0.9])
            print(
                f"| {n_ref} | {args.n_win} | {100 * r.mean():.2f} % | {100 * r.std():.2f} % "
                f"| {100 * q10:.2f} % | {100 * q50:.2f} % | {100 * q90:.2f} % "
                f"| {100 * np.mean(r > ALPHA):.0f} % |"
            )
        return 0
    started = time.perf_counter()
    lines = [
        "| data | p-value | draws | "
        + " | ".join(f"P(p ≤ {t:.2g}) / {t:.2g}" for t in THRESHOLDS)
        + " |",
        "|---|---|---:|" + "---|" * len(THRESHOLDS),
    ]
    saved: dict[str, np.ndarray] = {}
    dataset_lines = [
        f"| data | per-feature p-value | windows of {N_FEATURES} | BH, alpha {ALPHA} "
        f"| Bonferroni, alpha {ALPHA} |",
        "|---|---|---:|---|---|",
    ]
    for tied in (False, True):
        kind = "tied" if tied else "continuous"
        rng = np.random.default_rng([args.seed, int(tied)])
        chunks: dict[str, list[np.ndarray]] = {}
        n_batches = math.ceil(args.draws / args.features)
        for b in range(n_batches):
            p = null_pvalues(rng, args.features, tied, args.n_ref, args.n_win)
            p.update(combinations(p))
            for name, v in p.items():
                chunks.setdefault(name, []).append(v)
            if (b + 1) % 50 == 0:
                print(f"{kind}: {b + 1}/{n_batches} batches", file=sys.stderr, flush=True)
        for name, parts in chunks.items():
            v = np.concatenate(parts)
            saved[f"{kind}/{name}"] = v
            v = v[np.isfinite(v)]
            cells = []
            for t in THRESHOLDS:
                k = int(np.sum(v <= t))
                lo, hi = wilson(k, v.size)
                cells.append(f"{k / v.size / t:.3f} [{lo / t:.3f}, {hi / t:.3f}] ({k})")
            lines.append(f"| {kind} | {name} | {v.size} | " + " | ".join(cells) + " |")
            if np.all(np.isfinite(saved[f"{kind}/{name}"])):
                n_win, bh, bonf = dataset_rates(saved[f"{kind}/{name}"])
                dataset_lines.append(
                    f"| {kind} | {name} | {n_win} | {_pct(bh, n_win)} | {_pct(bonf, n_win)} |"
                )
    elapsed = time.perf_counter() - started
    lines += [
        "",
        f"Reference {args.n_ref}, window {args.n_win}, N(0, 1), fresh reference per draw; "
        f"cells: observed rate / t [95 % Wilson interval] (count). Seed {args.seed}; "
        f"{elapsed / 60:.1f} min.",
        "",
        f"Dataset-level false-alarm rate, the draws grouped into windows of {N_FEATURES} features:",
        "",
        *dataset_lines,
    ]
    table = "\n".join(lines) + "\n"
    if args.out is not None:
        args.out.write_text(table)
    if args.save is not None:
        np.savez_compressed(args.save, **{k.replace("/", "__"): v for k, v in saved.items()})
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
