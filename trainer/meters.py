"""Time and memory meters.

- :class:`AllocationMeter`: peak bytes of tensor memory allocated on the CPU during a
  block, above what was live when it started, from the profiler's allocation events.
  Device-independent measure of an estimator's working memory: MAML's grows with inner
  steps (every step stays on the graph), the first-order and implicit ones stay flat.
  (``saved_tensors_hooks`` would count only autograd's saved tensors, but torch.func
  transforms refuse to run under them.) On CUDA use ``torch.cuda.max_memory_allocated``.
- :func:`rss_peak_bytes`: the process's peak resident set size (CPU).
- :class:`Timer`: wall-clock of a block, synchronising CUDA first when it is in use.
"""
from __future__ import annotations

import contextlib
import os
import resource
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile


@contextlib.contextmanager
def _quiet_stderr():
    """Kineto prints start/stop lines straight to fd 2 whatever its log level; hide them."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class AllocationMeter:
    """``with AllocationMeter() as m: ...`` then ``m.peak`` (bytes). The profiler is costly, so
    the trainer samples it on a few iterations, off the budget clock."""

    def __init__(self):
        self.peak = 0
        self.net = 0

    def __enter__(self):
        self._prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        with _quiet_stderr():
            self._prof.__enter__()
        return self

    def __exit__(self, *exc):
        with _quiet_stderr():
            self._prof.__exit__(*exc)
        events = [e for e in self._prof.profiler.kineto_results.events()
                  if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU]
        events.sort(key=lambda e: e.start_ns())
        cur = peak = 0
        for e in events:
            cur += e.nbytes()
            peak = max(peak, cur)
        self.peak, self.net = peak, cur
        return False


def rss_peak_bytes() -> int:
    """Peak resident set size of this process (Linux reports KiB, macOS bytes)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r if sys.platform == "darwin" else r * 1024)


class Timer:
    def __init__(self, device: torch.device | str = "cpu"):
        self.cuda = torch.device(device).type == "cuda"
        self.seconds = 0.0

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self._t0
        return False
