"""The meta-gradient's fidelity along training (``fidelity_every=N``), off the budget clock.

On the current meta-batch and θ, the run's estimator (recomputed in float64) is compared with

- the exact gradient of the objective the run optimises, L_query(φ_K(θ)): second-order MAML
  through the same inner steps, the same inner objective (λ for iMAML) and the same prox_mode
  (``fid_cos_exact``, ``fid_rel_exact``; not for the HF inner solver, which has no
  differentiable path). Reptile's direction θ − φ_K has its own scale: read its cosine.
- for iMAML, its own linear system solved much further (``SOLVE_STEPS`` CG steps, no tolerance):
  ``fid_cos_solved`` / ``fid_rel_solved`` measure CG truncation, while the gap between the solved
  system and the exact gradient is the error of the implicit model itself (φ_K is not a
  stationary point of an indefinite inner problem; Rajeswaran et al. 2019, Thm. 1 assumes it is).
"""
from __future__ import annotations

from dataclasses import replace

import torch

from algorithms import InnerConfig, meta_gradient_batch, meta_gradient_carried, proximal_weight

SOLVE_STEPS = 100


def _flat(g: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([v.flatten() for v in g.values()])


def _compare(a: dict, ref: dict, prefix: str) -> dict[str, float]:
    x, y = _flat(a), _flat(ref)
    den = x.norm() * y.norm()
    return {
        f"fid_cos_{prefix}": float(x @ y / den) if den > 0 else float("nan"),
        f"fid_rel_{prefix}": float((x - y).norm() / y.norm()) if y.norm() > 0 else float("nan")}


def fidelity(estimator: str, loss_fn, params: dict, tasks, inner: InnerConfig, hparams: dict,
             batching: str, inner_state=None) -> dict[str, float]:
    """The ``fid_*`` columns of one meta-iteration (see the module docstring); ``inner_state``: the
    run's carried inner optimizer state (Reptile's reference protocol), which the run's own
    direction starts from (the exact gradient does not: it is MAML's, from a fresh state)."""
    theta = {k: v.detach().double() for k, v in params.items()}
    tasks = tuple(t.double() if t.is_floating_point() else t for t in tasks)
    batching = "vmap" if batching == "vmap" else "loop"
    if inner_state is None:
        run, _ = meta_gradient_batch(estimator, loss_fn, theta, tasks, inner, batching=batching, **hparams)
    else:
        state = {k: v if k == "t" else {n: t.double() for n, t in v.items()} for k, v in inner_state.items()}
        run = meta_gradient_carried(estimator, loss_fn, theta, tasks, state, inner, **hparams)[0]
    out: dict[str, float] = {}
    if inner.optimizer != "hf":
        lam = proximal_weight(estimator, hparams) or inner.prox_lam
        exact, _ = meta_gradient_batch("maml", loss_fn, theta, tasks, replace(inner, prox_lam=lam),
                                       batching=batching)
        out |= _compare(run, exact, "exact")
    if estimator == "imaml":
        solved, info = meta_gradient_batch(estimator, loss_fn, theta, tasks, inner, batching=batching,
                                           **{**hparams, "cg_steps": SOLVE_STEPS, "cg_tol": 0.0})
        out |= _compare(run, solved, "solved")
        out["fid_cg_residual_solved"] = float(info["cg_residual"].mean())
    return out
