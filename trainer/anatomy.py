"""Where a failed run first went non-finite, and what led there: the anatomy of a divergence.

When a meta-iteration meets a non-finite loss, meta-gradient or parameter, the trainer re-runs
that meta-batch task by task, off the budget clock, with every stage traced (the estimators'
``trace`` argument; nothing is traced on a healthy iteration, so it costs nothing there):

- ``inner step k`` — the inner optimizer's k-th step (its loss, gradient norm and ‖φ‖ before it);
  with iMAML-HF, ``inner step k, Newton-CG iteration j`` for the CG of its Newton direction;
- ``query gradient`` — ∇L_query(φ_K) (MAML: the query loss; FOMAML, iMAML);
- ``CG iteration j`` — iMAML's linear solve (its curvature pᵀAp and relative residual);
- ``meta-gradient`` — every traced value finite, the task's meta-gradient not (MAML's backward
  through the unrolled inner loop);
- ``outer step`` — every task finite, but the averaged meta-gradient or the parameters after the
  outer optimizer's step are not.

The first non-finite value decides the stage; the record keeps the task within the meta-batch
and what defines it (``describe`` of the task source: sinusoid amplitude and phase, image classes),
‖θ‖, and the last finite traced values before the failure. Test-time adaptation is dissected the
same way (:func:`adaptation_anatomy`), on the first test task whose metric is not finite.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

import algorithms
from algorithms.linalg import tree_norm

KEEP = 24  # traced entries kept before the failure (the inner steps and CG iterations that led to it)


def _finite(v) -> bool:
    if isinstance(v, torch.Tensor):
        return bool(torch.isfinite(v).all())
    if isinstance(v, dict):
        return all(_finite(x) for x in v.values())
    if isinstance(v, float):
        return math.isfinite(v)
    return True


def _norm(p: dict) -> float:
    return float(tree_norm({k: v.detach().double() for k, v in p.items()}))


def stage_name(entry: dict) -> str:
    s = entry["stage"]
    if s == "inner":
        return f"inner step {entry['step']}"
    if s == "inner_cg":
        return f"inner step {entry['step']}, Newton-CG iteration {entry['iteration']}"
    if s == "cg":
        return f"CG iteration {entry['iteration']}"
    if s == "query":
        return "query gradient"
    return s


def _first_bad(trace: list[dict]) -> int | None:
    return next((i for i, e in enumerate(trace) if not all(_finite(v) for v in e.values())), None)


def _block(stage: str, task: int | None, description: dict | None, theta: dict, trace: list[dict],
           bad: int | None, **more) -> dict:
    before = trace[:bad] if bad is not None else trace
    return {"stage": stage, "task": task, "task_definition": description, "theta_norm": _norm(theta),
            "failing": trace[bad] if bad is not None else None, "last_finite": before[-KEEP:], **more}


def _describe(describe: Callable | None, index: int) -> dict | None:
    try:
        return describe(index) if describe is not None else None
    except Exception as e:  # a description is evidence, never a reason to lose the failure record
        return {"error": f"{type(e).__name__}: {e}"}


def train_anatomy(estimator: str, loss_fn, params: dict, tasks, inner, hparams: dict, *, inner_state=None,
                  describe: Callable[[int], dict] | None = None, outer_check: Callable | None = None) -> dict:
    """Re-run one meta-batch task by task with tracing and name where it first went non-finite.

    ``describe(i)``: what defines task i of the batch. ``inner_state``: the carried inner state the
    batch started from (Reptile's reference protocol; each task then passes it on). ``outer_check()``:
    whether the outer step from these tasks leaves finite parameters (the trainer's own step, on a
    copy), asked only when every task is finite."""
    theta = {k: v.detach() for k, v in params.items()}
    if not _finite(theta):
        return _block("parameters (non-finite before the iteration)", None, None, theta, [], None)
    cfg = algorithms.InnerConfig.make(inner)
    loss_fn = getattr(loss_fn, "fused", loss_fn)
    hp = {k: v for k, v in hparams.items() if k not in ("metric_fn", "diagnostics_full")}
    fn = algorithms.ESTIMATORS[estimator]
    xs, ys, xq, yq = tasks
    total = None
    for i in range(xs.shape[0]):
        trace: list[dict] = []
        kw = {"inner_state": inner_state} if inner_state is not None else {}
        out = fn(loss_fn, theta, (xs[i], ys[i]), (xq[i], yq[i]), cfg, autograd=True, diagnostics_full=False,
                 trace=trace, **kw, **hp)
        grads = out[0]
        if inner_state is not None:
            inner_state = out[2]
        bad = _first_bad(trace)
        if bad is not None:
            return _block(stage_name(trace[bad]), i, _describe(describe, i), theta, trace, bad)
        if not _finite(grads):
            return _block("meta-gradient", i, _describe(describe, i), theta, trace, None,
                          note="every traced inner, query and CG value is finite; the task's meta-gradient is not")
        total = grads if total is None else {k: total[k] + grads[k] for k in grads}
    mean = {k: v / xs.shape[0] for k, v in total.items()}
    detail = {"mean_grad_norm": _norm(mean)}
    if not _finite(mean):
        return _block("outer step", None, None, theta, [], None, note="every task's meta-gradient is finite, "
                      "their mean is not", **detail)
    if outer_check is not None and not outer_check():
        return _block("outer step", None, None, theta, [], None, note="finite meta-gradient; the parameters after "
                      "the outer optimizer's step are not", **detail)
    return _block("none found", None, None, theta, [], None, note="the traced re-run of this meta-batch is finite "
                  "everywhere (the failure did not repeat)", **detail)


def adaptation_anatomy(loss_fn, params: dict, task, inner, *, inner_state=None, index: int = 0,
                 describe: Callable[[int], dict] | None = None) -> dict:
    """The test-time adaptation of one task (its support set, from θ) with tracing."""
    theta = {k: v.detach() for k, v in params.items()}
    cfg = algorithms.InnerConfig.make(inner)
    loss_fn = getattr(loss_fn, "fused", loss_fn)
    trace: list[dict] = []
    xs, ys = task[0], task[1]
    if inner_state is None:
        phi = algorithms.solve_inner(loss_fn, theta, (xs, ys), cfg, detach=True, autograd=True, trace=trace)
    else:
        phi = algorithms.solve_inner_carried(loss_fn, theta, (xs, ys), cfg, inner_state, autograd=True,
                                             trace=trace)[0]
    bad = _first_bad(trace)
    stage = f"test-time adaptation, {stage_name(trace[bad])}" if bad is not None else (
        "test-time adaptation, the adapted model's prediction" if _finite(phi) else "test-time adaptation")
    query = float(loss_fn(phi, task[2], task[3])) if _finite(phi) and len(task) > 3 else None
    return _block(stage, index, _describe(describe, index), theta, trace, bad, split="test", query_loss=query)

