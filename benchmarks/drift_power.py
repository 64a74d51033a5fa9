"""False-alarm rate and power of the drift detector, against a KS + Bonferroni baseline.

Re-run from the repository root::

    python benchmarks/drift_power.py --windows 200 --null-windows 1000 --out docs/drift_table.md

Every cell draws windows of 1,000 rows of 64 features and counts how often
the dataset verdict says "drifted". Scenarios follow issue 10: no drift
(continuous, and values rounded to 0.1 = "tied"), a mean shift of +0.25 or
+0.10 standard deviations in 3 of the 64 features, a standard-deviation change
in 3 of 64 features (mean unchanged), and a change of class priors in a
classifier's predicted classes. Each cell is run with one fixed reference
(5,000 rows) and with a fresh reference per trial: the first is what one
deployment sees (its rate depends on that reference's sampling error), the
second is the rate the tests guarantee on average over references.

Methods: the detector's defaults (``DriftConfig()``), and plain KS (scipy's
asymptotic p-values) with a Bonferroni correction, which is what Alibi Detect's
KSDrift does by default. For class priors, the default is
``class_distribution_drift`` (chi-squared) and the baseline is KS on the class
index. Intervals are 95 % Wilson score intervals. The no-drift cells use more
windows (``--null-windows``) because a test whose true rate is exactly 5 %
needs about 1,000 windows before the upper end of its interval falls below 7 %.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy

if __package__ in (None, ""):
    # Run as a script: import detectors from this checkout, not from elsewhere.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from detectors.drift import (
    DriftConfig,
    DriftDetector,
    class_distribution_drift,
)
from detectors.ks import ks_2samp_columns
from detectors.reference import Reference

N_FEATURES = 64
N_REFERENCE = 5_000
N_WINDOW = 1_000
N_SHIFTED = 3
N_CLASSES = 10
ALPHA = 0.05

BASELINE = DriftConfig(
    alpha=ALPHA,
    correction="bonferroni",
    continuous_tests=("ks",),
    discrete_tests=("ks",),
    distances=(),
    ks_method="asymp",
)
DEFAULT = DriftConfig(alpha=ALPHA)


@dataclass(frozen=True)
class Scenario:
    """A row of the table: how windows differ from the reference."""

    key: str
    label: str
    tied: bool
    mean_shift: float = 0.0
    std_factor: float = 1.0
    null: bool = False


SCENARIOS = (
    Scenario("null", "no drift, continuous", tied=False, null=True),
    Scenario("null_tied", "no drift, tied (rounded to 0.1)", tied=True, null=True),
    Scenario("m25", "+0.25 sigma mean in 3/64, continuous", tied=False, mean_shift=0.25),
    Scenario("m10", "+0.10 sigma mean in 3/64, continuous", tied=False, mean_shift=0.10),
    Scenario("m10_tied", "+0.10 sigma mean in 3/64, tied", tied=True, mean_shift=0.10),
    Scenario("s110", "std x1.10 in 3/64 (mean unchanged), continuous", tied=False, std_factor=1.10),
    Scenario("s115", "std x1.15 in 3/64 (mean unchanged), continuous", tied=False, std_factor=1.15),
    Scenario("s115_tied", "std x1.15 in 3/64 (mean unchanged), tied", tied=True, std_factor=1.15),
)

# Class priors: reference uniform over 10 classes; drifted windows move class 0
# from 10 % to 14 % (the other classes shrink proportionally).
PRIORS_REF = np.full(N_CLASSES, 1.0 / N_CLASSES)
PRIORS_DRIFT = np.concatenate([[0.14], np.full(N_CLASSES - 1, 0.86 / (N_CLASSES - 1))])


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval for k successes in n trials."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _draw(rng: np.random.Generator, n: int, sc: Scenario) -> np.ndarray:
    x = rng.standard_normal((n, N_FEATURES))
    if sc.tied:
        x = np.round(x, 1)
    return x


def _window(rng: np.random.Generator, sc: Scenario) -> np.ndarray:
    x = rng.standard_normal((N_WINDOW, N_FEATURES))
    x[:, :N_SHIFTED] = x[:, :N_SHIFTED] * sc.std_factor + sc.mean_shift
    if sc.tied:
        x = np.round(x, 1)
    return x


@dataclass
class Cell:
    """Detections out of trials, and scoring times (seconds) per method."""

    hits: dict[str, int]
    trials: int
    times: dict[str, list[float]]


def run_feature_cell(sc: Scenario, n_trials: int, fresh: bool, seed: int) -> Cell:
    """Count detections of the default and the baseline on one scenario."""
    rng = np.random.default_rng(seed)
    names = [f"x{i}" for i in range(N_FEATURES)]
    hits = {"default": 0, "baseline": 0}
    times: dict[str, list[float]] = {"default": [], "baseline": []}
    detectors: dict[str, DriftDetector] = {}
    for trial in range(n_trials):
        if fresh or trial == 0:
            ref = Reference.fit(_draw(rng, N_REFERENCE, sc), names)
            detectors = {
                "default": DriftDetector(ref, DEFAULT),
                "baseline": DriftDetector(ref, BASELINE),
            }
        window = _window(rng, sc)
        for name, det in detectors.items():
            t0 = time.perf_counter()
            result = det.score(window)
            times[name].append(time.perf_counter() - t0)
            hits[name] += int(result.drifted)
    return Cell(hits=hits, trials=n_trials, times=times)


def run_class_cell(drift: bool, n_trials: int, fresh: bool, seed: int) -> Cell:
    """Predicted-class counts: chi-squared (default) versus KS on the class index."""
    rng = np.random.default_rng(seed)
    hits = {"default": 0, "baseline": 0}
    times: dict[str, list[float]] = {"default": [], "baseline": []}
    ref_labels = np.empty(0)
    for trial in range(n_trials):
        if fresh or trial == 0:
            ref_labels = np.sort(rng.choice(N_CLASSES, size=N_REFERENCE, p=PRIORS_REF))
        priors = PRIORS_DRIFT if drift else PRIORS_REF
        win_labels = rng.choice(N_CLASSES, size=N_WINDOW, p=priors)
        t0 = time.perf_counter()
        res = class_distribution_drift(
            np.bincount(ref_labels, minlength=N_CLASSES),
            np.bincount(win_labels, minlength=N_CLASSES),
            ALPHA,
        )
        times["default"].append(time.perf_counter() - t0)
        hits["default"] += int(res.drifted)
        t0 = time.perf_counter()
        _, p = ks_2samp_columns(ref_labels[:, None].astype(float), win_labels[:, None], "asymp")
        times["baseline"].append(time.perf_counter() - t0)
        hits["baseline"] += int(p[0] <= ALPHA)
    return Cell(hits=hits, trials=n_trials, times=times)


# Per-feature combinations compared by --candidates: name -> (weights, combine, correction).
CANDIDATES: dict[str, tuple[dict[str, float], str, str]] = {
    "KS, Bonferroni across features (baseline)": ({"ks": 1}, "cauchy", "bonferroni"),
    "Welch only, BH": ({"welch": 1}, "cauchy", "bh"),
    "Welch + BF, Cauchy equal weights, BH": ({"welch": 1, "brown_forsythe": 1}, "cauchy", "bh"),
    "Welch + BF + chi2, Cauchy equal weights, BH": (
        {"welch": 1, "brown_forsythe": 1, "chi2": 1},
        "cauchy",
        "bh",
    ),
    "Welch .8 + BF .1 + chi2 .1, Cauchy, BH": (
        {"welch": 0.8, "brown_forsythe": 0.1, "chi2": 0.1},
        "cauchy",
        "bh",
    ),
    "Welch .8 + BF .1 + chi2 .1, Cauchy, Bonferroni": (
        {"welch": 0.8, "brown_forsythe": 0.1, "chi2": 0.1},
        "cauchy",
        "bonferroni",
    ),
    "Welch .8 + BF .1 + chi2 .1, weighted Bonferroni-min, BH (default)": (
        {"welch": 0.8, "brown_forsythe": 0.1, "chi2": 0.1},
        "bonferroni",
        "bh",
    ),
    "Welch .7 + BF .1 + chi2 .1 + KS .1, Cauchy, BH": (
        {"welch": 0.7, "brown_forsythe": 0.1, "chi2": 0.1, "ks": 0.1},
        "cauchy",
        "bh",
    ),
}
CANDIDATE_SCENARIOS = (
    SCENARIOS[0],
    SCENARIOS[1],
    SCENARIOS[3],
    SCENARIOS[4],
    SCENARIOS[5],
    Scenario("bimodal", "same mean and std, bimodal, in 3/64", tied=False),
)


def _candidate_window(rng: np.random.Generator, sc: Scenario) -> np.ndarray:
    if sc.key != "bimodal":
        return _window(rng, sc)
    x = rng.standard_normal((N_WINDOW, N_FEATURES))
    # +-0.8 with noise sd 0.6: mean 0 and variance 1 like the reference, different shape.
    signs = rng.choice([-1.0, 1.0], size=(N_WINDOW, N_SHIFTED))
    x[:, :N_SHIFTED] = 0.8 * signs + 0.6 * x[:, :N_SHIFTED]
    return x


def run_candidates(n_windows: int, seed: int) -> list[str]:
    """Detection rates of candidate combinations on the same windows (fresh references).

    Every test runs once per window; each candidate then combines and corrects
    those p-values its own way, so the candidates are compared on identical data.
    """
    from detectors.correction import (
        benjamini_hochberg,
        bonferroni,
        bonferroni_min,
        cauchy_combination,
    )

    all_tests = ("welch", "brown_forsythe", "ks", "chi2")
    cfg = DriftConfig(continuous_tests=all_tests, distances=(), ks_method="asymp")
    names = [f"x{i}" for i in range(N_FEATURES)]
    rates: dict[str, list[str]] = {c: [] for c in CANDIDATES}
    for j, sc in enumerate(CANDIDATE_SCENARIOS):
        rng = np.random.default_rng(seed + j)
        hits = dict.fromkeys(CANDIDATES, 0)
        for _ in range(n_windows):
            det = DriftDetector(Reference.fit(_draw(rng, N_REFERENCE, sc), names), cfg)
            window = _candidate_window(rng, sc)
            if sc.tied:
                window = np.round(window, 1)
            res = det.score(window)
            pmat = np.array(
                [
                    [{t.test: t.p_value for t in fr.tests}[name] for name in all_tests]
                    for fr in res.features
                ]
            )
            for cand, (weights, combine, correction) in CANDIDATES.items():
                cols = [all_tests.index(t) for t in weights]
                w = np.array(list(weights.values()))
                w = w / w.sum()
                p = pmat[:, cols]
                if len(cols) == 1:
                    comb = p[:, 0]
                elif combine == "cauchy":
                    comb = cauchy_combination(p, w)
                else:
                    comb = bonferroni_min(p, w)
                corr = bonferroni if correction == "bonferroni" else benjamini_hochberg
                hits[cand] += int(corr(comb, ALPHA).reject.any())
        for cand in CANDIDATES:
            rates[cand].append(_fmt(hits[cand], n_windows))
        print(f"candidates, {sc.label}: {hits}", file=sys.stderr, flush=True)
    header = "| combination | " + " | ".join(sc.label for sc in CANDIDATE_SCENARIOS) + " |"
    lines = [header, "|---|" + "---|" * len(CANDIDATE_SCENARIOS)]
    lines += [f"| {cand} | " + " | ".join(cells) + " |" for cand, cells in rates.items()]
    return lines


def reference_spread(n_refs: int, n_windows: int, seed: int) -> list[float]:
    """No-drift false-alarm rate of the default, conditional on each of several references.

    With one fixed reference every window shares that reference's sampling
    error, so a deployment's long-run false-alarm rate is a property of its
    reference: alpha on average over references, above or below it for any
    one of them. This measures how far it spreads.
    """
    rng = np.random.default_rng(seed)
    names = [f"x{i}" for i in range(N_FEATURES)]
    null = SCENARIOS[0]
    rates = []
    for _ in range(n_refs):
        det = DriftDetector(Reference.fit(_draw(rng, N_REFERENCE, null), names), DEFAULT)
        hits = sum(det.score(_window(rng, null)).drifted for _ in range(n_windows))
        rates.append(hits / n_windows)
    return rates


def time_per_window(n_repeats: int, seed: int) -> dict[str, tuple[float, float]]:
    """Median and minimum seconds to score one +0.10 sigma window, per method.

    The minimum is the figure least disturbed by other work on a shared machine.
    """
    rng = np.random.default_rng(seed)
    sc = SCENARIOS[3]
    ref = Reference.fit(_draw(rng, N_REFERENCE, sc), [f"x{i}" for i in range(N_FEATURES)])
    out = {}
    for name, cfg in (("default", DEFAULT), ("baseline", BASELINE)):
        det = DriftDetector(ref, cfg)
        windows = [_window(rng, sc) for _ in range(10)]
        det.score(windows[0])
        times = []
        for i in range(n_repeats):
            t0 = time.perf_counter()
            det.score(windows[i % 10])
            times.append(time.perf_counter() - t0)
        out[name] = (float(np.median(times)), float(np.min(times)))
    return out


def _fmt(k: int, n: int) -> str:
    lo, hi = wilson(k, n)
    return f"{100 * k / n:.1f} % [{100 * lo:.1f}, {100 * hi:.1f}]"


def main(argv: list[str] | None = None) -> int:
    """Run every cell and write the markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=200, help="windows per drift cell")
    parser.add_argument("--null-windows", type=int, default=1000, help="windows per no-drift cell")
    parser.add_argument(
        "--spread-references",
        type=int,
        default=10,
        help="references for the fixed-reference spread (0: skip)",
    )
    parser.add_argument(
        "--spread-windows",
        type=int,
        default=300,
        help="no-drift windows per reference in the spread",
    )
    parser.add_argument(
        "--candidates",
        type=int,
        default=0,
        help="also compare candidate combinations on this many windows per "
        "scenario (fresh references); 0: skip",
    )
    parser.add_argument(
        "--timing-only", action="store_true", help="only measure the time per window"
    )
    parser.add_argument("--seed", type=int, default=20_251_123)
    parser.add_argument("--out", type=Path, default=None, help="write the table here")
    args = parser.parse_args(argv)

    seeds = np.random.SeedSequence(args.seed).generate_state(2 * (len(SCENARIOS) + 2) + 1)
    if args.timing_only:
        load = os.getloadavg()[0]
        timing = time_per_window(200, int(seeds[-1]) + 1)
        print(
            "median / minimum ms per window: "
            + ", ".join(f"{m} {1e3 * a:.1f} / {1e3 * b:.1f}" for m, (a, b) in timing.items())
            + f" (1-minute load average {load:.1f})"
        )
        return 0
    rows: list[tuple[str, int, dict[str, Cell]]] = []
    started = time.perf_counter()
    jobs: list[tuple[str, int, Callable[[bool, int], Cell]]] = []
    for sc in SCENARIOS:
        n = args.null_windows if sc.null else args.windows
        jobs.append(
            (sc.label, n, lambda fresh, seed, sc=sc, n=n: run_feature_cell(sc, n, fresh, seed))
        )
    jobs.append(
        (
            "class priors unchanged (10 classes)",
            args.null_windows,
            lambda fresh, seed: run_class_cell(False, args.null_windows, fresh, seed),
        )
    )
    jobs.append(
        (
            "class 0 prior 10 % -> 14 %",
            args.windows,
            lambda fresh, seed: run_class_cell(True, args.windows, fresh, seed),
        )
    )
    for j, (label, n, job) in enumerate(jobs):
        cells = {"fixed": job(False, int(seeds[2 * j])), "fresh": job(True, int(seeds[2 * j + 1]))}
        rows.append((label, n, cells))
        print(
            f"{label}: "
            + ", ".join(
                f"{mode} {m} {_fmt(c.hits[m], c.trials)}"
                for mode, c in cells.items()
                for m in c.hits
            ),
            file=sys.stderr,
            flush=True,
        )
    spread: list[float] = []
    if args.spread_references > 0:
        spread = reference_spread(args.spread_references, args.spread_windows, int(seeds[-1]))
        print(f"spread: {spread}", file=sys.stderr, flush=True)
    elapsed = time.perf_counter() - started

    candidate_lines: list[str] = []
    if args.candidates > 0:
        candidate_lines = run_candidates(args.candidates, int(seeds[-1]) + 2)
    load_before = os.getloadavg()[0]
    timing = time_per_window(200, int(seeds[-1]) + 1)
    cmd = "python benchmarks/drift_power.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        "| scenario | windows | default, fixed ref | default, fresh ref "
        "| KS+Bonferroni, fixed ref | KS+Bonferroni, fresh ref |",
        "|---|---:|---|---|---|---|",
    ]
    for label, n, cells in rows:
        lines.append(
            f"| {label} | {n} | {_fmt(cells['fixed'].hits['default'], n)} "
            f"| {_fmt(cells['fresh'].hits['default'], n)} "
            f"| {_fmt(cells['fixed'].hits['baseline'], n)} "
            f"| {_fmt(cells['fresh'].hits['baseline'], n)} |"
        )
    if spread:
        lines += [
            "",
            f"No-drift false-alarm rate of the default with each of {len(spread)} different fixed "
            f"references ({args.spread_windows} windows each, continuous): "
            + ", ".join(f"{100 * r:.1f} %" for r in sorted(spread))
            + f" (mean {100 * float(np.mean(spread)):.1f} %).",
        ]
    lines += [
        "",
        f"Time per window (64 features x 1,000 rows, reference precomputed; median / "
        f"minimum of 200 scorings): default {1e3 * timing['default'][0]:.1f} / "
        f"{1e3 * timing['default'][1]:.1f} ms, KS+Bonferroni {1e3 * timing['baseline'][0]:.1f} / "
        f"{1e3 * timing['baseline'][1]:.1f} ms (1-minute load average when timing started: "
        f"{load_before:.1f}).",
        "",
        f"Machine: {os.cpu_count()} vCPU ({platform.processor() or platform.machine()}), "
        f"Python {platform.python_version()}, numpy {np.__version__}, scipy {scipy.__version__}. "
        f"Command: `{cmd}` (seed {args.seed}); total run time {elapsed / 60:.1f} min.",
    ]
    if candidate_lines:
        lines += [
            "",
            f"Candidate combinations on identical windows ({args.candidates} per scenario, "
            "fresh reference per window):",
            "",
            *candidate_lines,
        ]
    table = "\n".join(lines) + "\n"
    if args.out is not None:
        args.out.write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
