"""Evaluation on a fixed, seeded set of test tasks — the same tasks for every algorithm and
seed, so runs can be compared task by task (paired). 95% CI = 1.96·std/√n (MAML protocol)."""
from __future__ import annotations

import hashlib
import json
import math

import torch
from torch.func import vmap

from algorithms import InnerConfig, solve_inner


def task_generator(seed: int, index: int) -> torch.Generator:
    """Task ``index`` of a fixed set depends on (seed, index) alone, not on chunking."""
    return torch.Generator().manual_seed(seed * 1_000_003 + index)


def has_split(source, split: str) -> bool:
    """Whether ``source`` has tasks in ``split`` (Omniglot's val split may be configured empty)."""
    check = getattr(source, "has_split", None)
    return True if check is None else bool(check(split))


def sample_fixed(source, split: str, seed: int, start: int, stop: int, device):
    parts = [source.sample(split, 1, task_generator(seed, i)) for i in range(start, stop)]
    return tuple(torch.cat([p[j] for p in parts]).to(device) for j in range(4))


def fingerprint(source, split: str, seed: int, n: int) -> str:
    fields = dict(source.fingerprint_fields(), split=split, seed=seed, n=n,
                  archive_sha256=dict(sorted(source.archive_sha256.items())))
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def _per_example_logits(forward, phi, xs, xq):
    """Non-transductive prediction (Nichol et al. 2018): each query image is normalised
    together with the support set only, never with the other queries."""
    def one(xi):
        return forward(phi, torch.cat([xs, xi.unsqueeze(0)]))[-1]
    return vmap(one)(xq)


def _task_metric(kind, forward, loss_fn, phi, xs, xq, yq, bn_mode):
    if kind == "mse":
        return loss_fn(phi, xq, yq)
    logits = _per_example_logits(forward, phi, xs, xq) if bn_mode == "per_example" else forward(phi, xq)
    return (logits.argmax(-1) == yq).to(torch.float64).mean()


def adapt_and_score(kind, forward, loss_fn, params, tasks, inner: InnerConfig, prox_lam: float,
                    bn_mode: str, use_vmap: bool) -> torch.Tensor:
    """Adapt to each task's support set from θ (no meta-gradient) and score its query set."""
    xs, ys, xq, yq = tasks
    theta = {k: v.detach() for k, v in params.items()}

    def one(xs_, ys_, xq_, yq_):
        phi = solve_inner(loss_fn, theta, (xs_, ys_), inner, detach=True, prox_lam=prox_lam)
        return _task_metric(kind, forward, loss_fn, phi, xs_, xq_, yq_, bn_mode)

    if use_vmap:
        return vmap(one)(xs, ys, xq, yq).detach()
    return torch.stack([one(xs[i], ys[i], xq[i], yq[i]) for i in range(xs.shape[0])]).detach()


def evaluate(source, split: str, seed: int, n: int, kind: str, forward, loss_fn, params, inner: InnerConfig,
             prox_lam: float, bn_mode: str, use_vmap: bool, device, chunk: int = 50,
             steps_list=()) -> dict:
    """Metric per task on tasks 0..n−1 of the fixed set; also the mean after each of ``steps_list``."""
    from dataclasses import replace
    per_task, by_steps = [], {int(k): [] for k in steps_list}
    for start in range(0, n, chunk):
        tasks = sample_fixed(source, split, seed, start, min(n, start + chunk), device)
        per_task.append(adapt_and_score(kind, forward, loss_fn, params, tasks, inner, prox_lam, bn_mode, use_vmap))
        for k in by_steps:
            by_steps[k].append(adapt_and_score(kind, forward, loss_fn, params, tasks, replace(inner, steps=k),
                                               prox_lam, bn_mode, use_vmap))
    values = torch.cat(per_task).double().cpu()
    mean = values.mean().item()
    std = values.std(unbiased=False).item() if n > 1 else 0.0
    return {"metric": kind, "mean": mean, "std": std, "ci95": 1.96 * std / math.sqrt(n), "n": n,
            "per_task": [float(v) for v in values],
            "steps": inner.steps,
            "by_steps": {str(k): torch.cat(v).double().mean().item() for k, v in sorted(by_steps.items())}}
