"""GPU path, on any machine: device selection and CUDA-synchronised timing.

CUDA availability is monkeypatched, so these run (and mean the same) with or without a GPU;
the GPU itself is exercised by ``make gpu-check``.
"""
from __future__ import annotations

import pytest
import torch

from trainer import ConfigError, compose, validate
from trainer.config import resolve_device
from trainer.meters import Timer


@pytest.fixture
def cuda(monkeypatch):
    """Set whether CUDA 'is available': ``cuda(True)`` / ``cuda(False)``."""
    def set_available(flag: bool) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: flag)
    return set_available


@pytest.mark.parametrize("available,expected", [(True, "cuda"), (False, "cpu")])
def test_auto_picks_cuda_only_when_available(cuda, available, expected):
    cuda(available)
    cfg = compose([])
    assert cfg.device == "auto"  # the default
    assert resolve_device(cfg.device) == torch.device(expected)


@pytest.mark.parametrize("available", [True, False])
def test_explicit_cpu_stays_on_cpu(cuda, available):
    cuda(available)
    cfg = compose(["device=cpu"])
    validate(cfg)
    assert resolve_device(cfg.device) == torch.device("cpu")


def test_explicit_cuda_is_refused_without_cuda_and_accepted_with_it(cuda):
    cfg = compose(["device=cuda"])
    cuda(False)
    with pytest.raises(ConfigError, match=r"device=cuda but CUDA is not available.*device=cpu or device=auto"):
        validate(cfg)
    cuda(True)
    validate(cfg)
    assert resolve_device(cfg.device) == torch.device("cuda")


def test_unknown_device_is_refused():
    with pytest.raises(ConfigError, match=r"device='gpu' is invalid; choose auto, cpu or cuda"):
        validate(compose(["device=gpu"]))


class FakeClock:
    """perf_counter that only advances when 'queued GPU work' is waited for."""

    def __init__(self):
        self.now, self.syncs = 100.0, 0

    def perf_counter(self) -> float:
        return self.now

    def synchronize(self, device=None) -> None:
        self.syncs += 1
        self.now += 1.5  # the kernels still queued when the host asks


def test_timer_synchronises_cuda_before_reading_the_clock(monkeypatch):
    """CUDA kernels run asynchronously: without a synchronize at the end, a timer would
    measure only the launch. The fake clock moves only inside ``synchronize``, so the
    timed seconds are exactly the work waited for at exit (the sync at entry drains
    earlier work before the clock starts)."""
    clock = FakeClock()
    monkeypatch.setattr(torch.cuda, "synchronize", clock.synchronize)
    monkeypatch.setattr("trainer.meters.time.perf_counter", clock.perf_counter)
    with Timer(torch.device("cuda")) as t:
        pass
    assert clock.syncs == 2 and t.seconds == 1.5
    with Timer("cuda:0") as t:
        pass
    assert clock.syncs == 4 and t.seconds == 1.5


def test_timer_never_touches_cuda_on_cpu(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(torch.cuda, "synchronize", clock.synchronize)
    monkeypatch.setattr("trainer.meters.time.perf_counter", clock.perf_counter)
    with Timer(torch.device("cpu")) as t:
        clock.now += 0.25
    assert clock.syncs == 0 and t.seconds == 0.25
