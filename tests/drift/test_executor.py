"""Windows evaluated in a child process (``executor: process``): the same verdicts as the
thread, shared memory released, and a child that dies costs one counted window, not serving."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from detectors.drift import DriftConfig
from detectors.reference import Reference
from sidecar.drift.executor import EvaluatorFailed, ProcessEvaluator, ScopeSpec
from sidecar.models import ServedModel
from sidecar.runtimes.fakes import SumRuntime
from tests.drift.helpers import Harness, write_reference

WIDTH = 8


@pytest.fixture
def harness(tmp_path: Path) -> Any:
    reference = np.random.default_rng(0).standard_normal((2000, WIDTH))
    for name in ("t", "p"):
        write_reference(tmp_path, name, "reference.npy", reference)
    harness = Harness(tmp_path)
    yield harness
    asyncio.run(harness.drift.stop())


def load(harness: Harness, name: str, executor: str) -> ServedModel:
    settings = {
        "reference": "reference.npy",
        "window_size": 400,
        "min_window": 100,
        "executor": executor,
    }
    model = harness.add(settings, SumRuntime(WIDTH), name=name)
    assert model.ready, model.error
    return model


def rows(n: int, seed: int, shift: float = 0.0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, WIDTH))
    x[:, :2] += shift
    return x.astype(np.float32)


def evaluator_of(harness: Harness, model: ServedModel) -> ProcessEvaluator:
    evaluator = harness.monitor(model).evaluator
    assert isinstance(evaluator, ProcessEvaluator)
    return evaluator


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_the_process_gives_the_thread_s_verdict_and_releases_everything(
    harness: Harness,
) -> None:
    thread, process = load(harness, "t", "thread"), load(harness, "p", "process")
    for seed, shift in ((1, 0.0), (2, 0.5)):
        x = rows(400, seed, shift)
        harness.request(thread, {"x": x})
        harness.request(process, {"x": x})
        harness.process()
        for test in ("welch", "adjusted"):
            ours = harness.samples("sidecar_drift_p_value", model="p", scope="inputs", test=test)
            theirs = harness.samples("sidecar_drift_p_value", model="t", scope="inputs", test=test)
            assert ours and ours == theirs
        assert harness.value(
            "sidecar_drift_detected", model="p", version="1", scope="inputs"
        ) == float(shift > 0)
    assert (
        harness.value("sidecar_drift_evaluations_total", model="p", version="1", scope="inputs")
        == 2.0
    )
    evaluator = evaluator_of(harness, process)
    pid = evaluator.pid
    assert pid is not None
    shm = Path("/dev/shm") / evaluator.shared_memory_name()
    assert shm.exists()
    asyncio.run(harness.manager.unload_all())  # the worker closes monitors on its next round
    assert evaluator.pid == pid
    harness.process()
    assert evaluator.pid is None and gone(pid)
    assert not shm.exists()


def test_a_dead_evaluation_process_costs_one_counted_window(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    model = load(harness, "p", "process")
    evaluator = evaluator_of(harness, model)
    harness.request(model, {"x": rows(400, 1)})
    # The first full window starts the child; kill it while the worker waits for it.
    killed: list[int] = []

    def kill_the_child() -> None:
        deadline = time.monotonic() + 30
        while (pid := evaluator.pid) is None and time.monotonic() < deadline:
            time.sleep(0.001)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    killer = threading.Thread(target=kill_the_child)
    killer.start()
    harness.process()
    killer.join()
    assert killed
    assert (
        harness.value(
            "sidecar_drift_windows_skipped_total", model="p", version="1", reason="executor_failed"
        )
        == 1.0
    )
    assert f"was killed by signal {signal.SIGKILL}" in caplog.text
    assert (
        harness.value("sidecar_drift_evaluations_total", model="p", version="1", scope="inputs")
        == 0.0
    )
    # The next window starts a new child and is evaluated.
    harness.request(model, {"x": rows(400, 2)})
    harness.process()
    assert (
        harness.value("sidecar_drift_evaluations_total", model="p", version="1", scope="inputs")
        == 1.0
    )
    assert evaluator.pid not in (None, killed[0])


def test_a_window_too_big_for_shared_memory_is_refused_up_front() -> None:
    """Not SIGBUS at the first write: the block's pages are reserved when it is made.

    The window asks for more than /dev/shm's total size, which tmpfs refuses before
    allocating anything. (A monitor then evaluates on its worker thread instead.)
    """
    stat = os.statvfs("/dev/shm")
    rows_needed = stat.f_blocks * stat.f_frsize // (WIDTH * 8) + 1
    names = [f"x[{i}]" for i in range(WIDTH)]
    reference = Reference.fit(np.random.default_rng(0).random((500, WIDTH)), names)
    spec = ScopeSpec("inputs", reference, frozenset(names))
    before = set(os.listdir("/dev/shm"))
    evaluator = ProcessEvaluator("model 'm' version 1", [spec], DriftConfig(), rows_needed, "idle")
    with pytest.raises(EvaluatorFailed) as caught:
        evaluator.buffers()
    message = caught.value.message
    assert f"a drift window of {rows_needed} rows" in message and "in shared memory" in message
    assert set(os.listdir("/dev/shm")) <= before  # nothing left behind
    evaluator.close()
