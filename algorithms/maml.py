"""MAML: the exact meta-gradient of the unrolled inner loop (Finn, Abbeel & Levine, ICML 2017, Eq. 1–2).

d/dθ L_query(φ_K(θ)), differentiating through every inner step (second order), by the
gradient of the whole unrolled objective (``linalg.gradient``). Memory grows linearly in K
because every inner step's activations stay on the graph.
"""
from __future__ import annotations

from dataclasses import replace

from ._common import diagnostics, query_loss
from .inner import InnerConfig, solve_inner
from .linalg import gradient


def maml(loss_fn, params, support, query, inner: InnerConfig, metric_fn=None, diagnostics_full: bool = True,
         autograd: bool = False, trace: list | None = None):
    """MAML's meta-gradient of one task.

    Args:
        loss_fn: ``loss_fn(params, x, y) -> scalar``.
        params: θ, a dict of tensors.
        support, query: ``(x, y)`` of the task.
        inner: the inner problem (steps, lr, optimizer, proximal weight).
        metric_fn: optional ``metric_fn(params, x, y)``, reported as ``query_metric_after``.
        diagnostics_full: also report the query loss at θ and ||∇G(φ_K)||.
        autograd: differentiate with ``torch.autograd`` (only outside ``torch.func``
            transforms and ``torch.compile``); else ``torch.func``.
        trace: a list (outside ``torch.func`` transforms only) each stage appends its values to
            (inner steps, the query loss; ``trainer.anatomy``).

    Returns:
        ``(grads, info)``: the meta-gradient (keys of ``params``) and 0-dim diagnostics.
    """
    lam = inner.prox_lam

    def meta_objective(theta):
        phi = solve_inner(loss_fn, theta, support, inner, detach=False, autograd=autograd, trace=trace)
        loss, metric = query_loss(loss_fn, metric_fn, phi, *query)
        if trace is not None:
            trace.append({"stage": "query", "loss": float(loss.detach())})
        return loss, ({k: v.detach() for k, v in phi.items()}, loss.detach(), metric)

    grads, (phi, qloss, qmetric) = gradient(meta_objective, params, has_aux=True, autograd=autograd)
    return grads, diagnostics(loss_fn, params, phi, support, query, lam, qloss, qmetric, diagnostics_full, autograd)


def maml_prox(loss_fn, params, support, query, inner: InnerConfig, lam: float = 2.0, **options):
    """MAML through the proximal inner loop: the exact gradient of the procedure iMAML runs, K steps
    on L_support(φ) + λ/2·||φ − θ||² (Rajeswaran et al. 2019, Eq. 3), of which iMAML's implicit
    gradient is an estimate. Trained in its place (``algorithm.estimator=algorithms.maml:maml_prox``), it
    is the control that tells a failure of that estimate from a failure of the procedure itself."""
    return maml(loss_fn, params, support, query, replace(inner, prox_lam=lam), **options)
