"""Reptile (Nichol, Achiam & Schulman 2018, Alg. 1): the pseudo-gradient θ − φ_K.

Convention: the returned "gradient" is θ − φ_K, so an outer SGD step θ ← θ − ε·g is
Reptile's θ ← θ + ε(φ_K − θ). The outer step size ε (1.0 annealed linearly to 0 in the
paper) is the outer optimizer's business, not the estimator's. The query set is only
used for the reported loss; Reptile's update never looks at it.
"""
from __future__ import annotations

import torch

from ._common import diagnostics, query_loss
from .inner import InnerConfig, solve_inner


def reptile(loss_fn, params, support, query, inner: InnerConfig, metric_fn=None, diagnostics_full: bool = True,
            autograd: bool = False):
    """Reptile's pseudo-gradient θ − φ_K of one task; arguments and returns as :func:`algorithms.maml.maml`."""
    phi = solve_inner(loss_fn, params, support, inner, detach=True, autograd=autograd)
    grads = {k: params[k].detach() - phi[k] for k in params}
    with torch.no_grad():
        qloss, qmetric = query_loss(loss_fn, metric_fn, phi, *query)
    return grads, diagnostics(loss_fn, params, phi, support, query, inner.prox_lam, qloss, qmetric, diagnostics_full,
                              autograd)
