"""Dynamic batching: concurrent requests for one model run as one batch.

::

    predict(inputs, rows) ──▶ queue: one FIFO group per shape (all dims but the first)
                                 │  bounded by max_queue_size (full: UNAVAILABLE at once)
                                 ▼
         scheduler task: takes a free slot (max_concurrent_batches), then waits
         until a group can send a preferred batch size, holds max_batch_size
         rows, or its oldest request has waited max_queue_delay_us
                                 │
                                 ▼
         numpy.concatenate along axis 0 ──▶ runtime.predict ──▶ rows sliced back
                                                  │
                                                  └──▶ on_batch(rows, compute seconds)

``Batcher`` wraps a runtime (composition: the runtime knows nothing of it) and
offers the ``predict(inputs, rows)`` of a served model. The work per request
is O(1) Python besides the model: a shape key, an append, one future; per
batch, one concatenate per input and one slice per request and output. Rows
are never touched one by one in Python.

Requests are never split: a request larger than ``max_batch_size`` is refused
(RESOURCE_EXHAUSTED). Requests whose inputs differ in any dimension but the
first go to different groups and never share a batch. A batch that fails
fails only the requests in it.

While a batch runs, requests keep queueing; when the slot frees, the next
batch takes what has gathered. So under load batches grow by themselves even
with ``max_queue_delay_us: 0`` (the default), and with no delay an idle model
runs a lone request at once in the caller's own task, costing about what no
batching costs. A delay makes lone requests wait for company; asyncio's timers
have a resolution of 1 ms (epoll), so any delay under 1 ms waits about 1 ms.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sidecar.config import BatchingConfig
from sidecar.errors import (
    ModelExecutionError,
    ModelLoadError,
    ResourceExhaustedError,
    UnavailableError,
)
from sidecar.runtimes.base import Runtime
from sidecar.types import Prediction, Tensors

log = logging.getLogger(__name__)

#: Called once per executed batch with its rows and the seconds the runtime took.
BatchCallback = Callable[[int, float], None]


@dataclass(slots=True, eq=False)
class _Pending:
    """One request waiting in the queue."""

    inputs: Tensors
    rows: int
    arrived: float  # loop.time()
    future: asyncio.Future[Tensors]
    queued: float = 0.0  # seconds from arrival to the start of its batch


@dataclass(slots=True, eq=False)
class _Group:
    """Waiting requests whose inputs can be concatenated (same trailing shapes)."""

    key: Hashable
    items: deque[_Pending] = field(default_factory=deque)
    rows: int = 0  # rows of every item in the group
    # The longest prefix of ``items`` whose rows are a preferred batch size: (items, rows).
    preferred: tuple[int, int] = (0, 0)


class Batcher:
    """Queues requests for one model and runs them on its runtime in batches."""

    def __init__(
        self,
        model: str,
        runtime: Runtime,
        config: BatchingConfig,
        on_batch: BatchCallback | None = None,
    ) -> None:
        not_batched = [s.describe() for s in runtime.signature.inputs if not s.batched]
        if not_batched:
            raise ModelLoadError(
                f"model {model!r}: batching.enabled needs every input's first dimension to be "
                f"dynamic (-1, the batch); these are not: {', '.join(not_batched)}"
            )
        self._model = model
        self._runtime = runtime
        self._config = config
        self._on_batch = on_batch
        self._max_rows = config.max_batch_size
        self._delay = config.max_queue_delay_us / 1e6
        self._preferred = frozenset(config.preferred_batch_sizes)
        self._limit = config.max_queue_size
        self._groups: dict[Hashable, _Group] = {}
        self._depth = 0  # requests waiting (not yet in a running batch)
        self._wake: asyncio.Future[None] | None = None
        self._slots = asyncio.Semaphore(config.max_concurrent_batches)
        self._scheduler: asyncio.Task[None] | None = None
        self._running: set[asyncio.Future[Any]] = set()  # batches being executed
        self._closed = False
        #: The runtime's synchronous path for calls known to be fast (None: it has none).
        self._inline: Callable[[Tensors], Tensors | None] | None = getattr(
            runtime, "predict_inline", None
        )
        self.batches = 0  # batches executed so far

    @property
    def config(self) -> BatchingConfig:
        """The batching settings."""
        return self._config

    @property
    def runtime(self) -> Runtime:
        """The wrapped runtime."""
        return self._runtime

    @property
    def depth(self) -> int:
        """Requests waiting for a batch right now."""
        return self._depth

    # ------------------------------------------------------------------ request side

    async def predict(self, inputs: Tensors, rows: int) -> Prediction:
        """Queue one request, wait for its batch, return its rows of the outputs."""
        if self._closed:
            raise UnavailableError(
                f"model {self._model!r} is unloading and accepts no new requests",
                reason="unloading",
            )
        if rows > self._max_rows:
            raise ResourceExhaustedError(
                f"model {self._model!r}: request has {rows} rows, more than the limit "
                f"batching.max_batch_size={self._max_rows}; split it into smaller requests",
                reason="too_many_rows",
            )
        if self._depth >= self._limit:
            raise UnavailableError(
                f"model {self._model!r}: batching queue is full ({self._depth} requests "
                f"waiting, limit batching.max_queue_size={self._limit}); retry later",
                reason="queue_full",
            )
        loop = asyncio.get_running_loop()
        if not self._groups and not self._delay and not self._slots.locked():
            return await self._run_now(loop, inputs, rows)  # idle: nothing to wait for
        if self._scheduler is None:
            self._scheduler = loop.create_task(self._schedule(), name=f"batcher:{self._model}")
        key = tuple([(name, array.shape[1:]) for name, array in inputs.items()])
        pending = _Pending(inputs, rows, loop.time(), loop.create_future())
        group = self._groups.get(key)
        new_group = group is None
        if group is None:
            group = self._groups[key] = _Group(key)
        group.items.append(pending)
        group.rows += rows
        self._depth += 1
        became_ready = group.rows >= self._max_rows
        if group.rows in self._preferred:
            group.preferred = (len(group.items), group.rows)
            became_ready = True
        if (new_group or became_ready) and self._wake is not None and not self._wake.done():
            self._wake.set_result(None)
        outputs = await pending.future
        return Prediction(outputs, pending.queued)

    def predict_inline(self, inputs: Tensors, rows: int) -> Prediction | None:
        """Run a request alone, now, when nothing waits and the runtime knows it is fast.

        None when the request must go through ``predict`` (something is queued,
        a delay is configured, every slot is busy, the call belongs in a thread,
        or ``predict`` has an error to give): the idle case of ``predict`` without
        a task, a future or a semaphore.
        """
        if (
            self._inline is None
            or self._closed
            or self._groups
            or self._delay
            or self._slots.locked()
            or rows > self._max_rows
        ):
            return None
        started = time.perf_counter()
        outputs = self._inline(inputs)
        if outputs is None:
            return None
        self._ran(outputs, rows, time.perf_counter() - started)
        return Prediction(outputs, 0.0)

    async def _run_now(
        self, loop: asyncio.AbstractEventLoop, inputs: Tensors, rows: int
    ) -> Prediction:
        """Run a request alone in the caller's task: no delay, nothing queued, a slot free."""
        await self._slots.acquire()  # free, so this does not wait; _execute releases it
        pending = _Pending(inputs, rows, loop.time(), loop.create_future())
        self._running.add(pending.future)  # close() waits for it like for any running batch
        try:
            await self._execute([pending], rows)
        finally:
            self._running.discard(pending.future)
            if not pending.future.done():
                pending.future.cancel()  # the caller was cancelled while the model ran
        return Prediction(pending.future.result(), 0.0)

    # ------------------------------------------------------------------ scheduler

    async def _schedule(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._groups:
                await self._wait(loop, None)  # no slot held while idle
                continue
            await self._slots.acquire()
            try:
                batch, rows = await self._next_batch(loop)
            except BaseException:
                self._slots.release()
                raise
            task = loop.create_task(self._execute(batch, rows))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _next_batch(self, loop: asyncio.AbstractEventLoop) -> tuple[list[_Pending], int]:
        """Wait until some group should be sent, then take its batch off the queue."""
        while True:
            now = loop.time()
            chosen: _Group | None = None
            deadline: float | None = None
            for group in self._groups.values():
                head = group.items[0].arrived
                due = head + self._delay
                ready = group.preferred[0] or group.rows >= self._max_rows or due <= now
                if ready and (chosen is None or head < chosen.items[0].arrived):
                    chosen = group
                if deadline is None or due < deadline:
                    deadline = due
            if chosen is not None:
                batch = self._take(chosen)
                if batch:
                    return batch, sum(p.rows for p in batch)
                continue  # every request taken was cancelled: look again
            await self._wait(loop, deadline)

    async def _wait(self, loop: asyncio.AbstractEventLoop, deadline: float | None) -> None:
        wake: asyncio.Future[None] = loop.create_future()
        self._wake = wake
        timer = None if deadline is None else loop.call_at(deadline, _resolve, wake)
        try:
            await wake
        finally:
            self._wake = None
            if timer is not None:
                timer.cancel()

    def _take(self, group: _Group) -> list[_Pending]:
        """Remove the batch to send from ``group``: a preferred size, else as much as fits."""
        items = group.items
        count, rows = group.preferred
        if not count:
            count, rows = 1, items[0].rows
            for pending in itertools.islice(items, 1, self._max_rows):
                if rows + pending.rows > self._max_rows:
                    break
                rows += pending.rows
                count += 1
        taken = [items.popleft() for _ in range(count)]
        group.rows -= rows
        self._depth -= count
        group.preferred = (0, 0)
        if not items:
            del self._groups[group.key]
        elif self._preferred:
            # Prefix sums changed: find the longest prefix of what is left that is preferred.
            total = 0
            for index, pending in enumerate(items):
                total += pending.rows
                if total > self._max_rows:
                    break
                if total in self._preferred:
                    group.preferred = (index + 1, total)
        return [p for p in taken if not p.future.done()]  # done: the caller was cancelled

    async def _execute(self, batch: list[_Pending], rows: int) -> None:
        try:
            if len(batch) == 1:
                inputs = batch[0].inputs
            else:
                first = batch[0].inputs
                inputs = {name: np.concatenate([p.inputs[name] for p in batch]) for name in first}
            started = time.perf_counter()
            now = asyncio.get_running_loop().time()
            for pending in batch:
                pending.queued = now - pending.arrived
            outputs = await self._runtime.predict(inputs)
            self._ran(outputs, rows, time.perf_counter() - started)
            if len(batch) == 1:
                _settle(batch[0].future, outputs)
                return
            start = 0
            for pending in batch:
                end = start + pending.rows
                _settle(pending.future, {k: v[start:end] for k, v in outputs.items()})
                start = end
        except Exception as exc:
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(exc)
        finally:
            self._slots.release()

    def _ran(self, outputs: Tensors, rows: int, elapsed: float) -> None:
        """Count an executed batch; ModelExecutionError unless every output has its rows."""
        self.batches += 1
        if self._on_batch is not None:
            try:
                self._on_batch(rows, elapsed)
            except Exception:
                log.exception("on_batch callback failed for model %s", self._model)
        wrong = {k: v.shape for k, v in outputs.items() if v.ndim == 0 or v.shape[0] != rows}
        if wrong:
            raise ModelExecutionError(
                f"model {self._model!r}: a batch of {rows} rows gave outputs without that "
                f"many rows ({', '.join(f'{k} {list(s)}' for k, s in wrong.items())}); "
                "this model cannot be batched: set batching.enabled false"
            )

    # ------------------------------------------------------------------ lifecycle

    async def close(self) -> None:
        """Stop batching: refuse queued requests (UNAVAILABLE), let running batches finish."""
        self._closed = True
        if self._scheduler is not None:
            self._scheduler.cancel()
            await asyncio.wait([self._scheduler])
            self._scheduler = None
        for group in self._groups.values():
            for pending in group.items:
                if not pending.future.done():
                    pending.future.set_exception(
                        UnavailableError(
                            f"model {self._model!r} was unloaded while the request waited "
                            "for a batch",
                            reason="unloading",
                        )
                    )
        self._groups.clear()
        self._depth = 0
        if self._running:
            await asyncio.wait(tuple(self._running))


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _settle(future: asyncio.Future[Tensors], outputs: Tensors) -> None:
    if not future.done():
        future.set_result(outputs)
