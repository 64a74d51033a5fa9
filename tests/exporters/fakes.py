"""Fakes of NVML and torch.cuda for the GPU collector (no GPU needed)."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace


class FakeNVMLError(Exception):
    """Stands in for pynvml.NVMLError."""


@dataclass
class FakeGpu:
    name: str = "NVIDIA H100 80GB HBM3"
    uuid: str = "GPU-00000000-0000-0000-0000-000000000000"
    used: int = 2 * 1024**3
    total: int = 80 * 1024**3
    utilization: int = 37  # percent
    milliwatts: int | None = 123_456
    millijoules: int | None = 9_876_543  # None: not supported on this GPU


@dataclass
class FakeNvml:
    """The pynvml functions GpuCollector calls, answering from ``gpus``."""

    gpus: list[FakeGpu] = field(default_factory=list)
    lost: bool = False  # every call fails, as after an Xid "GPU has fallen off the bus"
    calls: int = 0

    NVMLError = FakeNVMLError

    def _gpu(self, handle: int) -> FakeGpu:
        self.calls += 1
        if self.lost:
            raise FakeNVMLError("GPU is lost")
        return self.gpus[handle]

    def nvmlDeviceGetCount(self) -> int:
        self.calls += 1
        if self.lost:
            raise FakeNVMLError("GPU is lost")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        self._gpu(index)
        return index

    def nvmlDeviceGetName(self, handle: int) -> str:
        return self._gpu(handle).name

    def nvmlDeviceGetUUID(self, handle: int) -> bytes:
        return self._gpu(handle).uuid.encode()  # old pynvml returns bytes

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
        gpu = self._gpu(handle)
        return SimpleNamespace(used=gpu.used, total=gpu.total, free=gpu.total - gpu.used)

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(gpu=self._gpu(handle).utilization, memory=0)

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        value = self._gpu(handle).milliwatts
        if value is None:
            raise FakeNVMLError("Not Supported")
        return value

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: int) -> int:
        value = self._gpu(handle).millijoules
        if value is None:
            raise FakeNVMLError("Not Supported")
        return value


@dataclass
class FakeTorchCuda:
    """torch.cuda's memory statistics for ``allocated``/``reserved`` bytes per device."""

    allocated: list[int] = field(default_factory=list)
    reserved: list[int] = field(default_factory=list)
    initialized: bool = True

    def is_initialized(self) -> bool:
        return self.initialized

    def device_count(self) -> int:
        return len(self.allocated)

    def memory_allocated(self, device: int) -> int:
        return self.allocated[device]

    def memory_reserved(self, device: int) -> int:
        return self.reserved[device]
