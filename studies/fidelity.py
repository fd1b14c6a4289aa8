"""Gradient fidelity: how close is each estimator to the exact meta-gradient, as a function of
the inner steps K and the CG steps? (iMAML, Rajeswaran et al. 2019, Thm. 1 / Fig. 2).

Every method works on the same proximal inner problem (Eq. 4)

    G(φ) = L_support(φ) + (λ/2)||φ − θ||²,  φ* = argmin G,  g* = (I + ∇²L_support(φ*)/λ)⁻¹ ∇L_query(φ*)

and ``g*`` (Eq. 5–6, the implicit function theorem) is the exact reference, computed in
float64: the configured inner optimizer runs max(K) steps from θ (so the reference is the
stationary point the K-step methods approach), then damped Newton polishes it to
||∇G|| ≤ tol; the linear system is solved densely (MLP: torch.func Hessian +
``torch.linalg.solve``) or by CG to relative residual ≤ tol (conv4). Compared against it:
every algorithm config with a ``fidelity`` block (the checkout's and a search path's), each
on that proximal problem: iMAML (K steps, c CG steps: an estimator with a ``cg_steps``
hyperparameter is swept over ``study.cg_steps``; one with ``lam`` gets ``study.lam``, the others
run the inner loop with it), MAML unrolled through it (``maml_prox``), FOMAML (∇L_query(φ_K)) and
Reptile's direction θ − φ_K (``direction_only``: its scale is the outer step's business, so only
its cosine is reported). Cost per task, as each config declares it: Hessian-vector products and
gradient evaluations (MAML's backward through K steps counts K HVPs).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from torch.func import grad, jacfwd, jacrev

import models
from algorithms import InnerConfig, inner_objective, meta_gradient_batch, meta_gradient_per_task, solve_inner
from algorithms.linalg import conjugate_gradient, hvp, tree_flatten, tree_unflatten, truncated_newton_direction
from datasets import DTYPES
from trainer.config import algorithm_config, algorithm_names, inner_optimizers
from trainer.problem import Problem, build_problem

from .common import (
    POS,
    THETA_SOURCES,
    base_overrides,
    cosine,
    flat_rows,
    load_params,
    progress,
    rel_error,
    train_config,
    train_run,
)

COLUMNS = ["theta_source", "task", "method", "inner_steps", "cg_steps", "cosine", "rel_error", "hvps",
           "grad_evals", "ref_grad_norm", "ref_converged", "inner_grad_norm", "cg_residual", "label"]


def methods() -> dict:
    """The algorithm configs that declare a ``fidelity`` block, by their rows' method name
    (``fidelity.row``, else the config's name), in :func:`trainer.config.algorithm_names`' order."""
    out = {}
    for name in algorithm_names():
        a = algorithm_config(name)
        if a.get("fidelity") is not None:
            out[a.fidelity.get("row") or name] = a
    return out


RULES = {"tasks": 1, "inner_steps": 1, "cg_steps": 1, "lam": POS, "reference.tol": POS, "methods?": methods,
         "theta_sources": THETA_SOURCES, "dtype": DTYPES, "activation": models.ACTIVATIONS,
         "reference.solver": ("auto", "dense", "cg")}  # studies.common.need


def chosen(s) -> dict:
    """``study.methods`` (null: every method of :func:`methods`), name → algorithm config."""
    every = methods()
    return every if s.methods is None else {m: every[m] for m in s.methods}


def validate(cfg) -> None:
    s = cfg.study
    inner = InnerConfig.make(inner_cfg(s, 1))
    refuse = [m for m, a in chosen(s).items() if inner.optimizer not in inner_optimizers(a)]
    if refuse:
        able = [m for m, a in chosen(s).items() if inner.optimizer in inner_optimizers(a)]
        raise ValueError(f"study.inner.optimizer={inner.optimizer} is not available for {refuse}: set "
                         f"study.methods={able}".replace("'", ""))
    if cfg.dataset.get("model") != "mlp" and s.activation != "relu":
        raise ValueError(f"study.activation={s.activation} is for the MLP (dataset.model=mlp); with dataset="
                         f"{cfg.dataset.name} set study.activation=relu")


def inner_cfg(s, steps: int, prox: float | None = None) -> dict:
    d = {k: (tuple(v) if k == "betas" else v) for k, v in dict(s.inner).items()}
    d["steps"] = int(steps)
    if prox is not None:
        d["prox_lam"] = float(prox)
    return d


# ---------------------------------------------------------------- exact reference
def exact_reference(loss_fn, theta, support, query, lam: float, warm: InnerConfig, tol: float = 1e-10,
                    solver: str = "dense", newton_iters: int = 50, newton_cg_steps: int = 200,
                    cg_max_steps: int = 2000) -> tuple[torch.Tensor, dict]:
    """g* = (I + H/λ)⁻¹ ∇L_query(φ*) with φ* polished to ||∇G(φ*)|| ≤ tol (flat, float64 if θ is).

    Newton on G: dense Cholesky with a Levenberg–Marquardt shift where ∇²G is not positive
    definite (``dense``), or truncated Newton-CG (``cg``); a step is accepted when it meets
    Armijo's condition or reduces ||∇G|| (near the solution G's decrease is below rounding).
    """
    theta = {k: v.detach() for k, v in theta.items()}
    x, y = support
    phi0 = solve_inner(loss_fn, theta, support, replace(warm, prox_lam=lam), detach=True)
    v = tree_flatten(phi0).detach()

    def G(u):
        return inner_objective(loss_fn, tree_unflatten(u, theta), theta, x, y, lam)

    gG = grad(G)
    g = gG(v).detach()
    iters = 0
    while iters < newton_iters and g.norm() > tol and bool(torch.isfinite(g).all()):
        iters += 1
        if solver == "dense":
            H = jacfwd(jacrev(G))(v).detach()
            eye = torch.eye(len(v), dtype=v.dtype, device=v.device)
            shift, L = 0.0, None
            for _ in range(40):  # Levenberg–Marquardt: the smallest tried shift that makes ∇²G + shift·I PD
                chol, info = torch.linalg.cholesky_ex(H + shift * eye)
                if int(info) == 0:
                    L = chol
                    break
                shift = max(10 * shift, 1e-6 * float(H.diagonal().abs().max()) + 1e-12)
            if L is None:  # non-finite Hessian: give up, the row says not converged
                break
            d = -torch.cholesky_solve(g.unsqueeze(1), L).squeeze(1)
        else:
            d = tree_flatten(truncated_newton_direction(
                lambda p: hvp(lambda q: G(tree_flatten(q)), tree_unflatten(v, theta), p),
                tree_unflatten(g, theta), newton_cg_steps)).detach()
        f0, slope, step = G(v).item(), float(g @ d), 1.0
        for _ in range(60):
            cand = (v + step * d).detach()
            g_new = gG(cand).detach()
            if G(cand).item() <= f0 + 1e-4 * step * slope or g_new.norm() < g.norm():
                break
            step *= 0.5
        v, g = cand, g_new
    phi = tree_unflatten(v, theta)
    gq = tree_flatten(grad(loss_fn)(phi, *query)).detach()

    def support_loss(u):
        return loss_fn(tree_unflatten(u, theta), x, y)

    if solver == "dense":
        A = torch.eye(len(v), dtype=v.dtype, device=v.device) + jacfwd(jacrev(support_loss))(v).detach() / lam
        ref = torch.linalg.solve(A, gq)
        residual = float((A @ ref - gq).norm() / gq.norm())
    else:
        def matvec(p):
            hv = hvp(lambda q: loss_fn(q, x, y), phi, p)
            return {k: p[k] + hv[k] / lam for k in p}
        sol, _ = conjugate_gradient(matvec, tree_unflatten(gq, theta), cg_max_steps)
        ref = tree_flatten(sol).detach()
        residual = float((tree_flatten(matvec(sol)) - gq).norm() / gq.norm())  # the true residual, not CG's recurrence
    gnorm = float(g.norm())
    floor = 1e3 * torch.finfo(v.dtype).eps  # what the dtype can certify (float64: 2e-13)
    return ref.double(), {"grad_norm": gnorm, "residual": residual, "newton_iters": iters,
                          "converged": gnorm <= tol and residual <= max(tol, floor)}


# ---------------------------------------------------------------- the methods
def method_rows(problem: Problem, theta, tasks, refs: torch.Tensor, s) -> list[dict]:
    """Rows per (task, method, K[, CG steps]): cosine / rel. error to the task's ``refs`` row and cost.
    All tasks at once (``meta_gradient_per_task``: the registered estimators under vmap)."""
    lam, rows = float(s.lam), []
    hf_hvps = int(s.inner.get("hf_cg_steps", 5)) if s.inner.optimizer == "hf" else 0
    for K in s.inner_steps:
        for m, a in chosen(s).items():
            f, hp = a.fidelity, dict(a.hparams or {})
            own_lam = "lam" in hp  # its own proximal weight (iMAML); else the inner loop carries λ
            if own_lam:
                hp["lam"] = lam
            for c in (s.cg_steps if "cg_steps" in hp else [None]):
                if c is not None:
                    hp["cg_steps"] = int(c)
                g, info = meta_gradient_per_task(a.estimator, problem.loss_fn, theta, tasks,
                                                 inner_cfg(s, K, prox=None if own_lam else lam), **hp)
                hvps = f.hvps_per_step * K + f.hvps_per_cg_step * (c or 0) + K * hf_hvps
                evals = f.grad_evals_per_step * K + f.grad_evals_extra
                rows += _rows(m, a.label, f.direction_only, K, c, flat_rows(g), refs, hvps, evals, info)
    return rows


def _rows(method, label, direction_only, K, c, G, refs, hvps, evals, info) -> list[dict]:
    out = []
    for i in range(G.shape[0]):
        out.append({"task": i, "method": method, "inner_steps": K, "cg_steps": c, "cosine": cosine(G[i], refs[i]),
                    "rel_error": float("nan") if direction_only else rel_error(G[i], refs[i]),
                    "hvps": hvps, "grad_evals": evals, "inner_grad_norm": float(info["inner_grad_norm"][i]),
                    "cg_residual": float(info["cg_residual"][i]) if "cg_residual" in info else None,
                    "label": label})
    return out


# ---------------------------------------------------------------- θ sources
def meta_train(problem: Problem, algorithm: str, iterations: int, batch: int, inner: dict, outer_lr: float,
               seed: int, **hparams) -> dict[str, torch.Tensor]:
    """A short meta-training run (Adam outer step) for a model the shared trainer does not
    build (the smooth-activation MLP); same estimator calls as the trainer."""
    params = {k: v.clone() for k, v in problem.params.items()}
    opt = torch.optim.Adam(list(params.values()), lr=outer_lr)
    gen = torch.Generator().manual_seed(seed)
    for _ in progress(range(iterations), desc=f"train θ ({algorithm})"):
        tasks = tuple(t.to(problem.device) for t in problem.source.sample("train", batch, gen))
        grads, _ = meta_gradient_batch(algorithm, problem.loss_fn, params, tasks, inner, batching="vmap",
                                       diagnostics_full=False, **hparams)
        for k, p in params.items():
            p.grad = grads[k]
        opt.step()
    return {k: v.detach() for k, v in params.items()}


def trained_theta(cfg, problem: Problem, out_dir: Path) -> dict[str, torch.Tensor]:
    t, s = cfg.study.trained, cfg.study
    if t.checkpoint:
        return problem.cast(load_params(t.checkpoint))
    a = algorithm_config(t.algorithm)
    own_lam = "lam" in (a.hparams or {})
    if s.activation == "relu":  # the trainer's own model: a real training run
        summary, params = train_run(base_overrides(
            cfg, f"algorithm={t.algorithm}", f"meta_iterations={t.meta_iterations}",
            f"meta_batch_size={t.meta_batch_size}", f"inner_steps={t.inner_steps}",
            f"algorithm.outer.lr={t.outer_lr}", "eval.num_tasks=50", "eval.val_every=0",
            *([f"algorithm.hparams.lam={s.lam}"] if own_lam else [])),
            out_dir / "train" / "trained")
        if summary["status"] != "completed" or params is None:
            raise RuntimeError(f"training the θ for fidelity ended '{summary['status']}' ({summary.get('failure')})")
        return problem.cast(params)
    inner = inner_cfg(s, int(t.inner_steps))
    if inner["optimizer"] not in inner_optimizers(a):  # hf is iMAML's solver only
        inner = {"steps": int(t.inner_steps), "lr": float(s.inner.lr), "optimizer": "sgd"}
    hp = {"lam": float(s.lam)} if own_lam else {}
    return meta_train(problem, a.estimator, int(t.meta_iterations), int(t.meta_batch_size), inner,
                      float(t.outer_lr), int(cfg.seed), **hp)


# ---------------------------------------------------------------- the study
def run(cfg, out_dir: Path) -> dict:
    s = cfg.study
    tcfg = train_config(base_overrides(cfg))
    problem = build_problem(tcfg, dtype=s.dtype, device=cfg.device, activation=s.activation)
    n_params = sum(v.numel() for v in problem.params.values())
    solver = s.reference.solver if s.reference.solver != "auto" else \
        ("dense" if n_params <= int(s.reference.dense_max) else "cg")
    warm = InnerConfig.make(inner_cfg(s, max(s.inner_steps), prox=float(s.lam)))
    xs, ys, xq, yq = problem.tasks(int(s.tasks), int(cfg.task_seed))
    rows = []
    for source in s.theta_sources:
        theta = problem.params if source == "init" else trained_theta(cfg, problem, out_dir)
        refs, infos = [], []
        for i in progress(range(int(s.tasks)), desc=f"exact reference ({source})"):
            ref, info = exact_reference(problem.loss_fn, theta, (xs[i], ys[i]), (xq[i], yq[i]), float(s.lam), warm,
                                        tol=float(s.reference.tol), solver=solver,
                                        newton_iters=int(s.reference.newton_iters),
                                        newton_cg_steps=int(s.reference.newton_cg_steps),
                                        cg_max_steps=int(s.reference.cg_max_steps))
            refs.append(ref)
            infos.append(info)
        for r in method_rows(problem, theta, (xs, ys, xq, yq), torch.stack(refs), s):
            info = infos[r["task"]]
            rows.append({"theta_source": source, **r, "ref_grad_norm": info["grad_norm"],
                         "ref_converged": bool(info["converged"])})
    bad = len({(r["theta_source"], r["task"]) for r in rows if not r["ref_converged"]})
    if bad:
        print(f"fidelity: the exact reference did not reach tol={s.reference.tol} on {bad} task(s) "
              "(ref_converged=false; with activation=relu this is expected: no smooth minimiser)")
    return {"fidelity.csv": (COLUMNS, rows)}

