"""Activation statistics of chosen layers of a torch.export model, on sampled batches.

What a layer "hook" can be depends on how the model was saved:

- **torch.export** (``model.pt2``): ``ExportedProgram.module()`` is one flat
  ``torch.fx.GraphModule``. Its submodules (``body.0`` ...) only hold
  parameters; they are never *called*, so ``register_forward_hook`` on them
  would never fire. Every graph node does record which source module made it
  (``node.meta["nn_module_stack"]``), so we find the node that carries a
  layer's output and insert a *tap* node right after it (``torch.fx`` graph
  surgery, then ``recompile``). ``detach`` erases the taps again. Serving the
  ``torch.export.unflatten`` module instead, whose submodules are called and
  take ordinary forward hooks, was measured 4× slower per batch on the
  example model, so it is not used.
- **TorchScript** (``model.pt``): ``register_forward_hook`` is not supported on
  a loaded ``ScriptModule`` (hooks must be compiled in before scripting), so
  asking for activations on one is a load error that says so.

A tap does nothing unless its thread's batch was sampled (``begin``). On a
sampled batch each tap reduces its tensor on the model's device in a few
kernels: finite count, sum of squares (as an L2 norm), non-zero count, max
abs and one sum per row. ``end`` concatenates every layer's reductions and
copies them to the host once. The host turns them into mean, std, fraction of
zeros, fraction non-finite and max abs per layer, and a per-row mean of each
layer, kept in a bounded window for drift against a reference.

Non-finite values are left out of mean, std and max abs (and count as zero in
the per-row means). ``std`` comes from the sum of squares: it loses precision
when ``|mean|`` exceeds about 1000 × ``std``.
"""

from __future__ import annotations

import fnmatch
import random
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sidecar.config import ActivationsConfig
from sidecar.errors import ModelLoadError
from sidecar.types import Tensors

#: Statistics exported per layer, in the order of ``ActivationSnapshot.stats`` columns.
STAT_NAMES: tuple[str, ...] = ("mean", "std", "zero_ratio", "nonfinite_ratio", "max_abs")
#: Most layer names quoted in an error message.
_MAX_LISTED = 100
_HEAD = 4  # finite count, L2 norm, non-zero count, max abs


@dataclass(frozen=True, slots=True)
class LayerInfo:
    """A layer (source module) of an exported graph and the node holding its output."""

    name: str
    kind: str  # the module's class name, e.g. "Linear"
    outputs: int  # graph nodes of this module used outside it (1 = tappable)


@dataclass(frozen=True, slots=True)
class ActivationSnapshot:
    """What the exporter reads at scrape time."""

    layers: tuple[str, ...]
    batches: int  # sampled batches summarised so far
    rows: int  # rows in those batches
    stats: np.ndarray  # (layers, len(STAT_NAMES)) of the last sampled batch; NaN before any


def _module_kind(entry: Any) -> str:
    kind = entry if isinstance(entry, str) else getattr(entry, "__qualname__", str(entry))
    return str(kind).rsplit(".", 1)[-1]


def graph_layers(module: Any) -> dict[str, tuple[LayerInfo, Any]]:
    """Every source module of an exported GraphModule → (info, its output node or None)."""
    members: dict[str, list[Any]] = {}
    kinds: dict[str, str] = {}
    for node in module.graph.nodes:
        if node.op != "call_function":
            continue
        for fqn, kind in (node.meta.get("nn_module_stack") or {}).values():
            if fqn:
                members.setdefault(fqn, []).append(node)
                kinds.setdefault(fqn, _module_kind(kind))
    found: dict[str, tuple[LayerInfo, Any]] = {}
    for fqn, nodes in members.items():
        inside = set(nodes)
        escaping = [n for n in nodes if any(u not in inside for u in n.users)]
        info = LayerInfo(fqn, kinds[fqn], len(escaping))
        found[fqn] = (info, escaping[0] if len(escaping) == 1 else None)
    return found


def describe_layers(layers: Sequence[LayerInfo]) -> str:
    """``body (Sequential), body.0 (Linear), ...`` for error messages."""
    shown = [f"{info.name} ({info.kind})" for info in layers[:_MAX_LISTED]]
    more = len(layers) - len(shown)
    return ", ".join(shown) + (f", ... and {more} more" if more > 0 else "")


def select_layers(
    available: Sequence[LayerInfo], patterns: Sequence[str], max_layers: int, model: str
) -> tuple[str, ...]:
    """Layer names matching ``patterns`` (names or fnmatch globs), in graph order.

    Raises ModelLoadError naming the pattern and listing the layers that exist
    when a pattern matches nothing, and when more than ``max_layers`` match.
    """
    names = [info.name for info in available]
    chosen: list[str] = []
    for pattern in patterns:
        matched = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not matched:
            raise ModelLoadError(
                f"model {model!r}: insight.activations.layers: no layer matches {pattern!r}; "
                f"the model's layers are: {describe_layers(available) or '(none)'}"
            )
        chosen.extend(n for n in matched if n not in chosen)
    if len(chosen) > max_layers:
        raise ModelLoadError(
            f"model {model!r}: insight.activations.layers match {len(chosen)} layers, more "
            f"than max_layers={max_layers}; name fewer layers or raise max_layers"
        )
    order = {n: i for i, n in enumerate(names)}
    return tuple(sorted(chosen, key=order.__getitem__))


