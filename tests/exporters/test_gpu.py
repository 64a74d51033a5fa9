"""GpuCollector: NVML and torch.cuda numbers at scrape time, absent without a GPU."""

from __future__ import annotations

import logging
import sys

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from exporters.gpu import GpuCollector, load_nvml, loaded_torch_cuda
from tests.exporters.fakes import FakeGpu, FakeNvml, FakeTorchCuda

GPU_FAMILIES = {
    "sidecar_gpu_info",
    "sidecar_gpu_memory_used_bytes",
    "sidecar_gpu_memory_total_bytes",
    "sidecar_gpu_utilization_ratio",
    "sidecar_gpu_power_watts",
    "sidecar_gpu_energy_joules",
    "sidecar_torch_cuda_allocated_bytes",
    "sidecar_torch_cuda_reserved_bytes",
}


def registry_with(collector: GpuCollector) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(collector)
    return registry


def names(registry: CollectorRegistry) -> set[str]:
    return {family.name for family in registry.collect()}


def test_no_gpu_means_absent_families() -> None:
    registry = registry_with(GpuCollector(None, lambda: None))
    assert names(registry) == set()
    assert generate_latest(registry) == b""


def test_nvml_values_in_base_units() -> None:
    nvml = FakeNvml([FakeGpu(), FakeGpu(used=1, total=2, utilization=100, milliwatts=500)])
    registry = registry_with(GpuCollector(nvml, lambda: None))
    get = registry.get_sample_value
    assert get("sidecar_gpu_memory_used_bytes", {"gpu": "0"}) == 2 * 1024**3
    assert get("sidecar_gpu_memory_total_bytes", {"gpu": "0"}) == 80 * 1024**3
    assert get("sidecar_gpu_utilization_ratio", {"gpu": "0"}) == pytest.approx(0.37)
    assert get("sidecar_gpu_power_watts", {"gpu": "0"}) == pytest.approx(123.456)
    assert get("sidecar_gpu_energy_joules_total", {"gpu": "0"}) == pytest.approx(9876.543)
    assert get("sidecar_gpu_utilization_ratio", {"gpu": "1"}) == 1.0
    assert get("sidecar_gpu_power_watts", {"gpu": "1"}) == 0.5
    info = {"gpu": "0", "name": "NVIDIA H100 80GB HBM3", "uuid": FakeGpu().uuid}
    assert get("sidecar_gpu_info", info) == 1
    # no torch CUDA use: allocator families absent
    assert names(registry) == GPU_FAMILIES - {
        "sidecar_torch_cuda_allocated_bytes",
        "sidecar_torch_cuda_reserved_bytes",
    }


def test_values_are_read_at_every_scrape() -> None:
    gpu = FakeGpu(used=100)
    registry = registry_with(GpuCollector(FakeNvml([gpu]), lambda: None))
    assert registry.get_sample_value("sidecar_gpu_memory_used_bytes", {"gpu": "0"}) == 100
    gpu.used = 200
    assert registry.get_sample_value("sidecar_gpu_memory_used_bytes", {"gpu": "0"}) == 200


def test_unsupported_queries_drop_only_their_family(caplog: pytest.LogCaptureFixture) -> None:
    nvml = FakeNvml([FakeGpu(millijoules=None, milliwatts=None)])
    registry = registry_with(GpuCollector(nvml, lambda: None))
    with caplog.at_level(logging.WARNING, logger="exporters.gpu"):
        first = names(registry)
        names(registry)
    assert "sidecar_gpu_energy_joules" not in first
    assert "sidecar_gpu_power_watts" not in first
    assert "sidecar_gpu_memory_used_bytes" in first
    # each failing call is logged once, not at every scrape
    assert len([r for r in caplog.records if "nvmlDeviceGetPowerUsage" in r.message]) == 1


def test_a_lost_gpu_empties_the_scrape_without_failing_it() -> None:
    nvml = FakeNvml([FakeGpu()])
    registry = registry_with(GpuCollector(nvml, lambda: None))
    assert "sidecar_gpu_memory_used_bytes" in names(registry)
    nvml.lost = True
    assert names(registry) == set()


def test_torch_allocator() -> None:
    cuda = FakeTorchCuda(allocated=[1024, 0], reserved=[4096, 2048])
    registry = registry_with(GpuCollector(None, lambda: cuda))
    get = registry.get_sample_value
    assert get("sidecar_torch_cuda_allocated_bytes", {"device": "cuda:0"}) == 1024
    assert get("sidecar_torch_cuda_reserved_bytes", {"device": "cuda:1"}) == 2048
    cuda.initialized = False  # torch imported but CUDA never used: absent
    assert names(registry) == set()


def test_torch_is_never_imported_for_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    assert loaded_torch_cuda() is None
    assert "torch" not in sys.modules


def test_discover_without_nvidia_driver_is_absent() -> None:
    # this machine has no NVIDIA driver (or no nvidia-ml-py): discovery finds nothing
    nvml = load_nvml()
    if nvml is not None and nvml.nvmlDeviceGetCount() > 0:
        pytest.skip("a real GPU is present; covered by test_real_gpu")
    collector = GpuCollector.discover()
    assert not collector.has_nvml


@pytest.mark.gpu
def test_real_gpu() -> None:
    nvml = load_nvml()
    if nvml is None:
        pytest.skip("no NVIDIA GPU / driver / nvidia-ml-py here")
    registry = registry_with(GpuCollector(nvml))
    total = registry.get_sample_value("sidecar_gpu_memory_total_bytes", {"gpu": "0"})
    used = registry.get_sample_value("sidecar_gpu_memory_used_bytes", {"gpu": "0"})
    assert total is not None and total > 1024**3
    assert used is not None and 0 <= used <= total
    util = registry.get_sample_value("sidecar_gpu_utilization_ratio", {"gpu": "0"})
    assert util is not None and 0.0 <= util <= 1.0
