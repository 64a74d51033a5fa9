"""The one small protocol every runtime implements, and helpers they share.

A runtime loads one model file and runs it. Model execution is CPU/GPU work,
so ``predict`` hands it to an executor thread, except calls measured to be
cheaper than that hand-off (see ``ExecutorRuntime``). Runtimes know nothing
of gRPC, metrics or batching (the batcher wraps a runtime and offers the same
interface).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol, runtime_checkable

from sidecar.config import ModelConfig, TensorOverride, ThreadsConfig
from sidecar.errors import ModelLoadError
from sidecar.types import ModelSignature, Tensors, TensorSpec


@dataclass(frozen=True, slots=True)
class RuntimeInfo:
    """What is loaded, where, and how big: exported as model metrics."""

    runtime: str  # "onnxruntime" | "torch"
    runtime_version: str
    device: str  # "cpu" | "cuda:0" ...
    file_size_bytes: int
    sha256: str  # first 12 hex digits of the model file's hash
    parameters: int
    layers: int  # ONNX graph nodes / torch leaf modules
    operators: Mapping[str, int] = field(default_factory=dict)  # op type → count
    opset: str = ""  # ONNX opset or torch version that made the file


@runtime_checkable
class Runtime(Protocol):
    """Loads a model and runs batches of it."""

    @property
    def ready(self) -> bool:
        """True between a successful ``load`` and ``unload``."""
        ...

    @property
    def signature(self) -> ModelSignature:
        """Inputs and outputs; valid after ``load``."""
        ...

    @property
    def info(self) -> RuntimeInfo:
        """Runtime, device, size and complexity; valid after ``load``."""
        ...

    async def load(self) -> None:
        """Load the model (off the event loop); raises ModelLoadError."""
        ...

    async def predict(self, inputs: Tensors) -> Tensors:
        """Run the model on validated inputs; raises on model failure."""
        ...

    async def unload(self) -> None:
        """Release the model's memory."""
        ...


