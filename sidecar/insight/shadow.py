"""Shadow comparison: sampled requests also run on another version, off the request path.

The request path only *offers* a finished request to the shadow: a seeded
sampling draw and a ``put_nowait`` into a bounded queue (a full queue drops the
request and counts it). A background task takes requests from the queue, runs
the shadow version on the same inputs in its own single-thread executor, and
compares the shadow's output with the primary's answer:

- classifiers (the compared output is ``monitoring.classification.output``):
  rows where both predict the same class (argmax) count as agreements;
- every model: per row, the largest ``|primary - shadow|`` over the compared
  output's elements goes into a histogram.

Whatever the shadow does (raise, return the wrong shape, hang in its own
thread) the primary's answer has already been sent: failures are counted and
logged, never raised. Each successful shadow run is also handed to
``ShadowListener``s as a ``ShadowPrediction`` so that, for example, a label
store can score the shadow version's predictions when labels arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from exporters.insight import ShadowMetrics
from sidecar.config import ShadowConfig
from sidecar.runtimes import Runtime
from sidecar.types import Tensors

log = logging.getLogger(__name__)

#: A failing shadow is logged on its first failure and then every this many.
LOG_EVERY = 1000


@dataclass(frozen=True, slots=True)
class ShadowPrediction:
    """One request answered by the primary and then by the shadow version."""

    request_id: str
    model: str
    version: str  # the primary version that answered the client
    shadow_version: str
    rows: int
    output: str  # the compared output's name
    primary: np.ndarray  # the primary's compared output
    shadow: np.ndarray  # the shadow's compared output
    time: float  # wall-clock seconds when the shadow finished
    outputs: Tensors  # every output of the shadow's run (``shadow`` is one of them)


class ShadowListener(Protocol):
    """Receives shadow predictions (called on the event loop; must not block)."""

    def on_shadow_prediction(self, prediction: ShadowPrediction) -> None:
        """A shadow run finished and was compared."""
        ...


@dataclass(frozen=True, slots=True)
class Comparison:
    """Primary vs shadow on one request's compared output."""

    rows: int
    agreements: int  # rows with the same argmax (classifiers; 0 otherwise)
    difference: np.ndarray  # (rows,) largest |primary - shadow| per row


def compare_outputs(primary: np.ndarray, shadow: np.ndarray, classify: bool) -> Comparison:
    """Compare two outputs of the same shape; ValueError when the shapes differ."""
    if primary.shape != shadow.shape:
        raise ValueError(
            f"primary output shape {list(primary.shape)} != shadow output shape "
            f"{list(shadow.shape)}"
        )
    p = np.asarray(primary, dtype=np.float64)
    s = np.asarray(shadow, dtype=np.float64)
    rows = p.shape[0] if p.ndim else 1
    p2, s2 = p.reshape(rows, -1), s.reshape(rows, -1)
    difference = np.abs(p2 - s2).max(axis=1) if p2.shape[1] else np.zeros(rows)
    agreements = int((p2.argmax(axis=1) == s2.argmax(axis=1)).sum()) if classify else 0
    return Comparison(rows, agreements, difference)


@dataclass(slots=True)
class _Job:
    request_id: str
    inputs: Tensors
    primary: np.ndarray


class ShadowRunner:
    """Shadows one primary model version with one shadow runtime."""

    def __init__(
        self,
        model: str,
        version: str,
        shadow_version: str,
        runtime: Runtime,
        config: ShadowConfig,
        output: str,
        classify: bool,
        metrics: ShadowMetrics,
        listeners: tuple[ShadowListener, ...] = (),
        executor: Executor | None = None,
    ) -> None:
        self.model = model
        self.version = version
        self.shadow_version = shadow_version
        self.runtime = runtime
        self.output = output
        self._classify = classify
        self._config = config
        self._metrics = metrics
        self._listeners = listeners
        self._executor = executor
        self._rng = random.Random(config.seed)  # noqa: S311 - sampling, not security
        self._queue: asyncio.Queue[_Job] = asyncio.Queue(config.queue_size)
        self._task: asyncio.Task[None] | None = None
        self._failures = 0

    # ------------------------------------------------------------ request path

    def offer(self, request_id: str, inputs: Tensors, outputs: Tensors) -> None:
        """O(1): maybe queue this answered request for the shadow; drop + count when full."""
        if self._rng.random() >= self._config.sample_rate:
            return
        primary = outputs.get(self.output)
        if primary is None:
            return
        try:
            self._queue.put_nowait(_Job(request_id, inputs, primary))
        except asyncio.QueueFull:
            self._metrics.dropped.inc()

    @property
    def queued(self) -> int:
        """Requests waiting for the shadow."""
        return self._queue.qsize()

    # ------------------------------------------------------------ background

    def start(self) -> None:
        """Start the background task (on the running loop)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._work(), name=f"shadow {self.model} v{self.shadow_version}"
            )

    async def stop(self) -> None:
        """Stop the task (queued requests are dropped), unload the shadow, free its thread."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.runtime.unload()
        if self._executor is not None:
            self._executor.shutdown(wait=False)

    async def join(self) -> None:
        """Wait until every queued request has been processed (tests, shutdown)."""
        await self._queue.join()

    async def _work(self) -> None:
        while True:
            job = await self._queue.get()
            try:
                await self._run(job)
            finally:
                self._queue.task_done()

    async def _run(self, job: _Job) -> None:
        started = time.perf_counter()
        try:
            outputs = await self.runtime.predict(job.inputs)
            elapsed = time.perf_counter() - started
            shadow = outputs[self.output]
            result = compare_outputs(job.primary, shadow, self._classify)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._metrics.failed.inc()
            self._failures += 1
            if self._failures % LOG_EVERY == 1:
                log.warning(
                    "shadow of model %s version %s (shadow version %s) failed on request %s "
                    "(%d failures so far; the primary's answer is unaffected): %s: %s",
                    self.model,
                    self.version,
                    self.shadow_version,
                    job.request_id,
                    self._failures,
                    type(exc).__name__,
                    exc,
                )
            return
        self._metrics.duration.observe(elapsed)
        self._metrics.compared.inc()
        self._metrics.rows.inc(result.rows)
        if self._classify and result.agreements:
            self._metrics.agreements.inc(result.agreements)
        self._metrics.difference.observe_array(result.difference)
        if self._listeners:
            prediction = ShadowPrediction(
                job.request_id,
                self.model,
                self.version,
                self.shadow_version,
                result.rows,
                self.output,
                job.primary,
                np.asarray(shadow),
                time.time(),
                outputs,
            )
            for listener in self._listeners:
                try:
                    listener.on_shadow_prediction(prediction)
                except Exception:
                    log.exception("shadow listener %r failed", listener)
