"""The benchmark's plan: which cells to measure, in which order, with what budget.

Per workload: draw the meta-batches once (timing the sampler), then for each K every
estimator and, right after our MAML, learn2learn's MAML on the same batches (so the ratio
of the two is measured back to back). A cell whose iteration time, extrapolated linearly in
K from the same estimator's smaller K, would exceed ``max_iter_s`` is skipped and marked.
Then loop-vs-vmap comparisons, and the peak memory of one meta-gradient at two K.
"""
from __future__ import annotations

import gc
import time
from dataclasses import asdict, dataclass, field

import torch

from trainer.problem import batching as auto_batching

from .measure import (
    Timing,
    compile_check,
    draw_batches,
    equal_gradient_check,
    load_average,
    memory_of,
    ours_runner,
    peer_runner,
    time_runner,
)
from .peer import module_problem
from .workloads import ALGORITHMS, WORKLOADS, Workload, estimator, sampler, workload_problem


@dataclass
class Options:
    workloads: list[str] = field(default_factory=lambda: list(WORKLOADS))
    ks: list[int] = field(default_factory=lambda: [1, 5, 16])
    algorithms: list[str] = field(default_factory=lambda: list(ALGORITHMS))
    repeats: int = 3
    warmup: int = 1
    max_iter_s: float = 25.0
    cell_budget_s: float = 30.0
    min_time_s: float = 1.0            # a fast cell is timed for at least this long (see time_runner)
    batching: str = "auto"             # auto (trainer.problem.AUTO_BATCHING per model) | vmap | loop
    compare: bool = True               # also time the other batching (see compare_plan)
    peer: bool = True
    compile_ks: list[int] = field(default_factory=lambda: [1, 5])   # MAML also timed under torch.compile …
    compile_workloads: list[str] = field(default_factory=lambda: ["omniglot-5w1s"])  # … on these workloads
    module_workloads: list[str] = field(default_factory=lambda: ["omniglot-5w1s"])  # MAML on a torch.nn module
    mem_workload: str = "omniglot-5w1s"
    mem_ks: list[int] = field(default_factory=lambda: [5, 80])
    mem_tasks: int = 2
    meta_batch: int | None = None      # override every workload's meta-batch (tests, quick looks)
    device: str = "cpu"
    threads: int | None = None         # None: torch's default, every core (the peer gets the same)
    data_root: str = "data"
    synthetic: bool = False
    seed: int = 0


def compare_plan(w: Workload, o: Options) -> list[tuple[str, int]]:
    """(algorithm, K) cells also timed with the other batching: every vmap-able estimator on
    the sinusoid (the ≥ 10× target), MAML at K ≤ 5 on the image workloads."""
    if not o.compare:
        return []
    if w.dataset == "sinusoid":
        return [(a, k) for k in o.ks for a in o.algorithms if a != "imaml_hf"]
    return [("maml", k) for k in o.ks if k <= 5 and "maml" in o.algorithms]


def _predict(done: dict, key, k: int) -> float | None:
    """Linear-in-K extrapolation from the largest smaller K measured for ``key``."""
    prev = [(kk, t) for (kk, t) in done.get(key, []) if kk < k and t is not None]
    if not prev:
        return None
    kk, t = max(prev)
    return t * k / max(kk, 1)


def _cell(algorithm: str, side: str, k: int, batching: str, t: Timing) -> dict:
    return {"algorithm": algorithm, "side": side, "K": k, "batching": batching, **t.record()}


