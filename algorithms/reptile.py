"""Reptile (Nichol, Achiam & Schulman 2018, Alg. 1): the pseudo-gradient θ − φ_K.

Convention: the returned "gradient" is θ − φ_K, so an outer SGD step θ ← θ − ε·g is
Reptile's θ ← θ + ε(φ_K − θ). The outer step size ε (1.0 annealed linearly to 0 in the
paper) is the outer optimizer's business, not the estimator's. The query set is only
used for the reported loss; Reptile's update never looks at it.

``inner_state``: the reference code (openai/supervised-reptile, ``reptile.py``) keeps one inner
Adam for the whole run; between tasks it restores only the trainable variables, so Adam's moments
and step count carry over from task to task. Passing the state the previous task left (see
:func:`algorithms.meta_gradient_carried`) reproduces that; the state after this task is then
returned as a third value. None: a fresh optimizer state per task.
"""
from __future__ import annotations

import torch

from ._common import diagnostics, query_loss
from .inner import InnerConfig, InnerState, solve_inner, solve_inner_carried


def reptile(loss_fn, params, support, query, inner: InnerConfig, metric_fn=None, diagnostics_full: bool = True,
            autograd: bool = False, inner_state: InnerState | None = None, trace: list | None = None):
    """Reptile's pseudo-gradient θ − φ_K of one task; arguments and returns as :func:`algorithms.maml.maml`
    (and the inner optimizer's state after the task, third, when ``inner_state`` is given)."""
    if inner_state is None:
        phi, state = solve_inner(loss_fn, params, support, inner, detach=True, autograd=autograd, trace=trace), None
    else:
        phi, state = solve_inner_carried(loss_fn, params, support, inner, inner_state, autograd=autograd, trace=trace)
    grads = {k: params[k].detach() - phi[k] for k in params}
    with torch.no_grad():
        qloss, qmetric = query_loss(loss_fn, metric_fn, phi, *query)
    info = diagnostics(loss_fn, params, phi, support, query, inner.prox_lam, qloss, qmetric, diagnostics_full,
                       autograd)
    return (grads, info) if state is None else (grads, info, state)
