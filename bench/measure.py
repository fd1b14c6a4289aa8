"""Timing and memory of one meta-iteration, ours and the peer's.

A meta-iteration is the meta-gradient over the meta-batch (``meta_gradient_batch``
with ``diagnostics_full=False``, the query accuracy still computed, as the trainer logs it)
followed by the outer Adam step — for the peer, learn2learn's clone/adapt loop, the
backward passes and its Adam step. Task sampling is timed on its own (:func:`draw_batches`)
and never inside an iteration: every runner consumes the same pre-drawn meta-batches, so
ours and the peer's see identical tasks, and each starts from a fresh copy of the same
initial weights.

Wall time (``time.perf_counter``, CUDA synchronised) is the headline; CPU time
(``time.process_time``) is kept beside it because on a shared CPU it is the steadier of the
two. Medians over the timed iterations after ``warmup`` untimed ones.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from algorithms import meta_gradient_batch
from trainer.meters import AllocationMeter
from trainer.problem import Problem

from .peer import PeerMAML, grads_as_params, module_problem
from .workloads import Estimator


def load_average() -> float | None:
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except OSError:
        return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(step: Callable, tasks, device: torch.device) -> tuple[float, float]:
    """(wall, process CPU) seconds of one ``step(tasks)``, synchronised with the device."""
    _sync(device)
    w0, c0 = time.perf_counter(), time.process_time()
    step(tasks)
    _sync(device)
    return time.perf_counter() - w0, time.process_time() - c0


def draw_batches(problem: Problem, n: int, seed: int, device: torch.device,
                 first: int = 0) -> tuple[list, list[float]]:
    """``first + n`` meta-batches from the workload's sampler (moved to ``device``) and the
    seconds each took: the first ``first`` pay one-off costs (learn2learn's import and task
    set, lazily built on first use), so callers time the others."""
    g = torch.Generator().manual_seed(seed)
    batches, seconds = [], []
    for _ in range(first + n):
        _sync(device)
        t0 = time.perf_counter()
        batch = tuple(t.to(device) for t in problem.source.sample("train", problem.cfg.meta_batch_size, g))
        _sync(device)
        seconds.append(time.perf_counter() - t0)
        batches.append(batch)
    return batches, seconds


def _peer(problem: Problem, params, steps: int, outer_lr: float = 1e-3) -> PeerMAML:
    """learn2learn's MAML on ``problem``'s model, loss and inner step size, from ``params``."""
    c = problem.cfg
    return PeerMAML(problem.model, c.ways, params, problem.metric, float(c.inner_lr), steps, outer_lr)


def ours_runner(problem: Problem, est: Estimator, steps: int, batching: str, device: torch.device,
                outer_lr: float = 1e-3) -> Callable:
    """``step(tasks) -> grads``: one meta-iteration of our estimator from fresh initial weights."""
    params = problem.fresh_params(device)
    opt = torch.optim.Adam(list(params.values()), lr=outer_lr)
    inner = {**est.inner, "steps": steps}

    def step(tasks):
        grads, _ = meta_gradient_batch(est.estimator, problem.loss_fn, params, tasks, inner, batching=batching,
                                       metric_fn=problem.metric_fn, diagnostics_full=False, **est.hparams)
        for k, p in params.items():
            p.grad = grads[k]
        opt.step()
        return grads
    return step


def compile_check(problem: Problem, est: Estimator, steps: int, tasks, device: torch.device) -> dict[str, float]:
    """float32 ‖b − loop‖ / ‖loop‖ of one meta-batch's meta-gradient from the initial weights,
    for b = ``compile`` and b = eager ``vmap``: the compiler's deviation beside the float32
    noise floor of two eager evaluation orders of the same function."""
    params, inner = problem.fresh_params(device), {**est.inner, "steps": steps}
    tasks = tuple(t.to(device) for t in tasks)
    out = {b: meta_gradient_batch(est.estimator, problem.loss_fn, params, tasks, inner, batching=b,
                                  metric_fn=problem.metric_fn, diagnostics_full=False, **est.hparams)[0]
           for b in ("loop", "vmap", "compile")}
    return {f"{b}_vs_loop": relative_difference(out[b], out["loop"]) for b in ("compile", "vmap")}


def peer_runner(problem: Problem, steps: int, device: torch.device, outer_lr: float = 1e-3) -> Callable:
    """``step(tasks) -> grads``: one learn2learn MAML meta-iteration from the same initial weights."""
    peer = _peer(problem, problem.fresh_params(device), steps, outer_lr)

    def step(tasks):
        peer.meta_gradient(tasks)
        grads = grads_as_params(peer.net, problem.model)
        peer.opt.step()
        return grads
    return step


@dataclass
class Timing:
    status: str = "ok"                 # ok | skipped | warmup-only | error
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    warmup_s: float | None = None
    note: str = ""
    load: float | None = None
    first_s: float | None = None       # the first warm-up iteration (compile time included)

    @property
    def wall_s(self) -> float | None:
        return statistics.median(self.wall) if self.wall else (self.warmup_s if self.status == "warmup-only" else None)

    @property
    def cpu_s(self) -> float | None:
        return statistics.median(self.cpu) if self.cpu else None

    def record(self) -> dict:
        return {"status": self.status, "median_wall_s": self.wall_s, "median_cpu_s": self.cpu_s, "wall_s": self.wall,
                "cpu_s": self.cpu, "warmup_s": self.warmup_s, "first_s": self.first_s,
                "timed_iterations": len(self.wall), "note": self.note, "load_average": self.load}


def time_runner(make: Callable[[], Callable], batches: list, device: torch.device, warmup: int, repeats: int,
                max_iter_s: float, cell_budget_s: float, predicted_s: float | None = None,
                min_time_s: float = 0.0) -> Timing:
    """Warm-up then timed iterations over ``batches`` (cycled).

    Skipped (not run) when ``predicted_s`` exceeds ``max_iter_s``; only the warm-up is
    reported when it alone took longer than ``max_iter_s``; otherwise as many timed
    iterations as fit in ``cell_budget_s`` (at least one, at most ``repeats``). A fast cell
    (``repeats`` iterations under ``min_time_s``) is warmed up for another ``min_time_s / 2``
    and timed for ``min_time_s`` (at most 200 iterations), so that a median of milliseconds
    is not decided by three calls.
    """
    t = Timing(load=load_average())
    if predicted_s is not None and predicted_s > max_iter_s:
        t.status = "skipped"
        t.note = f"predicted {predicted_s:.0f} s/iter > max_iter_s={max_iter_s:g}"
        return t
    try:
        step = make()
        warm = 0.0
        for i in range(warmup):
            warm, _ = _timed(step, batches[i % len(batches)], device)
            if i == 0:
                t.first_s = warm   # for a compiled runner: compilation + one iteration
        t.warmup_s = warm if warmup else None
        if warmup and warm > max_iter_s:
            t.status, t.note = "warmup-only", f"warm-up took {warm:.0f} s > max_iter_s={max_iter_s:g}; not repeated"
            return t
        n = repeats if not warm else max(1, min(repeats, int(cell_budget_s // max(warm, 1e-9))))
        done = warmup
        if warm and warm * repeats < min_time_s:
            spent, extra = 0.0, 0
            while spent < min_time_s / 2 and extra < 100:
                spent += _timed(step, batches[done % len(batches)], device)[0]
                done, extra = done + 1, extra + 1
            per_iter = spent / extra   # warmed up: the first calls pay one-off costs
            n = max(n, min(200, int(min_time_s // max(per_iter, 1e-9))))
        for i in range(n):
            wall, cpu = _timed(step, batches[(done + i) % len(batches)], device)
            t.wall.append(wall)
            t.cpu.append(cpu)
            if sum(t.wall) >= cell_budget_s:  # slower than the warm-up promised (e.g. the machine got busy)
                break
        if len(t.wall) < repeats:
            t.note = f"{len(t.wall)} timed iteration(s): cell_budget_s={cell_budget_s:g}"
    except (torch.cuda.OutOfMemoryError, MemoryError) as e:
        t.status, t.note = "error", f"out of memory: {str(e).splitlines()[0][:120]}"
    return t


def peak_memory(fn: Callable[[], object], device: torch.device) -> int:
    """Peak tensor bytes allocated while ``fn`` runs, above what was live before: CUDA's
    ``max_memory_allocated``; on the CPU the profiler's allocation events (AllocationMeter)."""
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        _sync(device)
        return int(torch.cuda.max_memory_allocated(device) - base)
    with AllocationMeter() as m:
        fn()
    return int(m.peak)


