"""First-order MAML (Finn et al. 2017, §5.2): ∇L_query evaluated at φ_K, applied to θ.

Drops every second-order term (treats dφ_K/dθ as the identity); no graph across steps.
"""
from __future__ import annotations

from ._common import diagnostics, query_loss
from .inner import InnerConfig, solve_inner
from .linalg import gradient, tree_norm


def fomaml(loss_fn, params, support, query, inner: InnerConfig, metric_fn=None, diagnostics_full: bool = True,
           autograd: bool = False, trace: list | None = None):
    """FOMAML's meta-gradient of one task; arguments and returns as :func:`algorithms.maml.maml`."""
    phi = solve_inner(loss_fn, params, support, inner, detach=True, autograd=autograd, trace=trace)

    def objective(p):
        loss, metric = query_loss(loss_fn, metric_fn, p, *query)
        return loss, (loss.detach(), metric)

    grads, (qloss, qmetric) = gradient(objective, phi, has_aux=True, autograd=autograd)
    if trace is not None:
        trace.append({"stage": "query", "loss": float(qloss), "grad_norm": float(tree_norm(grads))})
    return grads, diagnostics(loss_fn, params, phi, support, query, inner.prox_lam, qloss, qmetric, diagnostics_full,
                              autograd)
