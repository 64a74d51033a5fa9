"""The model repository on disk and the models loaded from it.

Layout, as Triton users expect::

    <repository>/<model>/config.yaml
    <repository>/<model>/<version>/model.onnx   (or model.pt / model.pt2)

The newest version serves unless ``versions:`` in config.yaml names others.
A model that fails to load is recorded (ModelReady false, reason logged, a
listener told) and the others still serve.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from sidecar.batcher import Batcher
from sidecar.codec import RequestCodec
from sidecar.config import ConfigError, ModelConfig, ServerConfig, load_model_config
from sidecar.errors import (
    ModelLoadError,
    ModelNotFoundError,
    ModelNotReadyError,
    SidecarError,
    quote,
)
from sidecar.events import Listener, ModelHook
from sidecar.runtimes import MODEL_FILES, Runtime, create_runtime
from sidecar.types import ModelSignature, Prediction, Tensors

log = logging.getLogger(__name__)

RuntimeFactory = Callable[[str, Path, ModelConfig, str], Runtime]
#: Why a request stopped waiting for a running model call: the model's timeout,
#: the client's deadline, or the client cancelled. The call itself runs on.
ABANDON_REASONS = ("timeout", "deadline", "cancelled")
N = TypeVar("N", int, float)


@dataclass(frozen=True, slots=True)
class ModelSource:
    """One model version found in the repository."""

    name: str
    version: int
    path: Path
    config: ModelConfig


@dataclass(frozen=True, slots=True)
class RepositoryScan:
    """Everything a scan found: versions to load and per-model problems."""

    sources: tuple[ModelSource, ...]
    problems: tuple[tuple[str, str], ...]  # (model name, what is wrong)


def _inside(root: Path, path: Path) -> bool:
    try:
        path.resolve().relative_to(root)
    except ValueError:
        return False
    return True


def scan_repository(root: Path) -> RepositoryScan:
    """Find the model versions to serve under ``root``; bad models become problems.

    A path that leaves the repository (through a symlink or ``..``), and a model
    file that anyone can write or replace (it, or its version or model directory,
    is world-writable) are refused: loading a model must not be a way to run
    someone else's file.
    """
    root = root.resolve()
    if not root.is_dir():
        raise ConfigError(f"model repository {root}: not a directory")
    sources: list[ModelSource] = []
    problems: list[tuple[str, str]] = []
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        # A malformed config.yaml is the operator's error: it stops start-up (ConfigError).
        config = load_model_config(model_dir / "config.yaml")
        name = config.name or model_dir.name
        try:
            if not _inside(root, model_dir):
                raise ModelLoadError(f"{model_dir}: resolves outside the repository {root}")
            versions = model_versions(model_dir)
            if not versions:
                raise ModelLoadError(
                    f"{model_dir}: no version directory with one of {', '.join(MODEL_FILES)}"
                )
            wanted = config.versions or (max(versions),)
            missing = [v for v in wanted if v not in versions]
            if missing:
                raise ModelLoadError(
                    f"{model_dir / 'config.yaml'}: versions: {missing} not found; "
                    f"present: {sorted(versions)}"
                )
            for version in wanted:
                path = versions[version]
                if not _inside(root, path):
                    raise ModelLoadError(f"{path}: resolves outside the repository {root}")
                for where in (path, path.parent, model_dir):
                    if _world_writable(where):
                        raise ModelLoadError(
                            f"{where}: writable by any user; refusing to load {path.name} "
                            "(anyone could replace it)"
                        )
                sources.append(ModelSource(name, version, path, config))
        except ModelLoadError as exc:
            problems.append((name, exc.message))
    return RepositoryScan(tuple(sources), tuple(problems))


def _world_writable(path: Path) -> bool:
    """A file, or a directory without the sticky bit, that any user may write."""
    mode = os.stat(path).st_mode
    if stat.S_ISDIR(mode) and mode & stat.S_ISVTX:
        return False  # like /tmp: others cannot replace what they do not own
    return bool(mode & stat.S_IWOTH)


def model_versions(model_dir: Path) -> dict[int, Path]:
    """Version number → model file of every version directory under ``model_dir``."""
    found: dict[int, Path] = {}
    for entry in model_dir.iterdir():
        if not (entry.is_dir() and entry.name.isdigit()):
            continue
        files = [entry / f for f in MODEL_FILES if (entry / f).is_file()]
        if len(files) > 1:
            raise ModelLoadError(
                f"{entry}: several model files ({', '.join(f.name for f in files)}); keep one"
            )
        if files:
            found[int(entry.name)] = files[0]
    return found


@dataclass(eq=False)
class ServedModel:
    """One model version: its runtime, signature, codec and state."""

    name: str
    version: str
    config: ModelConfig
    runtime: Runtime
    path: Path | None = None
    ready: bool = False
    error: str = ""
    load_seconds: float = 0.0
    inflight: int = 0  # calls inside predict() right now, including overdue ones
    overdue: int = 0  # calls still running past the model's timeout
    timeouts: int = 0  # calls that ran past the model's timeout, since load
    #: Calls a request stopped waiting for while the model ran on, by reason (ABANDON_REASONS).
    abandoned: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ABANDON_REASONS, 0))
    max_concurrent: int = 0  # limit on ``inflight`` (0 = none)
    timeout: float = 0.0  # seconds a call may take (0 = no limit)
    codec: RequestCodec | None = None
    listeners: tuple[Listener, ...] = field(default=(), repr=False)
    batcher: Batcher | None = None  # set when config.batching.enabled

    @property
    def signature(self) -> ModelSignature:
        """The runtime's inputs and outputs."""
        return self.runtime.signature

    @property
    def stalled(self) -> bool:
        """True while a call that ran past the timeout has not returned (a hung model)."""
        return self.overdue > 0

    @property
    def queue_depth(self) -> int:
        """Requests waiting in the batcher (0 without batching)."""
        return self.batcher.depth if self.batcher is not None else 0

    def predict_inline(self, inputs: Tensors, rows: int) -> Prediction | None:
        """Run one request now, on the event loop, when its runtime knows the call is fast.

        None when the runtime has no inline path, calls this size belong in a
        thread, or the batcher has requests queued: then ``await predict``.
        """
        if self.batcher is not None:
            return self.batcher.predict_inline(inputs, rows)
        inline = getattr(self.runtime, "predict_inline", None)
        if inline is None:
            return None
        started = time.perf_counter()
        outputs = inline(inputs)
        if outputs is None:
            return None
        self.report_batch(rows, time.perf_counter() - started)
        return Prediction(outputs)

    async def predict(self, inputs: Tensors, rows: int) -> Prediction:
        """Run one request (through the batcher when batching is on)."""
        if self.batcher is not None:
            return await self.batcher.predict(inputs, rows)
        started = time.perf_counter()
        outputs = await self.runtime.predict(inputs)
        self.report_batch(rows, time.perf_counter() - started)
        return Prediction(outputs)

    def report_batch(self, rows: int, compute_seconds: float) -> None:
        """Tell listeners the runtime executed one batch of ``rows`` rows."""
        for listener in self.listeners:
            try:
                listener.on_batch(self, rows, compute_seconds)
            except Exception:
                log.exception("listener %r failed on_batch", listener)


