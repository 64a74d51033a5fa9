"""Where a model version's drift windows are evaluated: the worker thread, or a child process.

``monitoring.drift.executor`` picks one per model version:

* ``thread`` — :class:`ThreadEvaluator`: the drift worker thread scores the
  window itself. The heavy numpy calls release the GIL; between them the
  worker takes it back (a thousand-odd times per 100,000 × 64 window), which
  measured costs the event loop a few milliseconds per window
  (docs/benchmarks.md, "Drift evaluation off the request path", part 3).
* ``process`` — :class:`ProcessEvaluator`: a child process (``spawn``, its own
  interpreter and GIL, SCHED_IDLE for the whole process) scores the window,
  so no evaluation code ever shares the GIL with serving.
  The window buffer is a ``multiprocessing.shared_memory`` block both
  processes map: the worker thread writes feature rows into it as before,
  sends the child the row count (a few bytes through a pipe) and blocks,
  without the GIL, until a small result comes back — nothing big is copied or
  pickled per window. The child is started lazily by the worker thread, gets
  the fitted reference once, and exits when its pipe closes (also when the
  server dies). A child that dies (killed, out of memory) costs that window:
  it is counted (``sidecar_drift_windows_skipped_total{reason="executor_failed"}``)
  and logged, and the next window starts a new child.

Both return the same :class:`Outcome` per scope, computed by :func:`score_window`.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from detectors.drift import DriftConfig, DriftDetector, WindowScores
from detectors.reference import Reference
from exporters.drift import Evaluation
from sidecar.drift.worker import Priority, lower_priority

log = logging.getLogger(__name__)

Executor = Literal["thread", "process"]

#: Drifted feature names an outcome carries for the log.
LOGGED_FEATURES = 10
#: How long the worker waits for a child that was asked to stop before killing it.
STOP_SECONDS = 5.0


class EvaluatorFailed(Exception):
    """The evaluating child process died or could not be started (the window is lost)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class EvaluationError(Exception):
    """Scoring raised in the child process; the message holds its traceback."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, slots=True)
class ScopeSpec:
    """What evaluating one scope needs: its fitted reference and the exported features."""

    name: str
    reference: Reference
    exported: frozenset[str]

    @property
    def width(self) -> int:
        """Features (columns of the window buffer)."""
        return self.reference.n_features


@dataclass(frozen=True, slots=True)
class Outcome:
    """One scope's verdict on one window, as plain numbers (small: crosses the pipe)."""

    scope: str
    evaluated: bool
    evaluation: Evaluation | None  # None when not evaluated
    n_drifted: int = 0
    n_features: int = 0
    drifted_features: tuple[str, ...] = ()


#: Columns of an Evaluation besides the tests and distances: the per-feature p-values.
COMBINED_COLUMNS = ("combined", "adjusted")


def evaluation_of(
    scores: WindowScores, exported: frozenset[str], seconds: float, at: float
) -> Evaluation:
    """The exporter's view of a window's scores: plain numbers, exported features only.

    Per exported feature: each test that gave a p-value (statistic and p-value),
    each defined distance of a feature that was tested (statistic), and the
    combined and adjusted p-values of an evaluated feature; NaN elsewhere.
    Arrays, not objects: the exporter reads them at scrape time.
    """
    index = [f for f, name in enumerate(scores.feature_names) if name in exported]
    n_tests, n_distances = len(scores.tests), len(scores.distances)
    columns = (*scores.tests, *scores.distances, *COMBINED_COLUMNS)
    statistics = np.full((len(index), len(columns)), np.nan)
    p_values = np.full((len(index), len(columns)), np.nan)
    statistics[:, :n_tests] = scores.statistics[index]
    p_values[:, :n_tests] = scores.p_values[index]
    tested = np.asarray(scores.ran[index].any(axis=1), dtype=np.bool_)
    statistics[:, n_tests : n_tests + n_distances] = np.where(
        tested[:, None], scores.distance_values[index], np.nan
    )
    p_values[:, -2] = scores.combined[index]
    p_values[:, -1] = scores.adjusted[index]
    return Evaluation(
        drifted=scores.drifted,
        features_drifted=scores.n_drifted,
        features_skipped=scores.n_skipped,
        window_rows=scores.n_window,
        nonfinite_rows=scores.n_nonfinite_rows_excluded,
        duration_seconds=seconds,
        timestamp=at,
        features=tuple(scores.feature_names[f] for f in index),
        columns=columns,
        statistics=statistics,
        p_values=p_values,
    )


