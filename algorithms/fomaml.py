"""First-order MAML (Finn et al. 2017, §5.2): ∇L_query evaluated at φ_K, applied to θ.

Drops every second-order term (treats dφ_K/dθ as the identity); no graph across steps.
"""
from __future__ import annotations

from torch.func import grad_and_value

from ._common import diagnostics, query_loss
from .inner import InnerConfig, solve_inner


def fomaml(loss_fn, params, support, query, inner: InnerConfig, metric_fn=None, diagnostics_full: bool = True):
    phi = solve_inner(loss_fn, params, support, inner, detach=True)
    grads, (qloss, qmetric) = grad_and_value(lambda p: query_loss(loss_fn, metric_fn, p, *query), has_aux=True)(phi)
    return grads, diagnostics(loss_fn, params, phi, support, query, inner.lam, qloss, qmetric, diagnostics_full)