class ModelManager:
    """Loads the repository's models and finds the one a request names."""

    def __init__(
        self,
        config: ServerConfig,
        repository: Path,
        listeners: Iterable[Listener] = (),
        executor: Executor | None = None,
        runtime_factory: RuntimeFactory | None = None,
        hooks: Iterable[ModelHook] = (),
    ) -> None:
        self._config = config
        self._repository = repository
        self._listeners = tuple(listeners)
        self._hooks = tuple(hooks)
        self._executor = executor
        self._executors: dict[str, ThreadPoolExecutor] = {}
        self._factory = runtime_factory or self._default_factory
        self._models: dict[tuple[str, str], ServedModel] = {}
        self._default: dict[str, ServedModel] = {}  # name → newest ready version
        self._failures: dict[tuple[str, str], str] = {}

    def _default_factory(self, name: str, path: Path, config: ModelConfig, device: str) -> Runtime:
        return create_runtime(name, path, config, device, self._config.threads, self.executor(name))

    def executor(self, name: str) -> Executor:
        """The threads that run model ``name``'s calls (all its versions).

        Each model gets its own pool of ``threads.executor_workers`` threads, so a
        model wedged in native code can hold only its own threads, never another
        model's. A manager built with an ``executor`` shares that one instead.
        """
        if self._executor is not None:
            return self._executor
        pool = self._executors.get(name)
        if pool is None:
            pool = ThreadPoolExecutor(
                max_workers=self._config.threads.executor_workers,
                thread_name_prefix=f"model-{name[:24]}",
            )
            self._executors[name] = pool
        return pool

    @property
    def listeners(self) -> tuple[Listener, ...]:
        """The listeners every model reports to."""
        return self._listeners

    async def load_all(self) -> None:
        """Scan the repository and load every model version; failures are recorded."""
        scan = scan_repository(self._repository)
        for name, problem in scan.problems:
            self._record_failure(name, "", problem)
        for source in scan.sources:
            runtime = self._factory(
                source.name, source.path, source.config, source.config.device or self._config.device
            )
            await self.add(source.name, str(source.version), source.config, runtime, source.path)
        if self._failures and self._config.startup.exit_on_model_error:
            details = "; ".join(self._failures.values())
            raise ModelLoadError(f"{len(self._failures)} model(s) failed to load: {details}")

    async def add(
        self,
        name: str,
        version: str,
        config: ModelConfig,
        runtime: Runtime,
        path: Path | None = None,
    ) -> ServedModel:
        """Load one runtime and start serving it (also the seam tests use)."""
        limits = self._config.limits
        model = ServedModel(
            name,
            version,
            config,
            runtime,
            path,
            listeners=self._listeners,
            max_concurrent=_pick(
                config.limits.max_concurrent_requests, limits.max_concurrent_requests
            ),
            timeout=_pick(config.limits.timeout_seconds, limits.model_timeout_seconds),
        )
        self._models[(name, version)] = model
        started = time.perf_counter()
        try:
            await runtime.load()
            model.codec = RequestCodec(name, runtime.signature, self._config.limits)
            self._check_monitoring(model)
            for hook in self._hooks:
                await hook.prepare(model)
            if config.batching.enabled:
                model.batcher = Batcher(name, runtime, config.batching, model.report_batch)
        except SidecarError as exc:
            model.error = exc.message
            self._record_failure(name, version, exc.message)
            return model
        except Exception as exc:  # a runtime bug must not stop the other models
            model.error = f"model {name!r} version {version}: {type(exc).__name__}: {exc}"
            self._record_failure(name, version, model.error)
            return model
        model.load_seconds = time.perf_counter() - started
        model.ready = True
        self._failures.pop((name, version), None)
        best = self._default.get(name)
        if best is None or _version_key(version) > _version_key(best.version):
            self._default[name] = model
        log.info(
            "loaded model %s version %s (%s on %s) in %.3fs",
            name,
            version,
            runtime.info.runtime,
            runtime.info.device,
            model.load_seconds,
        )
        for listener in self._listeners:
            listener.on_model_loaded(model)
        return model

    def _check_monitoring(self, model: ServedModel) -> None:
        mon = model.config.monitoring
        sig = model.signature
        if mon.classification is not None:
            spec = sig.output(mon.classification.output)
            if spec is None:
                raise ModelLoadError(
                    f"model {model.name!r}: monitoring.classification.output "
                    f"{mon.classification.output!r} is not an output; outputs are: "
                    f"{', '.join(s.name for s in sig.outputs)}"
                )
            width = spec.shape[-1] if spec.shape else -1
            if width != -1 and width != len(mon.classification.class_names):
                raise ModelLoadError(
                    f"model {model.name!r}: output {spec.name!r} has {width} classes "
                    f"({spec.describe()}) but monitoring.classification.class_names lists "
                    f"{len(mon.classification.class_names)}"
                )
        if mon.regression is not None:
            for out in mon.regression.outputs:
                if sig.output(out) is None:
                    raise ModelLoadError(
                        f"model {model.name!r}: monitoring.regression.outputs names {out!r}, "
                        f"not an output; outputs are: {', '.join(s.name for s in sig.outputs)}"
                    )

    def _record_failure(self, name: str, version: str, error: str) -> None:
        self._failures[(name, version)] = error
        log.error("model %s version %s failed to load: %s", name, version or "?", error)
        for listener in self._listeners:
            listener.on_model_failed(name, version, error)

    def resolve(self, name: str, version: str = "") -> ServedModel:
        """The model a request names; NOT_FOUND / UNAVAILABLE errors say why not."""
        model = self._default.get(name) if not version else self._models.get((name, version))
        if model is not None and model.ready:
            return model
        if model is None:
            if not version and any(n == name for n, _ in self._models):
                model = next(m for (n, _), m in self._models.items() if n == name)
            elif not version and (name, "") in self._failures:
                raise ModelNotReadyError(
                    f"model {quote(name)} is not ready: {self._failures[(name, '')]}"
                )
            else:
                known = sorted({n for n, _ in self._models})
                what = f"model {quote(name)}" + (f" version {quote(version)}" if version else "")
                raise ModelNotFoundError(
                    f"{what} not found; models: {', '.join(known) or '(none)'}"
                    + (
                        f"; versions of {name}: {self.versions(name)}"
                        if version and name in known
                        else ""
                    )
                )
        raise ModelNotReadyError(
            f"model {name!r} version {model.version} is not ready: {model.error or 'unloading'}"
        )

    def versions(self, name: str) -> list[str]:
        """Versions of a model that are configured (ready or not), oldest first."""
        return sorted((v for n, v in self._models if n == name), key=_version_key)

    def is_ready(self, name: str, version: str = "") -> bool:
        """True when that model (version) serves and is not stalled by a hung call."""
        try:
            model = self.resolve(name, version)
        except SidecarError:
            return False
        return not model.stalled

    @property
    def models(self) -> list[ServedModel]:
        """Every configured model version, ready or not."""
        return list(self._models.values())

    @property
    def failures(self) -> dict[tuple[str, str], str]:
        """(model, version) → why it failed to load."""
        return dict(self._failures)

    @property
    def all_ready(self) -> bool:
        """True when every configured model loaded and none is stalled."""
        return not self._failures and all(m.ready and not m.stalled for m in self._models.values())

    async def unload_all(self) -> None:
        """Unload every model (at shutdown)."""
        for model in list(self._models.values()):
            if model.ready:
                model.ready = False
                if model.batcher is not None:
                    await model.batcher.close()
                await model.runtime.unload()
                for listener in self._listeners:
                    listener.on_model_unloaded(model)
        for pool in self._executors.values():
            # Threads of a hung call cannot be stopped; they are abandoned, not joined.
            pool.shutdown(wait=False, cancel_futures=True)
        self._executors.clear()


def _pick(override: N | None, default: N) -> N:
    return default if override is None else override


def _version_key(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (-1, version)
