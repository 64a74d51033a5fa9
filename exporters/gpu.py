"""GPU metrics read at scrape time: NVML (``nvidia-ml-py``) and PyTorch's CUDA allocator.

Nothing here runs on the request path. ``GpuCollector.collect`` asks NVML and
``torch.cuda`` for their numbers when Prometheus scrapes. Without a GPU (no
``nvidia-ml-py``, no driver, no device, or torch never touched CUDA) the
families are absent, not zero: a dashboard then shows "no data" rather than a
machine that looks idle.

Both sources are constructor arguments so tests inject fakes; ``discover``
finds the real ones. ``pynvml`` is imported only by ``load_nvml``; torch is
never imported here, only read from ``sys.modules`` when something else
already loaded it.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

PREFIX = "sidecar_"


class TorchCuda(Protocol):
    """The part of ``torch.cuda`` the collector reads."""

    def is_initialized(self) -> bool:
        """True once CUDA was used in this process."""
        ...

    def device_count(self) -> int:
        """Visible CUDA devices."""
        ...

    def memory_allocated(self, device: int) -> int:
        """Bytes held by live tensors."""
        ...

    def memory_reserved(self, device: int) -> int:
        """Bytes the caching allocator holds (allocated + cached)."""
        ...


def load_nvml() -> Any | None:
    """``pynvml`` initialised, or None when the library, the driver or a device is missing."""
    try:
        import pynvml
    except ImportError:
        log.debug("nvidia-ml-py not installed: no NVML GPU metrics")
        return None
    try:
        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
    except pynvml.NVMLError as exc:
        log.info("NVML unavailable (%s): no GPU metrics", exc)
        return None
    if count == 0:
        log.info("NVML found no GPU: no GPU metrics")
        return None
    return pynvml


def loaded_torch_cuda() -> TorchCuda | None:
    """``torch.cuda`` when torch is already imported (never imports it), else None."""
    torch = sys.modules.get("torch")
    cuda = getattr(torch, "cuda", None)
    return cuda


class GpuCollector(Collector):
    """Per-GPU memory, utilisation, power and energy; PyTorch allocator bytes."""

    def __init__(
        self,
        nvml: Any | None,
        torch_cuda: Callable[[], TorchCuda | None] = loaded_torch_cuda,
    ) -> None:
        self._nvml = nvml
        self._torch_cuda = torch_cuda
        self._failed: set[str] = set()  # (call) names already logged, to log each once
        self._lock = threading.Lock()

    @classmethod
    def discover(cls) -> GpuCollector:
        """A collector over the real NVML (if usable) and the process's torch."""
        return cls(load_nvml())

    @property
    def has_nvml(self) -> bool:
        """True when an NVML source is attached."""
        return self._nvml is not None

    def describe(self) -> Iterable[Metric]:
        """Nothing: which families exist depends on the hardware at scrape time."""
        return ()

    def collect(self) -> Iterator[Metric]:
        """The GPU families that have samples right now."""
        families = [*self._nvml_families(), *self._torch_families()]
        yield from (f for f in families if f.samples)

    # ------------------------------------------------------------------ NVML

    def _call(self, what: str, fn: Callable[..., Any], *args: Any) -> Any | None:
        """One NVML call; an error (not supported, GPU lost) drops that value only."""
        try:
            return fn(*args)
        except Exception as exc:  # pynvml raises NVMLError subclasses per return code
            with self._lock:
                first = what not in self._failed
                self._failed.add(what)
            if first:
                log.warning("NVML %s failed: %s (not exported while it fails)", what, exc)
            return None

    def _nvml_families(self) -> list[Metric]:
        nvml = self._nvml
        if nvml is None:
            return []
        labels = ["gpu"]
        info = GaugeMetricFamily(
            f"{PREFIX}gpu_info",
            "Always 1: name and UUID of each GPU.",
            labels=["gpu", "name", "uuid"],
        )
        used = GaugeMetricFamily(
            f"{PREFIX}gpu_memory_used_bytes",
            "GPU memory in use (all processes), from NVML.",
            labels=labels,
            unit="bytes",
        )
        total = GaugeMetricFamily(
            f"{PREFIX}gpu_memory_total_bytes",
            "GPU memory installed, from NVML.",
            labels=labels,
            unit="bytes",
        )
        util = GaugeMetricFamily(
            f"{PREFIX}gpu_utilization_ratio",
            "Fraction of the last sample period a kernel ran on the GPU (0-1), from NVML.",
            labels=labels,
            unit="ratio",
        )
        power = GaugeMetricFamily(
            f"{PREFIX}gpu_power_watts",
            "Power draw now, from NVML.",
            labels=labels,
            unit="watts",
        )
        energy = CounterMetricFamily(
            f"{PREFIX}gpu_energy_joules",
            "Energy the GPU used since the driver loaded, from NVML.",
            labels=labels,
            unit="joules",
        )
        count = self._call("nvmlDeviceGetCount", nvml.nvmlDeviceGetCount) or 0
        for index in range(int(count)):
            gpu = str(index)
            handle = self._call(
                "nvmlDeviceGetHandleByIndex", nvml.nvmlDeviceGetHandleByIndex, index
            )
            if handle is None:
                continue
            name = self._call("nvmlDeviceGetName", nvml.nvmlDeviceGetName, handle)
            uuid = self._call("nvmlDeviceGetUUID", nvml.nvmlDeviceGetUUID, handle)
            info.add_metric([gpu, _text(name), _text(uuid)], 1)
            memory = self._call("nvmlDeviceGetMemoryInfo", nvml.nvmlDeviceGetMemoryInfo, handle)
            if memory is not None:
                used.add_metric([gpu], float(memory.used))
                total.add_metric([gpu], float(memory.total))
            rates = self._call(
                "nvmlDeviceGetUtilizationRates", nvml.nvmlDeviceGetUtilizationRates, handle
            )
            if rates is not None:
                util.add_metric([gpu], float(rates.gpu) / 100.0)
            milliwatts = self._call("nvmlDeviceGetPowerUsage", nvml.nvmlDeviceGetPowerUsage, handle)
            if milliwatts is not None:
                power.add_metric([gpu], float(milliwatts) / 1000.0)
            millijoules = self._call(
                "nvmlDeviceGetTotalEnergyConsumption",
                nvml.nvmlDeviceGetTotalEnergyConsumption,
                handle,
            )
            if millijoules is not None:
                energy.add_metric([gpu], float(millijoules) / 1000.0)
        return [info, used, total, util, power, energy]

    # ------------------------------------------------------------------ torch

    def _torch_families(self) -> list[Metric]:
        cuda = self._torch_cuda()
        if cuda is None:
            return []
        allocated = GaugeMetricFamily(
            f"{PREFIX}torch_cuda_allocated_bytes",
            "Bytes held by live PyTorch tensors on the device.",
            labels=["device"],
            unit="bytes",
        )
        reserved = GaugeMetricFamily(
            f"{PREFIX}torch_cuda_reserved_bytes",
            "Bytes PyTorch's caching allocator holds on the device (allocated + cached).",
            labels=["device"],
            unit="bytes",
        )
        try:
            if not cuda.is_initialized():  # torch never used CUDA here: nothing to report
                return []
            for index in range(cuda.device_count()):
                device = f"cuda:{index}"
                allocated.add_metric([device], float(cuda.memory_allocated(index)))
                reserved.add_metric([device], float(cuda.memory_reserved(index)))
        except Exception as exc:  # a CUDA error must not break the whole scrape
            with self._lock:
                first = "torch.cuda" not in self._failed
                self._failed.add("torch.cuda")
            if first:
                log.warning("torch.cuda memory statistics failed: %s", exc)
            return []
        return [allocated, reserved]


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return "" if value is None else str(value)