def score_window(
    detectors: Sequence[DriftDetector],
    specs: Sequence[ScopeSpec],
    buffers: Sequence[np.ndarray],
    n: int,
) -> list[Outcome]:
    """Score the first ``n`` rows of every scope's buffer; stops at a scope not evaluated."""
    outcomes: list[Outcome] = []
    for detector, spec, buffer in zip(detectors, specs, buffers, strict=True):
        started = time.perf_counter()
        scores = detector.scores(buffer[:n])
        seconds = time.perf_counter() - started
        if not scores.evaluated:
            outcomes.append(Outcome(spec.name, False, None))
            break
        outcomes.append(
            Outcome(
                spec.name,
                True,
                evaluation_of(scores, spec.exported, seconds, time.time()),
                scores.n_drifted,
                scores.n_features,
                scores.drifted_features[:LOGGED_FEATURES],
            )
        )
    return outcomes


class Evaluator(Protocol):
    """Scores a model version's windows; the monitor writes rows into ``buffers()``."""

    def buffers(self) -> Sequence[np.ndarray]:
        """One ``(window_size, width)`` float64 buffer per scope (worker thread only)."""
        ...

    def evaluate(self, n: int) -> list[Outcome]:
        """Score the first ``n`` rows of the buffers (blocks the worker thread, not the loop)."""
        ...

    def close(self) -> None:
        """Release what the evaluator holds (idempotent)."""
        ...


def evaluator(
    executor: Executor,
    label: str,
    specs: Sequence[ScopeSpec],
    config: DriftConfig,
    window_size: int,
    priority: Priority,
) -> Evaluator:
    """The evaluator ``executor`` names."""
    if executor == "process":
        return ProcessEvaluator(label, specs, config, window_size, priority)
    return ThreadEvaluator(specs, config, window_size)


class ThreadEvaluator:
    """Scores on the calling thread (the drift worker)."""

    def __init__(self, specs: Sequence[ScopeSpec], config: DriftConfig, window_size: int) -> None:
        self._specs = tuple(specs)
        self._detectors = [DriftDetector(s.reference, config) for s in self._specs]
        self._buffers = [np.empty((window_size, s.width), dtype=np.float64) for s in self._specs]

    def buffers(self) -> Sequence[np.ndarray]:
        """Plain arrays."""
        return self._buffers

    def evaluate(self, n: int) -> list[Outcome]:
        """Score here."""
        return score_window(self._detectors, self._specs, self._buffers, n)

    def close(self) -> None:
        """Nothing to release."""


def _shapes(specs: Sequence[ScopeSpec], window_size: int) -> list[tuple[int, tuple[int, int]]]:
    """(byte offset, shape) of each scope's buffer in the shared block."""
    out: list[tuple[int, tuple[int, int]]] = []
    offset = 0
    for spec in specs:
        shape = (window_size, spec.width)
        out.append((offset, shape))
        offset += window_size * spec.width * 8
    return out


def _views(shm: SharedMemory, layout: Sequence[tuple[int, tuple[int, int]]]) -> list[np.ndarray]:
    return [
        np.ndarray(shape, dtype=np.float64, buffer=shm.buf, offset=offset)
        for offset, shape in layout
    ]


def _reserve(name: str, size: int) -> None:
    """Allocate a shared block's pages now (Linux), so a full /dev/shm is an OSError here.

    A block is created sparse: without this, writing into it with /dev/shm full (a
    container's default is 64 MiB) would kill the server with SIGBUS.
    """
    path = Path("/dev/shm") / name  # noqa: S108 - where POSIX shared memory lives on Linux
    if not hasattr(os, "posix_fallocate") or not path.exists():
        return
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, size)
    finally:
        os.close(fd)