class ActivationStats:
    """The latest per-layer statistics and a bounded window of per-row layer means.

    Written by executor threads (``update``), read by the exporter and the
    drift evaluation (``snapshot``, ``window``); a lock keeps them consistent.
    """

    def __init__(self, layers: tuple[str, ...], window: int) -> None:
        self.layers = layers
        self._lock = threading.Lock()
        self._stats = np.full((len(layers), len(STAT_NAMES)), np.nan)
        self._batches = 0
        self._rows = 0
        self._window = np.full((window, len(layers)), np.nan)
        self._next = 0
        self._filled = 0

    def update(self, stats: np.ndarray, row_means: np.ndarray) -> None:
        """Record one sampled batch: ``stats`` (layers, 5), ``row_means`` (rows, layers)."""
        size = self._window.shape[0]
        tail = row_means[-size:]
        with self._lock:
            self._stats = stats
            self._batches += 1
            self._rows += row_means.shape[0]
            end = self._next + tail.shape[0]
            if end <= size:
                self._window[self._next : end] = tail
            else:
                split = size - self._next
                self._window[self._next :] = tail[:split]
                self._window[: end - size] = tail[split:]
            self._next = end % size
            self._filled = min(size, self._filled + tail.shape[0])

    def snapshot(self) -> ActivationSnapshot:
        """The statistics of the last sampled batch, and how many were summarised."""
        with self._lock:
            return ActivationSnapshot(self.layers, self._batches, self._rows, self._stats.copy())

    def window(self) -> np.ndarray:
        """The most recent sampled rows' layer means, oldest first: (rows ≤ window, layers)."""
        with self._lock:
            if self._filled < self._window.shape[0]:
                return self._window[: self._filled].copy()
            return np.roll(self._window, -self._next, axis=0)


def summarise(
    pieces: Sequence[tuple[np.ndarray, int, int]], rows: int
) -> tuple[np.ndarray, np.ndarray]:
    """Host side: per-layer (head + row sums, numel, row count) → (stats, row means).

    ``stats`` is (layers, 5) in STAT_NAMES order; ``row_means`` is (rows, layers),
    NaN for a layer whose output has no leading batch dimension of ``rows``.
    """
    stats = np.full((len(pieces), len(STAT_NAMES)), np.nan)
    row_means = np.full((rows, len(pieces)), np.nan)
    for i, (values, numel, lead) in enumerate(pieces):
        v = values.astype(np.float64)
        n_finite, norm, nonzero, max_abs = v[:_HEAD]
        row_sums = v[_HEAD:]
        if numel == 0:
            continue
        if n_finite > 0:
            mean = row_sums.sum() / n_finite
            stats[i, 0] = mean
            stats[i, 1] = np.sqrt(max(norm * norm / n_finite - mean * mean, 0.0))
            stats[i, 4] = max_abs
        stats[i, 2] = (numel - nonzero) / numel
        stats[i, 3] = (numel - n_finite) / numel
        if lead == rows and rows > 0:
            row_means[:, i] = row_sums / (numel / rows)
    return stats, row_means


