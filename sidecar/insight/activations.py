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
sampled batch each tap reduces its tensor on the model's device in six
kernels: non-finite values zeroed, L2 norm, max abs, finite count, non-zero
count and one sum per row. ``run`` then stacks every layer's reductions and
copies them to the host once (three kernels and one copy per batch) and
queues that array. Only when the statistics are read (a scrape, a drift
evaluation) are they turned into mean, std, fraction of zeros, fraction
non-finite and max abs per layer, and a per-row mean of each layer, kept in a
bounded window for drift against a reference.

Non-finite values are left out of mean, std and max abs (and count as zero in
the per-row means). ``std`` comes from the sum of squares: it loses precision
when ``|mean|`` exceeds about 1000 × ``std``.
"""

from __future__ import annotations

import fnmatch
import random
import threading
from collections import deque
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
    """Sampled batches' reductions, and what they add up to when read.

    The request path only appends a batch's raw reductions (one host array) to
    a bounded queue (``add``). Reading (``snapshot`` for the exporter, ``window``
    for drift) first decodes queued batches: the latest batch's statistics, and
    per-row layer means into a bounded window of the most recent rows. The
    queue keeps at most ``window`` batches (each has at least one row), so no
    row the window would hold is lost between reads. A lock keeps it consistent.
    """

    def __init__(self, layers: tuple[str, ...], window: int) -> None:
        self.layers = layers
        self._lock = threading.Lock()
        self._pending: deque[tuple[np.ndarray, tuple[tuple[int, int], ...], int]] = deque(
            maxlen=window
        )
        self._reductions = np.full((len(layers), 5), np.nan)
        self._numel = np.zeros(len(layers))
        self._batches = 0
        self._rows = 0
        self._window = np.full((window, len(layers)), np.nan)
        self._next = 0
        self._filled = 0

    def add(self, values: np.ndarray, sizes: tuple[tuple[int, int], ...], rows: int) -> None:
        """Queue one sampled batch's raw reductions (O(1); decoded when read)."""
        with self._lock:
            self._pending.append((values, sizes, rows))
            self._batches += 1
            self._rows += rows

    def _drain(self) -> None:
        while self._pending:
            values, sizes, rows = self._pending.popleft()
            self._reductions, self._numel, row_means = decode(values, sizes, rows)
            self._append_rows(row_means)

    def _append_rows(self, row_means: np.ndarray) -> None:
        size = self._window.shape[0]
        tail = row_means[-size:]
        end = self._next + tail.shape[0]
        if end <= size:
            self._window[self._next : end] = tail
        else:
            split = size - self._next
            self._window[self._next :] = tail[:split]
            self._window[: end - size] = tail[split:]
        self._next = end % size
        self._filled = min(size, self._filled + tail.shape[0])

    @property
    def batches(self) -> int:
        """Sampled batches so far (cheap: decodes nothing)."""
        with self._lock:
            return self._batches

    def snapshot(self) -> ActivationSnapshot:
        """The statistics of the last sampled batch, and how many were summarised."""
        with self._lock:
            self._drain()
            reductions, numel = self._reductions, self._numel
            batches, rows = self._batches, self._rows
        return ActivationSnapshot(self.layers, batches, rows, statistics(reductions, numel))

    def window(self) -> np.ndarray:
        """The most recent sampled rows' layer means, oldest first: (rows ≤ window, layers)."""
        with self._lock:
            self._drain()
            if self._filled < self._window.shape[0]:
                return self._window[: self._filled].copy()
            return np.roll(self._window, -self._next, axis=0)