def file_digest(path: Path) -> str:
    """First 12 hex digits of the file's SHA-256 (shows a model swapped in place)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:12]


def apply_overrides(
    specs: tuple[TensorSpec, ...], overrides: tuple[TensorOverride, ...], what: str, model: str
) -> tuple[TensorSpec, ...]:
    """Apply config.yaml overrides (datatype, shape, rename) to specs read from the file."""
    by_name = {s.name: s for s in specs}
    for over in overrides:
        if over.name not in by_name:
            raise ModelLoadError(
                f"model {model!r}: config.yaml overrides {what} {over.name!r}, but the model's "
                f"{what}s are: {', '.join(by_name) or '(none)'}"
            )
    out = []
    for spec in specs:
        found = next((o for o in overrides if o.name == spec.name), None)
        if found is not None:
            over = found
            if over.shape is not None and len(over.shape) != len(spec.shape) and spec.shape:
                raise ModelLoadError(
                    f"model {model!r}: config.yaml gives {what} {spec.name!r} shape "
                    f"{list(over.shape)}, but the model file says {list(spec.shape)}"
                )
            spec = replace(
                spec,
                name=over.rename or spec.name,
                datatype=over.datatype or spec.datatype,
                shape=over.shape if over.shape is not None else spec.shape,
            )
        out.append(spec)
    return tuple(out)


class InlinePolicy:
    """Decides whether a model call runs on the event loop or in an executor thread.

    Handing a call to a thread and back costs about 100-300 µs of CPU on a
    small machine (submit, wake a worker, GIL hand-over, wake the event loop):
    more than a small model takes (the digits MLP: ~6 µs). Calls whose size
    (input elements) has been seen to take less than ``max_seconds`` run
    inline; everything else, and the first call of any size, goes to a thread.

    - A call in a thread that took less than ``max_seconds`` of wall time
      proves its size fast (wall time there is an upper bound: it includes
      waiting for the GIL).
    - A call in a thread whose CPU time (not counting GIL waits) was below
      ``PROBE_FACTOR × max_seconds`` makes its size a candidate: at most once
      per back-off period one such call runs inline as a probe. (CPU time in
      a thread overstates a call's cost too when threads compete for the
      cores: onnxruntime's caller thread spins while its pool threads wait
      for a core. The probe measures the real thing.)
    - An inline call is slow when it used ``max_seconds`` of CPU or more, or
      held the loop for ``PROBE_FACTOR`` times that (a model waiting on a
      GPU uses little CPU but still blocks). Wall time alone is not the test:
      on a busy machine a 6 µs call often takes 100 µs of wall time because
      the process was preempted, and handing it to a thread would not help.
      Three slow inline calls in a row demote their size and double the
      back-off (1 s up to 60 s), so a model that really is slow blocks the
      loop for three calls per back-off period at most.

    ``max_seconds = 0`` disables inline calls.
    """

    BACKOFF_SECONDS = (1.0, 60.0)
    PROBE_FACTOR = 10
    SLOW_CALLS = 3

    def __init__(self, max_seconds: float) -> None:
        self.max_seconds = max_seconds
        self.inline_elements = 0  # sizes up to this run inline
        self._candidate_elements = 0  # sizes up to this may be probed inline
        self._retry_at = 0.0
        self._backoff = self.BACKOFF_SECONDS[0]
        self._slow = 0  # slow inline calls in a row

    def inline(self, size: int, now: float) -> bool:
        """True when a call of ``size`` input elements should run on the event loop."""
        return size <= self.inline_elements or (
            size <= self._candidate_elements and now >= self._retry_at
        )

    def ran_inline(self, size: int, wall: float, cpu: float, now: float) -> None:
        """Learn from a call that ran on the event loop (wall and this thread's CPU time)."""
        if cpu < self.max_seconds and wall < self.max_seconds * self.PROBE_FACTOR:
            self.inline_elements = max(self.inline_elements, size)
            self._backoff = self.BACKOFF_SECONDS[0]
            self._slow = 0
            return
        self._slow += 1
        if self._slow < self.SLOW_CALLS:
            return
        self._slow = 0
        self.inline_elements = min(self.inline_elements, size - 1)
        self._retry_at = now + self._backoff
        self._backoff = min(self._backoff * 2, self.BACKOFF_SECONDS[1])

    def ran_in_thread(self, size: int, wall: float, cpu: float) -> None:
        """Learn from a call that ran in an executor thread."""
        if wall < self.max_seconds:
            self.inline_elements = max(self.inline_elements, size)
        if cpu < self.max_seconds * self.PROBE_FACTOR:
            self._candidate_elements = max(self._candidate_elements, size)
        elif size <= self._candidate_elements:
            self._candidate_elements = size - 1


class ExecutorRuntime(ABC):
    """Base for runtimes whose work is synchronous: runs it in an executor thread.

    Calls too small to be worth a thread hand-off run inline instead; see
    ``InlinePolicy``.
    """

    def __init__(self, executor: Executor | None, inline_max_seconds: float = 0.0) -> None:
        self._executor = executor
        self._ready = False
        self._policy = InlinePolicy(inline_max_seconds)

    @property
    def ready(self) -> bool:
        """True between a successful ``load`` and ``unload``."""
        return self._ready

    async def _in_executor(self, fn: object, *args: object) -> object:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)  # type: ignore[arg-type]

    @abstractmethod
    def _run(self, inputs: Tensors) -> Tensors:
        """Run one batch synchronously (what ``predict`` runs inline or in a thread)."""

    async def predict(self, inputs: Tensors) -> Tensors:
        """Run one batch: inline when calls this size are known to be fast, else in a thread."""
        return await self._run_batch(self._run, inputs)

    def predict_inline(self, inputs: Tensors) -> Tensors | None:
        """Run one batch now, on the caller's thread, if calls this size are known to be fast.

        None when the call belongs in a thread (then ``await predict``). Lets the
        data plane answer a fast call without creating a task and a timer for it:
        an inline call cannot be interrupted by a timeout anyway.
        """
        return self._try_inline(self._run, inputs, sum(a.size for a in inputs.values()))

    def _try_inline(
        self, fn: Callable[[Tensors], Tensors], inputs: Tensors, size: int
    ) -> Tensors | None:
        policy = self._policy
        started = time.perf_counter()
        if not policy.inline(size, started):
            return None
        cpu = time.thread_time()
        outputs = fn(inputs)
        cpu = time.thread_time() - cpu
        now = time.perf_counter()
        policy.ran_inline(size, now - started, cpu, now)
        return outputs

    async def _run_batch(self, fn: Callable[[Tensors], Tensors], inputs: Tensors) -> Tensors:
        """``fn(inputs)``: inline when calls this size are known to be fast, else in a thread."""
        size = sum(a.size for a in inputs.values())
        inline = self._try_inline(fn, inputs, size)
        if inline is not None:
            return inline
        loop = asyncio.get_running_loop()
        outputs, wall, cpu = await loop.run_in_executor(self._executor, _timed, fn, inputs)
        self._policy.ran_in_thread(size, wall, cpu)
        return outputs


def _timed(fn: Callable[[Tensors], Tensors], inputs: Tensors) -> tuple[Tensors, float, float]:
    """``fn(inputs)`` with its wall time and this thread's CPU time."""
    started, cpu = time.perf_counter(), time.thread_time()
    outputs = fn(inputs)
    return outputs, time.perf_counter() - started, time.thread_time() - cpu


class ModelFileRuntime(ExecutorRuntime):
    """Base of the runtimes that load one model file: the shared state and accessors."""

    def __init__(
        self,
        name: str,
        path: Path,
        config: ModelConfig,
        device: str,
        threads: ThreadsConfig,
        executor: Executor | None = None,
    ) -> None:
        super().__init__(executor, threads.inline_max_us / 1e6)
        self._name = name
        self._path = path
        self._config = config
        self._device_setting = device  # as configured: auto, cpu, cuda, cuda:N
        self._threads = threads
        self._signature: ModelSignature | None = None
        self._info: RuntimeInfo | None = None

    @property
    def signature(self) -> ModelSignature:
        """Inputs and outputs read from the file (with config overrides); after ``load``."""
        assert self._signature is not None, "load() first"
        return self._signature

    @property
    def info(self) -> RuntimeInfo:
        """Runtime, device, size and complexity; after ``load``."""
        assert self._info is not None, "load() first"
        return self._info
