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

#: Seconds between two rounds of the worker while it has monitors (at most: a
#: monitor with a short ``flush_seconds`` asks for shorter ones). Rows wait this
#: long in the queue at most, unless half the queue fills first (the tap then
#: wakes the worker).
DEFAULT_INTERVAL = 1.0


def lower_priority(priority: Priority, tid: int = 0) -> None:
    """Run thread ``tid`` (0: this whole process) only on CPU time nothing else wants (Linux).

    ``idle`` is the SCHED_IDLE policy, falling back to nice 19 where it is refused;
    ``nice`` is nice 19; ``normal`` changes nothing.
    """
    if priority == "idle" and hasattr(os, "SCHED_IDLE"):
        try:
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
            return
        except OSError as exc:
            log.info("drift: SCHED_IDLE refused (%s); using nice 19", exc)
    if priority != "normal" and hasattr(os, "setpriority"):
        try:
            os.setpriority(os.PRIO_PROCESS, tid, 19)
        except OSError as exc:
            log.warning("drift: cannot lower the priority: %s", exc)


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

    def wait_limit(self) -> float | None:
        """Seconds the worker may wait before processing this monitor (``math.inf``: no
        more than the worker's interval; None: until woken, nothing is pending)."""
        ...

    def process(self) -> None:
        """Take queued rows, fill windows, evaluate full ones."""
        ...

    def close(self) -> None:
        """Release the monitor's evaluator (a child process, shared memory); idempotent."""
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

    The thread wakes every ``interval`` seconds while rows wait (sooner when a
    monitor asks: a short ``flush_seconds``, a flush or a retry that is due),
    when :meth:`wake` is called (the tap does when a queue is half full, or
    when a row comes for a monitor with nothing pending), and otherwise not at
    all: each wake-up costs CPU and a GIL hand-over whatever there is to do, so
    rows are taken in large batches rather than often, and an idle server's
    worker sleeps.
    """

    def __init__(self, interval: float = DEFAULT_INTERVAL, priority: Priority = "idle") -> None:
        self._interval = interval
        self._priority = priority
        self._monitors: dict[tuple[str, str], Monitor] = {}
        self._retired: list[Monitor] = []  # removed, to be closed by the worker thread
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def priority(self) -> Priority:
        """The scheduling this thread (and every evaluation process) runs at."""
        return self._priority

    def add(self, monitor: Monitor) -> None:
        """Process ``monitor`` from now on (replacing one of the same model version)."""
        with self._lock:
            replaced = self._monitors.get((monitor.model, monitor.version))
            self._monitors[(monitor.model, monitor.version)] = monitor
            if replaced is not None and replaced is not monitor:
                self._retired.append(replaced)
        self._wake.set()  # a new monitor may want a shorter interval

    def remove(self, model: str, version: str) -> None:
        """Stop processing a model version; its monitor is closed by the worker thread.

        (The thread may be in the middle of that monitor's ``process()``; closing it
        there, before the next round, never pulls its buffers from under it.)
        """
        with self._lock:
            removed = self._monitors.pop((model, version), None)
            if removed is not None:
                self._retired.append(removed)
        self._wake.set()

    def _close_retired(self) -> None:
        with self._lock:
            retired, self._retired = self._retired, []
        for monitor in retired:
            try:
                monitor.close()
            except Exception:
                log.exception("closing the drift monitor of %s v%s", monitor.model, monitor.version)

    def monitors(self) -> Mapping[tuple[str, str], Monitor]:
        """The monitors processed now."""
        with self._lock:
            return dict(self._monitors)

    def run_once(self) -> None:
        """Process every monitor once (the thread's loop; tests call it directly)."""
        self._close_retired()
        for monitor in self.monitors().values():
            try:
                monitor.process()
            except Exception:  # one model's surprise must not stop the others
                log.exception("drift monitor of %s v%s failed", monitor.model, monitor.version)

    def wake(self) -> None:
        """Run a round now rather than at the next interval (any thread; cheap when awake)."""
        if not self._wake.is_set():
            self._wake.set()

    def start(self) -> None:
        """Start the thread (idempotent)."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="drift-worker", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread (a window being evaluated finishes first), then close every monitor."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            self._wake.set()
            thread.join(60)
        self._close_retired()
        for monitor in self.monitors().values():
            try:
                monitor.close()
            except Exception:
                log.exception("closing the drift monitor of %s v%s", monitor.model, monitor.version)

    def _timeout(self) -> float | None:
        """Seconds until the next round: None (until woken) while nothing is pending."""
        with self._lock:
            if self._retired:
                return 0.0
            monitors = list(self._monitors.values())
        timeout: float | None = None
        for monitor in monitors:
            limit = monitor.wait_limit()
            if limit is not None:
                limit = min(limit, self._interval)
                timeout = limit if timeout is None else min(timeout, limit)
        return timeout

    def _run(self) -> None:
        lower_priority(self._priority, threading.get_native_id())
        while True:
            self._wake.wait(self._timeout())
            self._wake.clear()
            if self._stop.is_set():
                return
            self.run_once()