def decode(
    values: np.ndarray, sizes: tuple[tuple[int, int], ...], rows: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One batch's raw reductions → (reductions (layers, 5), numel (layers,), row means).

    ``values`` holds, for ``L = len(sizes)`` layers: L2 norm and max abs of each
    layer, then finite and non-zero counts of each, then each layer's sums per
    leading index (``sizes[l] = (elements, leading dimension)``). Row means are
    (rows, layers), NaN for a layer whose output has no leading batch dimension
    of ``rows``.
    """
    layers = len(sizes)
    values = values.astype(np.float64, copy=False)
    numel = np.array([n for n, _ in sizes], dtype=np.float64)
    sums = values[4 * layers :]
    if all(lead == rows for _, lead in sizes):  # the usual case: one reshape
        by_row = sums.reshape(layers, rows)
        totals = by_row.sum(axis=1)
        row_means = by_row.T / np.maximum(numel / max(rows, 1), 1.0)
    else:
        totals = np.empty(layers)
        row_means = np.full((rows, layers), np.nan)
        offset = 0
        for i, (size, lead) in enumerate(sizes):
            part = sums[offset : offset + lead]
            totals[i] = part.sum()
            if lead == rows and size:
                row_means[:, i] = part / (size / rows)
            offset += lead
    reductions = np.column_stack(
        [
            values[: 2 * layers].reshape(layers, 2),
            values[2 * layers : 4 * layers].reshape(layers, 2),
            totals,
        ]
    )
    return reductions, numel, row_means


def statistics(reductions: np.ndarray, numel: np.ndarray) -> np.ndarray:
    """Per-layer statistics (layers, 5) in STAT_NAMES order from device reductions.

    ``reductions[l] = (L2 norm, max abs, finite count, non-zero count, sum)`` of
    layer ``l``'s output with non-finite values zeroed; ``numel[l]`` its size.
    Mean, std and max abs are NaN for a layer with no finite value.
    """
    norm, max_abs, finite, nonzero, total = (reductions[:, i].astype(np.float64) for i in range(5))
    size = np.maximum(numel.astype(np.float64), 1.0)
    count = np.maximum(finite, 1.0)
    mean = total / count
    std = np.sqrt(np.maximum(norm * norm / count - mean * mean, 0.0))
    stats = np.column_stack([mean, std, (size - nonzero) / size, (size - finite) / size, max_abs])
    stats[np.ix_(finite == 0, [0, 1, 4])] = np.nan
    stats[numel == 0] = np.nan
    return stats


class _Batch:
    """What the taps of one sampled batch leave behind (device tensors until ``_collect``)."""

    __slots__ = ("counts", "norms", "row_sums", "rows", "sizes")

    def __init__(self, layers: int, rows: int) -> None:
        self.rows = rows
        self.norms: list[Any] = [None] * (2 * layers)
        self.counts: list[Any] = [None] * (2 * layers)
        self.row_sums: list[Any] = [None] * layers
        self.sizes: list[tuple[int, int]] = [(0, 0)] * layers


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
        norm = torch.linalg.vector_norm
        inf = float("inf")

        def sidecar_activation_tap(x: Any, index: int) -> None:
            batch = getattr(local, "batch", None)
            if batch is None:
                return
            x = x.detach()
            if x.dtype != torch.float32 and x.dtype != torch.float64:
                x = x.float()
            lead = x.shape[0] if x.dim() else 1
            clean = x.nan_to_num(0.0, 0.0, 0.0)
            pair = 2 * index
            batch.norms[pair] = norm(clean)
            batch.norms[pair + 1] = norm(clean, ord=inf)
            batch.counts[pair] = torch.isfinite(x).sum()
            batch.counts[pair + 1] = torch.count_nonzero(x)
            batch.row_sums[index] = clean.reshape(lead, -1).sum(1)
            batch.sizes[index] = (x.numel(), lead)

        return sidecar_activation_tap

    # ---------------------------------------------------------------- per batch

    def begin(self, rows: int) -> bool:
        """Called before a batch runs, in its thread: True when ``run`` should summarise it."""
        if self._rng.random() >= self._config.sample_rate:
            return False
        self._local.batch = _Batch(len(self.layers), rows)
        return True

    def run(self, module: Any, args: Sequence[Any]) -> Any:
        """Run a batch that ``begin`` sampled; then one device→host copy and a stats update."""
        try:
            result = module(*args)
            batch = self._local.batch
        finally:
            self._local.batch = None
        values = self._collect(batch)
        if values is not None:
            self.stats.add(values, tuple(batch.sizes), batch.rows)
        return result

    def _collect(self, batch: _Batch) -> np.ndarray | None:
        """Every layer's reductions in one host array: three kernels and one copy."""
        if any(r is None for r in batch.row_sums):  # a layer this input did not reach
            return None
        torch = self._torch
        return torch.cat([torch.stack(batch.norms + batch.counts), *batch.row_sums]).cpu().numpy()

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
                batch = self._local.batch = _Batch(len(self.layers), int(args[0].shape[0]))
                try:
                    self._module(*args)
                finally:
                    self._local.batch = None
                values = self._collect(batch)
                if values is None:
                    raise ModelLoadError("a configured layer did not run on the reference data")
                means.append(decode(values, tuple(batch.sizes), batch.rows)[2])
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
