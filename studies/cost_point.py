"""One point of the cost study, measured in this (fresh) process; prints one JSON line.

    python -m studies.cost_point '{"overrides": ["dataset=sinusoid", "algorithm=maml", ...],
                                   "warmup": 2, "iterations": 5, "mem_cap_bytes": 4e9}'

A meta-iteration is what the trainer does per step: sample a meta-batch, compute the
meta-gradient (``meta_gradient_batch``, the trainer's batching rule), take the outer
optimizer step. Reported: median wall time per iteration after ``warmup`` iterations, median
CPU time (``time.process_time``, all threads), peak tensor memory of one iteration (CUDA:
``max_memory_allocated``; CPU: the profiler's allocation peak, ``AllocationMeter``) and the
process's peak RSS (read before the profiled iteration). Out of memory (CUDA or CPU allocator), or a measured peak above
``mem_cap_bytes``, gives ``status: oom`` instead of a crash.
"""
from __future__ import annotations

import json
import statistics
import sys
import time

import torch
from omegaconf import OmegaConf


def _is_oom(e: BaseException) -> bool:
    if isinstance(e, torch.cuda.OutOfMemoryError) or isinstance(e, MemoryError):
        return True
    msg = str(e).lower()
    return isinstance(e, RuntimeError) and ("out of memory" in msg or "can't allocate memory" in msg)


def eager_batching(trainer_mode: str) -> str:
    """The trainer's batching mode as the cost study runs it: eagerly (``compile``, a loop over the
    compiled estimator, is timed by ``make bench``, not here)."""
    return "loop" if trainer_mode == "compile" else trainer_mode


def measure(spec: dict) -> dict:
    from algorithms import InnerConfig, meta_gradient_batch
    from trainer.config import inner_config
    from trainer.meters import AllocationMeter, rss_peak_bytes
    from trainer.problem import batching as trainer_batching
    from trainer.problem import build_problem

    from .common import train_config

    tcfg = train_config(spec["overrides"])
    problem = build_problem(tcfg, device=tcfg.device)
    dev = problem.device
    a = tcfg.algorithm
    inner = InnerConfig.make(inner_config(tcfg))
    hparams = OmegaConf.to_container(a.hparams, resolve=True)
    batching = eager_batching(trainer_batching(tcfg.batching, problem.model))
    params = problem.params
    opt = (torch.optim.Adam if a.outer.optimizer == "adam" else torch.optim.SGD)(list(params.values()), lr=float(a.outer.lr))
    gen = torch.Generator().manual_seed(int(tcfg.seed))
    out = {"algorithm": a.estimator, "variant": a.name, "inner_optimizer": inner.optimizer, "inner_steps": inner.steps,
           "meta_batch_size": int(tcfg.meta_batch_size), "batching": batching, "device": dev.type,
           "median_iter_s": None, "cpu_time_s": None, "alloc_peak_bytes": None, "rss_peak_bytes": None,
           "gpu_peak_bytes": None, "status": "completed", "note": None}

    def iteration():
        tasks = tuple(t.to(dev) for t in problem.source.sample("train", int(tcfg.meta_batch_size), gen))
        grads, _ = meta_gradient_batch(a.estimator, problem.loss_fn, params, tasks, inner, batching=batching,
                                       metric_fn=problem.metric_fn, diagnostics_full=False, **hparams)
        for k, p in params.items():
            p.grad = grads[k]
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    try:
        for _ in range(int(spec.get("warmup", 2))):
            iteration()
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        walls, cpus = [], []
        for _ in range(int(spec.get("iterations", 5))):
            w0, c0 = time.perf_counter(), time.process_time()
            iteration()
            walls.append(time.perf_counter() - w0)
            cpus.append(time.process_time() - c0)
        out.update(median_iter_s=statistics.median(walls), cpu_time_s=statistics.median(cpus),
                   rss_peak_bytes=rss_peak_bytes())  # before the profiler, whose event buffers grow RSS
        if dev.type == "cuda":
            out["gpu_peak_bytes"] = int(torch.cuda.max_memory_allocated(dev))
        else:  # a separate, untimed iteration: the profiler slows what it watches
            with AllocationMeter() as m:
                iteration()
            out["alloc_peak_bytes"] = int(m.peak)
    except BaseException as e:  # noqa: BLE001 — out-of-memory is an outcome; anything else is a bug
        if not _is_oom(e):
            raise
        out.update(status="oom", note=str(e).splitlines()[0][:200])
    out["rss_peak_bytes"] = out["rss_peak_bytes"] or rss_peak_bytes()
    peak = out["gpu_peak_bytes"] if dev.type == "cuda" else out["alloc_peak_bytes"]
    cap = spec.get("mem_cap_bytes")
    if out["status"] == "completed" and cap and peak and peak > float(cap):
        out.update(status="oom", note=f"peak {peak} B above mem_cap_bytes={float(cap):.3g}")
    return out


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        sys.exit("usage: python -m studies.cost_point '<json spec>'")
    print(json.dumps(measure(json.loads(argv[0]))), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