def _workload(w: Workload, o: Options, device: torch.device, log) -> dict:
    if o.meta_batch:
        w = Workload(**{**asdict(w), "meta_batch": o.meta_batch})
    problem = workload_problem(w, o.data_root, o.seed, o.synthetic)
    log(f"[{w.key}] {problem.origin}")
    n = o.warmup + o.repeats
    batches, sample_s = draw_batches(problem, max(n, 8), o.seed + 1, device, first=2)
    primary = auto_batching(o.batching, problem.model)
    rec = {"batching": primary, "label": w.label, "meta_batch": w.meta_batch, "ways": w.ways, "shots": w.shots,
           "query_shots": w.query_shots, "inner_lr": w.inner_lr, "model": problem.model, "head": w.head,
           "origin": problem.origin, "sampler": sampler(problem), "sampling_first_s": sample_s[:2],
           "sampling_s": sample_s[2:],
           "cells": [], "grad_check": {}}
    ests = {a: estimator(a, w) for a in o.algorithms}
    done: dict = {}

    def timed(name, side, k, batching, make, warmup=o.warmup):
        key = (name, side, batching)
        t = time_runner(make, batches, device, warmup, o.repeats, o.max_iter_s, o.cell_budget_s,
                        _predict(done, key, k), o.min_time_s)
        done.setdefault(key, []).append((k, t.wall_s))
        rec["cells"].append(_cell(name, side, k, batching, t))
        shown = f"{t.wall_s:.3f} s" if t.wall_s is not None else "-"
        log(f"[{w.key}] K={k:<3d} {side:5s} {name:9s} {batching:5s} {t.status:11s} {shown} {t.note}")
        return t

    for k in o.ks:
        for a in o.algorithms:
            timed(a, "ours", k, primary, lambda: ours_runner(problem, ests[a], k, primary, device))
            if a == "maml" and o.peer:
                timed("maml", "peer", k, "loop", lambda: peer_runner(problem, k, device))
                rec["grad_check"][str(k)] = equal_gradient_check(problem, ests[a], k, batches[0])
        gc.collect()
    if w.key in o.module_workloads and "maml" in ests and o.peer:
        # A researcher's own network: learn2learn's module through functional_call, per-task loop,
        # MAML at K ≤ 5 beside learn2learn's MAML on that same module.
        mod = module_problem(problem)[0]
        for k in [k for k in o.ks if k <= 5]:
            rec.setdefault("module_check", {})[str(k)] = equal_gradient_check(problem, ests["maml"], k, batches[0], module=True)
            timed("maml", "module", k, "loop", lambda: ours_runner(mod, ests["maml"], k, "loop", device))
        mod = None
    other = "loop" if primary == "vmap" else "vmap"
    for a, k in compare_plan(w, o):
        timed(a, "ours", k, other, lambda: ours_runner(problem, ests[a], k, other, device))
    if w.key in o.compile_workloads and "maml" in ests:
        for k in [k for k in o.compile_ks if k in o.ks]:
            # two warm-ups: the first compiles (its time is reported apart), the second runs the graph
            rec.setdefault("compile_check", {})[str(k)] = compile_check(problem, ests["maml"], k, batches[0], device)
            timed("maml", "ours", k, "loop+compile", lambda: ours_runner(problem, ests["maml"], k, "compile", device),
                  warmup=max(2, o.warmup))
    if w.key == o.mem_workload and o.mem_ks:
        rec["memory"] = _memory(problem, ests, o, primary, batches[0], device, log)
    problem = batches = None  # free the workload before the next one (the closures above are done)
    gc.collect()
    return rec


def _memory(problem, ests, o: Options, primary: str, batch, device, log) -> dict:
    tasks = tuple(t[:o.mem_tasks] for t in batch)
    rows = []
    for a, est in ests.items():
        batching = primary
        for k in o.mem_ks:
            b = memory_of(problem, est, k, tasks, batching, device)
            rows.append({"algorithm": a, "side": "ours", "K": k, "batching": batching, "peak_bytes": b})
            log(f"[memory] {a:9s} K={k:<3d} {b / 2**20:8.1f} MiB")
    if o.peer:
        for k in o.mem_ks:
            b = memory_of(problem, None, k, tasks, "loop", device)
            rows.append({"algorithm": "maml", "side": "peer", "K": k, "batching": "loop", "peak_bytes": b})
            log(f"[memory] peer MAML K={k:<3d} {b / 2**20:8.1f} MiB")
    return {"tasks": len(tasks[0]), "rows": rows,
            "meter": "torch.cuda.max_memory_allocated" if device.type == "cuda" else "trainer.meters.AllocationMeter"}


def run(o: Options, log=print) -> dict:
    """Measure everything ``o`` asks for; returns the record the report is rendered from."""
    for name in o.workloads:
        if name not in WORKLOADS:
            raise ValueError(f"workload {name!r} is unknown; allowed: {list(WORKLOADS)}")
    device = torch.device(o.device)
    if o.threads:
        torch.set_num_threads(o.threads)
    t0 = time.perf_counter()
    out = {"options": asdict(o), "load_average_start": load_average(), "workloads": {}}
    for name in o.workloads:
        out["workloads"][name] = _workload(WORKLOADS[name], o, device, log)
    out["load_average_end"] = load_average()
    out["wall_s"] = time.perf_counter() - t0
    return out