class ActivationTaps:
    """Taps on chosen layers of one loaded torch.export GraphModule."""

    def __init__(
        self,
        torch: Any,
        module: Any,
        outputs: dict[str, Any],
        config: ActivationsConfig,
        device: str,
        input_order: Sequence[str],
    ) -> None:
        self._torch = torch
        self._module = module
        self._config = config
        self._device = device
        self._input_order = tuple(input_order)
        self.layers: tuple[str, ...] = tuple(outputs)
        self.stats = ActivationStats(self.layers, config.window)
        self._rng = random.Random(config.seed)  # noqa: S311 - sampling, not security
        self._local = threading.local()
        self._taps: list[Any] = []
        graph = module.graph
        for index, node in enumerate(outputs.values()):
            with graph.inserting_after(node):
                self._taps.append(graph.call_function(self._tap_function(), (node, index)))
        module.recompile()

    @classmethod
    def attach(
        cls,
        torch: Any,
        module: Any,
        config: ActivationsConfig,
        *,
        model: str,
        device: str,
        input_order: Sequence[str],
    ) -> ActivationTaps:
        """Insert taps after the configured layers; ModelLoadError says what is wrong."""
        if isinstance(module, torch.jit.ScriptModule):
            raise ModelLoadError(
                f"model {model!r}: insight.activations needs a torch.export archive "
                "(model.pt2): a loaded TorchScript module does not run Python forward hooks "
                "(register_forward_hook is not supported on ScriptModules). Save the model "
                "with torch.export.export + torch.export.save, or remove insight.activations"
            )
        if not isinstance(module, torch.fx.GraphModule):
            raise ModelLoadError(
                f"model {model!r}: insight.activations supports torch.export GraphModules, "
                f"got {type(module).__name__}"
            )
        found = graph_layers(module)
        infos = [info for info, _ in found.values()]
        chosen = select_layers(infos, config.layers, config.max_layers, model)
        outputs: dict[str, Any] = {}
        for name in chosen:
            info, node = found[name]
            if node is None:
                raise ModelLoadError(
                    f"model {model!r}: insight.activations: layer {name!r} ({info.kind}) has "
                    f"{info.outputs} output values in the exported graph (called more than "
                    "once, or returning several tensors); choose one of its submodules"
                )
            value = node.meta.get("val")
            if not isinstance(value, torch.Tensor):
                raise ModelLoadError(
                    f"model {model!r}: insight.activations: layer {name!r} returns "
                    f"{type(value).__name__}, not a tensor; choose one of its submodules"
                )
            outputs[name] = node
        return cls(torch, module, outputs, config, device, input_order)

    def _tap_function(self) -> Callable[[Any, int], None]:
        local = self._local
        torch = self._torch
        inf = float("inf")

        def sidecar_activation_tap(x: Any, index: int) -> None:
            pieces = getattr(local, "pieces", None)
            if pieces is None:
                return
            x = x.detach()
            if x.dtype != torch.float32 and x.dtype != torch.float64:
                x = x.float()
            lead = x.shape[0] if x.dim() else 1
            clean = x.nan_to_num(0.0, 0.0, 0.0)
            head = torch.stack(
                [
                    torch.isfinite(x).sum(dtype=x.dtype),
                    torch.linalg.vector_norm(clean),
                    torch.count_nonzero(x).to(x.dtype),
                    torch.linalg.vector_norm(clean, ord=inf),
                ]
            )
            pieces[index] = (torch.cat([head, clean.reshape(lead, -1).sum(1)]), x.numel(), lead)

        return sidecar_activation_tap

    # ---------------------------------------------------------------- per batch

    def begin(self, rows: int) -> bool:
        """Called before a batch runs, in its thread: True when ``run`` should summarise it."""
        if self._rng.random() >= self._config.sample_rate:
            return False
        self._local.pieces = [None] * len(self.layers)
        self._local.rows = rows
        return True

    def run(self, module: Any, args: Sequence[Any]) -> Any:
        """Run a batch that ``begin`` sampled; then one device→host copy and a stats update."""
        try:
            result = module(*args)
            pieces, rows = self._local.pieces, self._local.rows
        finally:
            self._local.pieces = None
        summary = self._collect(pieces, rows)
        if summary is not None:
            self.stats.update(*summary)
        return result

    def _collect(self, pieces: list[Any], rows: int) -> tuple[np.ndarray, np.ndarray] | None:
        if any(p is None for p in pieces):  # a layer that this input did not reach
            return None
        torch = self._torch
        flat = torch.cat([p[0].to(torch.float32) for p in pieces]).cpu().numpy()
        split: list[tuple[np.ndarray, int, int]] = []
        offset = 0
        for values, numel, lead in pieces:
            size = int(values.shape[0])
            split.append((flat[offset : offset + size], numel, lead))
            offset += size
        return summarise(split, rows)

    # ---------------------------------------------------------------- reference

    def profile(self, inputs: Tensors, chunk: int = 1024) -> np.ndarray:
        """Per-row layer means of ``inputs`` (rows, layers); does not touch ``stats``.

        Synchronous: call it in an executor. Used to build the drift reference.
        """
        torch = self._torch
        arrays = [np.ascontiguousarray(inputs[name]) for name in self._input_order]
        total = arrays[0].shape[0]
        means: list[np.ndarray] = []
        with torch.inference_mode():
            for start in range(0, total, chunk):
                args = [torch.from_numpy(a[start : start + chunk]).to(self._device) for a in arrays]
                rows = int(args[0].shape[0])
                self._local.pieces = [None] * len(self.layers)
                try:
                    self._module(*args)
                    result = self._collect(self._local.pieces, rows)
                finally:
                    self._local.pieces = None
                if result is None:
                    raise ModelLoadError("a configured layer did not run on the reference data")
                means.append(result[1])
        return np.concatenate(means) if means else np.empty((0, len(self.layers)))

    def detach(self) -> None:
        """Remove every tap from the graph (the module runs as loaded again)."""
        graph = self._module.graph
        for node in self._taps:
            graph.erase_node(node)
        self._taps = []
        self._module.recompile()

    @property
    def attached(self) -> bool:
        """True while the taps are in the module's graph."""
        return bool(self._taps)