def _child(
    conn: Connection,
    shm_name: str,
    specs: Sequence[ScopeSpec],
    config: DriftConfig,
    window_size: int,
    priority: Priority,
) -> None:
    """The child process: score windows on request until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server decides when this stops
    lower_priority(priority)
    shm = SharedMemory(shm_name)
    buffers = _views(shm, _shapes(specs, window_size))
    detectors = [DriftDetector(s.reference, config) for s in specs]
    conn.send(("ready", os.getpid()))
    try:
        while True:
            try:
                n = conn.recv()
            except EOFError:  # the server closed the pipe, or died
                break
            if n is None:
                break
            try:
                reply: tuple[str, object] = ("ok", score_window(detectors, specs, buffers, n))
            except Exception:
                reply = ("error", traceback.format_exc())
            conn.send(reply)
    finally:
        del buffers
        shm.close()


class ProcessEvaluator:
    """Scores in a child process that maps the window buffers (see the module docstring)."""

    def __init__(
        self,
        label: str,
        specs: Sequence[ScopeSpec],
        config: DriftConfig,
        window_size: int,
        priority: Priority,
        *,
        poll_seconds: float = 0.1,
    ) -> None:
        self._label = label
        self._specs = tuple(specs)
        self._config = config
        self._window_size = window_size
        self._priority = priority
        self._poll = poll_seconds
        self._layout = _shapes(self._specs, window_size)
        self._shm: SharedMemory | None = None
        self._buffers: list[np.ndarray] = []
        self._process: BaseProcess | None = None
        self._conn: Connection | None = None
        self._closed = False

    @property
    def pid(self) -> int | None:
        """The child's process id, while one runs."""
        process = self._process
        return process.pid if process is not None and process.is_alive() else None

    def shared_memory_name(self) -> str:
        """The shared block's name (``/dev/shm/NAME`` on Linux), creating it if needed."""
        self.buffers()
        assert self._shm is not None
        return self._shm.name

    def buffers(self) -> Sequence[np.ndarray]:
        """Views of the shared block (created on first use, by the worker thread)."""
        if self._shm is None:
            if self._closed:
                raise RuntimeError(f"drift evaluator of {self._label} is closed")
            size = max(sum(self._window_size * s.width * 8 for s in self._specs), 1)
            shm = SharedMemory(create=True, size=size)
            try:
                _reserve(shm.name, size)
            except OSError as exc:
                shm.close()
                shm.unlink()
                raise EvaluatorFailed(
                    f"cannot hold a drift window of {self._window_size} rows "
                    f"({size / 2**20:.0f} MiB) in shared memory: {exc}"
                ) from exc
            self._shm = shm
            self._buffers = _views(shm, self._layout)
        return self._buffers

    def _start(self) -> Connection:
        """A running child and the pipe to it (starting one if needed)."""
        if self._conn is not None and self._process is not None and self._process.is_alive():
            return self._conn
        self._reap()
        self.buffers()
        assert self._shm is not None
        context = multiprocessing.get_context("spawn")
        ours, theirs = context.Pipe()
        process = context.Process(
            target=_child,
            args=(
                theirs,
                self._shm.name,
                self._specs,
                self._config,
                self._window_size,
                self._priority,
            ),
            name=f"drift-{self._label}",
            daemon=True,
        )
        try:
            process.start()
        except OSError as exc:
            ours.close()
            theirs.close()
            raise EvaluatorFailed(f"cannot start a drift evaluation process: {exc}") from exc
        finally:
            theirs.close()
        self._process, self._conn = process, ours
        ready = self._receive()  # the child died while starting: EvaluatorFailed
        log.info("drift evaluation process for %s started (pid %s)", self._label, ready[1])
        return ours

    def _receive(self) -> tuple[str, object]:
        """The child's next reply; EvaluatorFailed when it died instead (GIL free while waiting)."""
        conn, process = self._conn, self._process
        assert conn is not None and process is not None
        try:
            while not conn.poll(self._poll):
                if not process.is_alive():
                    break
            reply: tuple[str, object] = conn.recv()
            return reply
        except (EOFError, OSError) as exc:
            process.join(1.0)
            code = process.exitcode
            self._reap()
            if code is not None and code < 0:
                how = f"was killed by signal {-code}"
            else:
                how = f"exited with status {code}"
            raise EvaluatorFailed(
                f"the drift evaluation process of {self._label} {how} ({type(exc).__name__})"
            ) from exc

    def evaluate(self, n: int) -> list[Outcome]:
        """Send the row count, wait for the outcomes."""
        conn = self._start()
        try:
            conn.send(n)
        except OSError as exc:
            self._reap()
            raise EvaluatorFailed(
                f"the drift evaluation process of {self._label} is gone: {exc}"
            ) from exc
        kind, payload = self._receive()
        if kind == "error":
            raise EvaluationError(str(payload))
        assert isinstance(payload, list)
        return payload

    def _reap(self) -> None:
        """Forget a child (killing it if it still runs) and its pipe."""
        conn, self._conn = self._conn, None
        process, self._process = self._process, None
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.send(None)
            conn.close()
        if process is not None:
            process.join(STOP_SECONDS)
            if process.is_alive():
                process.kill()
                process.join(STOP_SECONDS)
            with contextlib.suppress(ValueError):  # still running after SIGKILL: leave it
                process.close()

    def close(self) -> None:
        """Stop the child and free the shared block (idempotent)."""
        self._closed = True
        self._reap()
        self._buffers = []
        shm, self._shm = self._shm, None
        if shm is not None:
            shm.close()
            with contextlib.suppress(FileNotFoundError):
                shm.unlink()
