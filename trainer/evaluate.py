"""Evaluation on a fixed, seeded set of test tasks — the same tasks for every algorithm and
seed, so runs can be compared task by task (paired). 95% CI = 1.96·std/√n (MAML protocol)."""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch.func import vmap

from algorithms import InnerConfig, solve_inner, solve_inner_carried


@dataclass(frozen=True)
class EvalSpec:
    """How a run tests θ, fixed once at its start: the task source, the model (``forward``,
    ``loss_fn``) on ``device``, and test-time adaptation — ``inner`` (``test_inner_steps``),
    the proximal weight ``prox_lam`` and the batch-norm protocol ``bn_mode``; ``metric`` is
    ``mse`` or ``accuracy``; ``chunk`` tasks are adapted at once (under vmap if ``use_vmap``)."""

    source: object
    forward: Callable
    loss_fn: Callable
    device: torch.device
    metric: str
    inner: InnerConfig
    prox_lam: float
    bn_mode: str
    use_vmap: bool
    chunk: int


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


def _task_metric(spec: EvalSpec, phi, xs, xq, yq):
    if spec.metric == "mse":
        return spec.loss_fn(phi, xq, yq)
    if spec.bn_mode == "per_example":
        logits = _per_example_logits(spec.forward, phi, xs, xq)
    else:
        logits = spec.forward(phi, xq)
    return (logits.argmax(-1) == yq).to(torch.float64).mean()


def adapt_and_score(spec: EvalSpec, params, tasks, inner: InnerConfig, inner_state=None) -> torch.Tensor:
    """Adapt to each task's support set from θ (no meta-gradient) and score its query set. With
    ``inner_state`` (a carried training state) every task's inner optimizer starts from it; the
    state a task leaves is dropped, so tasks stay independent and ``inner_state`` unchanged."""
    xs, ys, xq, yq = tasks
    theta = {k: v.detach() for k, v in params.items()}
    # The per-task loop takes the loop path of CODE_PATHS (autograd, fused batch norm), vmap its own.
    plain = spec if spec.use_vmap else replace(spec, loss_fn=getattr(spec.loss_fn, "fused", spec.loss_fn),
                                               forward=getattr(spec.forward, "fused", spec.forward))

    inner = replace(inner, prox_lam=spec.prox_lam)

    def one(xs_, ys_, xq_, yq_):
        if inner_state is None:
            phi = solve_inner(plain.loss_fn, theta, (xs_, ys_), inner, detach=True, autograd=not spec.use_vmap)
        else:
            phi = solve_inner_carried(plain.loss_fn, theta, (xs_, ys_), inner, inner_state, autograd=not spec.use_vmap)[0]
        return _task_metric(plain, phi, xs_, xq_, yq_)

    if spec.use_vmap:
        return vmap(one)(xs, ys, xq, yq).detach()
    return torch.stack([one(xs[i], ys[i], xq[i], yq[i]) for i in range(xs.shape[0])]).detach()


def evaluate(spec: EvalSpec, params, split: str, seed: int, n: int, steps_list=(), inner_state=None) -> dict:
    """Metric per task on tasks 0..n−1 of the fixed set; also the mean after each of ``steps_list``;
    ``inner_state``: the inner optimizer state every task starts from (None: a fresh one)."""
    per_task, by_steps = [], {int(k): [] for k in steps_list}
    for start in range(0, n, spec.chunk):
        tasks = sample_fixed(spec.source, split, seed, start, min(n, start + spec.chunk), spec.device)
        per_task.append(adapt_and_score(spec, params, tasks, spec.inner, inner_state))
        for k in by_steps:
            by_steps[k].append(adapt_and_score(spec, params, tasks, replace(spec.inner, steps=k), inner_state))
    values = torch.cat(per_task).double().cpu()
    mean = values.mean().item()
    std = values.std(unbiased=False).item() if n > 1 else 0.0
    return {"metric": spec.metric, "mean": mean, "std": std, "ci95": 1.96 * std / math.sqrt(n), "n": n,
            "per_task": [float(v) for v in values],
            "steps": spec.inner.steps,
            "by_steps": {str(k): torch.cat(v).double().mean().item() for k, v in sorted(by_steps.items())},
            "by_steps_ci95": {str(k): 1.96 * torch.cat(v).double().std(unbiased=False).item() / math.sqrt(n)
                              for k, v in sorted(by_steps.items())}}


def zero_predictor(spec: EvalSpec, split: str, seed: int, n: int) -> dict:
    """The regression baseline that needs no training: predict 0 everywhere on the same fixed
    tasks (its per-task MSE is the mean of y² over the query points)."""
    per_task = []
    for start in range(0, n, spec.chunk):
        yq = sample_fixed(spec.source, split, seed, start, min(n, start + spec.chunk), spec.device)[3]
        per_task.append((yq.double() ** 2).flatten(1).mean(1).cpu())
    values = torch.cat(per_task)
    std = values.std(unbiased=False).item() if n > 1 else 0.0
    return {"mean": values.mean().item(), "ci95": 1.96 * std / math.sqrt(n), "per_task": [float(v) for v in values]}


# The declared early stop (``eval.early_stop=plateau``), fixed before any run used it.
PLATEAU_RULE = ("plateau: validate every eval.val_every iterations on the same eval.val_tasks (>= 200) "
                "validation tasks; from the 9th validation on, stop when the mean of the last third of the "
                "validations improves on the mean of the third before it by no more than that third's mean "
                "95% CI half-width")
PLATEAU_MIN_VALIDATIONS = 9
PLATEAU_MIN_TASKS = 200


def plateau_gain(history: list[tuple[float, float]], lower_is_better: bool) -> tuple[float, float] | None:
    """The two sides of :data:`PLATEAU_RULE` for validations ``[(mean, ci95), ...]`` (in order): the last third's
    mean gain over the third before it, and that earlier third's mean 95% CI half-width; None before the rule
    applies (fewer than :data:`PLATEAU_MIN_VALIDATIONS`)."""
    n = len(history)
    if n < PLATEAU_MIN_VALIDATIONS:
        return None
    m = n // 3
    last, before = history[n - m:], history[n - 2 * m:n - m]
    mean = [sum(v for v, _ in h) / m for h in (last, before)]
    return (mean[1] - mean[0]) if lower_is_better else (mean[0] - mean[1]), sum(ci for _, ci in before) / m


def plateaued(history: list[tuple[float, float]], lower_is_better: bool) -> bool:
    """Whether validations ``[(mean, ci95), ...]`` (in order) meet :data:`PLATEAU_RULE`: a gain no larger than the CI."""
    sides = plateau_gain(history, lower_is_better)
    return sides is not None and sides[0] <= sides[1]
