"""Assumption audit: how often does iMAML's theory hold on real tasks?

Rajeswaran et al. (2019, §3–4, Thm. 1) assume the regularised inner objective
G(φ) = L_support(φ) + (λ/2)||φ − θ||² is strongly convex (λ_min(∇²L_support) + λ > 0),
L_support smooth with a Lipschitz Hessian, an inner solve with small ||∇G(φ_K)|| and an
accurate CG solve. At checkpoints of an iMAML training run (the shared trainer; the run
to each checkpoint iteration c is trained from the same seed, so its θ is the long run's θ
at c) and for M tasks and each λ, this measures at the inner solution φ_K(λ):

- ``eig_min`` / ``eig_max`` of ∇²L_support(φ_K): Lanczos on Hessian-vector products
  (``algorithms.linalg.lanczos_extreme_eigs``); ``strongly_convex`` = eig_min + λ > 0;
- ``hess_lipschitz``: max ||∇²L(a)v − ∇²L(b)v|| / ||a − b|| over pairs of points of the
  inner trajectory (θ, φ_{K/2}, φ_K) and random unit v — a lower bound of the constant;
- ``inner_grad_norm`` ||∇G(φ_K)|| and ``cg_residual`` from iMAML's own diagnostics,
  ``query_grad_norm`` ||∇L_query(φ_K)||.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch.func import grad

import checks
from algorithms import InnerConfig, meta_gradient, solve_inner
from algorithms.linalg import hvp, lanczos_extreme_eigs, tree_flatten, tree_norm, tree_unflatten
from trainer.config import inner_config
from trainer.problem import build_problem

from .common import POS, base_overrides, progress, train_config, train_run

COLUMNS = ["checkpoint", "task", "lam", "eig_min", "eig_max", "strongly_convex", "hess_lipschitz",
           "inner_grad_norm", "cg_residual", "query_grad_norm", "lanczos_steps", "inner_steps"]


RULES = {"tasks": 1, "lams": POS, "lanczos_steps": 2, "lipschitz_probes": 1, "train.inner_steps": 1,
         "train.inner_lr": POS, "train.cg_steps": 1}  # studies.common.need


def validate(cfg) -> None:
    cks = checks.integers("study.checkpoints", cfg.study.checkpoints)
    if sorted(cks) != cks or len(set(cks)) != len(cks):
        raise ValueError(f"study.checkpoints={cks} must be strictly increasing iteration numbers")


def support_hessian_eigs(loss_fn, phi, support, steps: int, generator: torch.Generator) -> tuple[float, float]:
    """Extreme eigenvalues of ∇²L_support(φ) by Lanczos on HVPs (float64 iterations)."""
    x, y = support
    phi = {k: v.detach() for k, v in phi.items()}
    dim = sum(v.numel() for v in phi.values())

    def matvec(vec: torch.Tensor) -> torch.Tensor:
        v = tree_unflatten(vec.to(next(iter(phi.values())).dtype), phi)
        return tree_flatten(hvp(lambda p: loss_fn(p, x, y), phi, v)).detach().double()

    dev = next(iter(phi.values())).device
    return lanczos_extreme_eigs(matvec, dim, steps, generator=generator, dtype=torch.float64, device=dev)


def hessian_lipschitz(loss_fn, points: list, support, probes: int, generator: torch.Generator) -> float:
    """max over point pairs and random unit directions of ||H(a)v − H(b)v|| / ||a − b||."""
    x, y = support

    def f(p):
        return loss_fn(p, x, y)

    like = points[0]
    best = 0.0
    for _ in range(probes):
        v = {k: torch.randn(t.shape, generator=generator, dtype=torch.float64).to(t) for k, t in like.items()}
        n = tree_norm(v)
        v = {k: t / n for k, t in v.items()}
        hv = [hvp(f, p, v) for p in points]
        for i in range(len(points)):
            for j in range(i + 1, len(points)):
                dist = tree_norm({k: points[i][k] - points[j][k] for k in like}).item()
                if dist > 0:
                    diff = tree_norm({k: hv[i][k] - hv[j][k] for k in like}).item()
                    best = max(best, diff / dist)
    return best


def audit(problem, theta, tasks, lams, inner: dict, cg_steps: int, lanczos_steps: int, probes: int,
          seed: int, checkpoint: int) -> list[dict]:
    """One row per (task, λ) at parameters ``theta``."""
    xs, ys, xq, yq = tasks
    K = int(inner["steps"])
    gen = torch.Generator().manual_seed(seed)
    theta = {k: v.detach() for k, v in theta.items()}
    rows = []
    for i in progress(range(xs.shape[0]), desc=f"assumptions @ {checkpoint}"):
        sup, qry = (xs[i], ys[i]), (xq[i], yq[i])
        for lam in lams:
            lam = float(lam)
            cfg_k = InnerConfig.make({**inner, "prox_lam": lam})
            phi = solve_inner(problem.loss_fn, theta, sup, cfg_k, detach=True)
            mid = solve_inner(problem.loss_fn, theta, sup, InnerConfig.make({**inner, "steps": K // 2, "prox_lam": lam}))
            lo, hi = support_hessian_eigs(problem.loss_fn, phi, sup, lanczos_steps, gen)
            lip = hessian_lipschitz(problem.loss_fn, [theta, mid, phi], sup, probes, gen)
            _, info = meta_gradient("imaml", problem.loss_fn, theta, sup, qry, inner=inner, lam=lam, cg_steps=cg_steps)
            qg = tree_norm(grad(problem.loss_fn)(phi, *qry)).item()
            rows.append({"checkpoint": checkpoint, "task": i, "lam": lam, "eig_min": lo, "eig_max": hi,
                         "strongly_convex": bool(lo + lam > 0), "hess_lipschitz": lip,
                         "inner_grad_norm": info["inner_grad_norm"], "cg_residual": info["cg_residual"],
                         "query_grad_norm": qg, "lanczos_steps": lanczos_steps, "inner_steps": K})
    return rows


def run(cfg, out_dir: Path) -> dict:
    s = cfg.study
    t = s.train
    overrides = base_overrides(cfg, "algorithm=imaml", f"inner_steps={t.inner_steps}", f"inner_lr={t.inner_lr}",
                               f"algorithm.hparams.cg_steps={t.cg_steps}", f"eval.num_tasks={t.eval_tasks}",
                               "eval.val_every=0")
    tcfg = train_config(overrides)
    problem = build_problem(tcfg, device=cfg.device)
    inner = inner_config(tcfg)
    tasks = problem.tasks(int(s.tasks), int(cfg.task_seed))
    rows = []
    for c in s.checkpoints:
        # One run per checkpoint, each from the same seed and task stream: the run stopped at
        # iteration c has exactly the θ a longer run passes through at c (iMAML's outer Adam
        # has no schedule that depends on the run length).
        summary, params = train_run([*overrides, f"meta_iterations={c}"], out_dir / "train" / f"imaml_it{c}")
        if summary["status"] != "completed" or params is None:
            print(f"assumptions: the iMAML run to iteration {c} ended '{summary['status']}'; stopping there")
            break
        rows += audit(problem, problem.cast(params), tasks, s.lams, inner, int(t.cg_steps), int(s.lanczos_steps),
                      int(s.lipschitz_probes), int(cfg.seed) + int(c), int(c))
    return {"assumptions.csv": (COLUMNS, rows)}
