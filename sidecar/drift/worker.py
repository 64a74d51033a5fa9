"""The one background thread that runs every model version's drift monitor."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from typing import Literal, Protocol

log = logging.getLogger(__name__)

#: Scheduling of the worker thread: SCHED_IDLE, nice 19, or unchanged.
Priority = Literal["idle", "nice", "normal"]


class Monitor(Protocol):
    """What the worker runs: ``sidecar.drift.monitor.ModelMonitor``."""

    @property
    def model(self) -> str:
        """Model name."""
        ...

    @property
    def version(self) -> str:
        """Model version."""
        ...

    def process(self) -> None:
        """Take queued rows, fill windows, evaluate full ones."""
        ...


class DriftWorker:
    """The one background thread that processes every model version's monitor.

    Evaluations are CPU work beside serving. The heavy parts (sorting, sums,
    searchsorted over whole columns) are numpy calls that release the GIL, and
    the thread lowers its own scheduling priority so that the event loop and
    the model threads get the CPU whenever they want it: ``idle`` (the default)
    is Linux's SCHED_IDLE policy for this thread alone (it runs only on CPU time
    nothing else wants), falling back to ``nice`` 19; ``normal`` leaves it as is
    (docs/benchmarks.md, "Drift evaluation off the request path").
    """

    def __init__(self, interval: float = 0.05, priority: Priority = "idle") -> None:
        self._interval = interval
        self._priority = priority
        self._monitors: dict[tuple[str, str], Monitor] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, monitor: Monitor) -> None:
        """Process ``monitor`` from now on (replacing one of the same model version)."""
        with self._lock:
            self._monitors[(monitor.model, monitor.version)] = monitor

    def remove(self, model: str, version: str) -> None:
        """Stop processing a model version."""
        with self._lock:
            self._monitors.pop((model, version), None)

    def monitors(self) -> Mapping[tuple[str, str], Monitor]:
        """The monitors processed now."""
        with self._lock:
            return dict(self._monitors)

    def run_once(self) -> None:
        """Process every monitor once (the thread's loop; tests call it directly)."""
        for monitor in self.monitors().values():
            try:
                monitor.process()
            except Exception:  # one model's surprise must not stop the others
                log.exception("drift monitor of %s v%s failed", monitor.model, monitor.version)

    def start(self) -> None:
        """Start the thread (idempotent)."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="drift-worker", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread (a window being evaluated finishes first)."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            thread.join(60)

    def _lower_priority(self) -> None:
        """Make this thread run only on CPU time serving does not want (Linux, per thread)."""
        tid = threading.get_native_id()
        if self._priority == "idle" and hasattr(os, "SCHED_IDLE"):
            try:
                os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
                return
            except OSError as exc:
                log.info("drift worker: SCHED_IDLE refused (%s); using nice 19", exc)
        if self._priority != "normal" and hasattr(os, "setpriority"):
            try:
                os.setpriority(os.PRIO_PROCESS, tid, 19)
            except OSError as exc:
                log.warning("drift worker: cannot lower its priority: %s", exc)

    def _run(self) -> None:
        self._lower_priority()
        while not self._stop.wait(self._interval):
            self.run_once()