def memory_of(problem: Problem, est: Estimator | None, steps: int, tasks, batching: str, device: torch.device) -> int:
    """Peak memory of one meta-gradient over ``tasks``: ours (``est``) or the peer's (``est=None``)."""
    if est is None:
        peer = _peer(problem, problem.fresh_params(device), steps)
        return peak_memory(lambda: peer.meta_gradient(tasks), device)
    params = problem.fresh_params(device)
    inner = {**est.inner, "steps": steps}
    return peak_memory(lambda: meta_gradient_batch(est.estimator, problem.loss_fn, params, tasks, inner,
                                                   batching=batching, metric_fn=problem.metric_fn,
                                                   diagnostics_full=False, **est.hparams), device)


def equal_gradient_check(problem: Problem, est: Estimator, steps: int, tasks, module: bool = False) -> float:
    """‖ours − learn2learn‖ / ‖learn2learn‖ of the MAML meta-gradient of the first task, in
    float64 on the CPU from the same initial weights: an exact oracle (in float32 at α = 0.4
    rounding alone moves the result visibly after a few steps). ``module``: ours
    runs on learn2learn's ``torch.nn`` module through ``functional_call``
    (:func:`bench.peer.module_problem`) instead of our pure model."""
    params = {k: v.detach().to("cpu", torch.float64) for k, v in problem.params.items()}
    if module:
        mod, names = module_problem(problem, params)
        loss_fn, ours_params = mod.loss_fn, mod.params
    else:
        loss_fn, ours_params, names = problem.loss_fn, params, {k: k for k in params}
    task = tuple(t[:1].cpu().double() if t.is_floating_point() else t[:1].cpu() for t in tasks)
    ours, _ = meta_gradient_batch(est.estimator, loss_fn, ours_params, task, {**est.inner, "steps": steps},
                                  batching="loop", diagnostics_full=False, **est.hparams)
    peer = _peer(problem, params, steps)
    peer.meta_gradient(task)
    return relative_difference({names[k]: v.double() for k, v in ours.items()}, grads_as_params(peer.net, problem.model))


def relative_difference(a: dict, b: dict) -> float:
    """||a − b|| / ||b|| over all parameters (float64)."""
    fa = torch.cat([a[k].reshape(-1).double().cpu() for k in sorted(b)])
    fb = torch.cat([b[k].reshape(-1).double().cpu() for k in sorted(b)])
    return float((fa - fb).norm() / fb.norm().clamp_min(1e-300))
