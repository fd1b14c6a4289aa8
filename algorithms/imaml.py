"""iMAML: the implicit meta-gradient (Rajeswaran, Finn, Kakade & Levine, NeurIPS 2019, Eq. 5–7, Alg. 2).

With φ* = argmin_φ L_support(φ) + (λ/2)||φ − θ||², the implicit function theorem gives
dφ*/dθ = (I + H/λ)⁻¹ with H = ∇²L_support(φ*), so

    g = (I + H/λ)⁻¹ ∇_φ L_query(φ_K),

solved by ``cg_steps`` conjugate-gradient iterations using Hessian-vector products only.
Memory is independent of the inner steps K (no graph through the inner loop).

``cg_damping`` and ``lam_damping`` (both default 0: the paper's system) solve

    ((1 + cg_damping)·I + H/(λ + lam_damping)) x = ∇L_query(φ_K)

instead, the inner problem keeping its proximal weight λ. The official release
(aravindr93/imaml_dev) uses ``cg_damping=1, lam_damping=10``, which keeps its system
positive definite where the paper's need not be, at the price of a biased implicit
gradient. With ``inner.prox_mode='final_step'`` (the release's inner loop, ``inner.py``)

    meta_gradient("imaml", ..., inner={"steps": K, "lr": α, "optimizer": "sgd",
                  "prox_mode": "final_step"}, lam=λ, cg_steps=5, cg_damping=1.0, lam_damping=10.0)

is the release's per-task meta-gradient. (With ``--cg_steps`` ≤ 1 the release skips CG and
uses ∇L_query(φ) itself; here ``cg_steps=1`` is one CG step.)
"""
from __future__ import annotations

from dataclasses import replace
from typing import Annotated

from torch.func import grad, grad_and_value, vjp

from checks import Rule, choice, integer, number

from ._common import diagnostics, query_loss
from .inner import InnerConfig, solve_inner
from .linalg import conjugate_gradient, hvp, tree_norm

RELEASE_CG_TOL = 1e-10  # imaml_dev utils.cg_solve(residual_tol=1e-10), on ||r||²


def resolve_cg_tol(cg_tol: float | None, inner: InnerConfig) -> float:
    """The CG tolerance a run uses: ``cg_tol``, or by default the inner mode's own: 0 with
    ``prox_mode='every_step'`` (always ``cg_steps`` iterations, the paper's "5 CG steps") and
    the release's 1e-10 with ``'final_step'``."""
    if cg_tol is not None:
        return float(cg_tol)
    return RELEASE_CG_TOL if inner.prox_mode == "final_step" else 0.0


def imaml(loss_fn, params, support, query, inner: InnerConfig,
          lam: Annotated[float, Rule(number)] = 2.0,
          cg_steps: Annotated[int, Rule(integer, 1)] = 5,
          cg_damping: Annotated[float, Rule(number, strict=False)] = 0.0,
          lam_damping: Annotated[float, Rule(number, strict=False)] = 0.0,
          cg_tol: Annotated[float | None, Rule(number, strict=False, optional=True,
                                               note=" (or None: the inner mode's own)")] = None,
          hvp_mode: Annotated[str, Rule(choice, ("fwdrev", "revrev"))] = "revrev",
          metric_fn=None, diagnostics_full: bool = True, autograd: bool = False, trace: list | None = None):
    """iMAML's implicit meta-gradient of one task.

    Args:
        lam: the proximal weight λ of the inner problem (Eq. 3).
        cg_steps: CG iterations on the linear system.
        cg_damping, lam_damping: the damped system above (0, 0: the paper's).
        cg_tol: stop CG once ||r||² < cg_tol (absolute; the release's ``utils.cg_solve``);
            None: :func:`resolve_cg_tol`.
        hvp_mode: ``revrev`` (reverse-over-reverse) or ``fwdrev`` Hessian-vector products.
        The others as :func:`algorithms.maml.maml`.

    Returns:
        ``(grads, info)`` as :func:`algorithms.maml.maml`, ``info`` with ``cg_residual``
        (relative, from the CG recurrence).
    """
    phi = solve_inner(loss_fn, params, support, replace(inner, prox_lam=lam), detach=True, autograd=autograd,
                      trace=trace)
    gq, (qloss, qmetric) = grad_and_value(lambda p: query_loss(loss_fn, metric_fn, p, *query), has_aux=True)(phi)
    if trace is not None:
        trace.append({"stage": "query", "loss": float(qloss), "grad_norm": float(tree_norm(gq))})
    xs, ys = support

    def support_loss(p):
        return loss_fn(p, xs, ys)

    if hvp_mode == "revrev":
        # Linearise ∇L_support at φ once; each CG step is then one pullback (the same numbers
        # as hvp(..., "revrev"), without re-linearising per step).
        _, pullback = vjp(grad(support_loss), phi)

        def hess_vec(v):
            return pullback(v)[0]
    else:
        def hess_vec(v):
            return hvp(support_loss, phi, v, hvp_mode)

    def matvec(v):
        hv = hess_vec(v)
        return {k: (1.0 + cg_damping) * v[k] + hv[k] / (lam + lam_damping) for k in v}

    grads, rel_residual = conjugate_gradient(matvec, {k: v.detach() for k, v in gq.items()}, cg_steps,
                                             tol=resolve_cg_tol(cg_tol, inner), trace=trace)
    aux = diagnostics(loss_fn, params, phi, support, query, lam, qloss, qmetric, diagnostics_full, autograd)
    aux["cg_residual"] = rel_residual.detach()
    return {k: v.detach() for k, v in grads.items()}, aux
