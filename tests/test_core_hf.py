"""The Hessian-free inner solver (iMAML-HF) against a sequential reference.

The solver is written without data-dependent Python control flow (masked CG stops, a batched
line-search ladder) so that it runs under vmap and torch.compile. The reference below is the
textbook form — truncated-Newton CG that returns at negative curvature, then a backtracking
line search that halves until Armijo holds — written with Python branches on ``.item()``.
Both must take the same iterates, step by step, in float64.
"""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch.func import grad

import models
from algorithms import meta_gradient_batch
from algorithms.inner import InnerConfig, inner_objective, solve_inner
from algorithms.linalg import hvp, tree_add, tree_dot, tree_scale, truncated_newton_direction

D = torch.float64


def reference_direction(matvec, g, steps):
    d = {k: torch.zeros_like(t) for k, t in g.items()}
    r = tree_scale(g, -1.0)
    p, rr = dict(r), tree_dot(r, r)
    for i in range(steps):
        ap = matvec(p)
        pap = tree_dot(p, ap)
        if pap.item() <= 0:
            return r if i == 0 else d
        alpha = rr / pap
        d, r = tree_add(d, p, alpha), tree_add(r, ap, -alpha)
        rr_new = tree_dot(r, r)
        if rr_new.item() == 0:
            break
        p, rr = tree_add(r, p, rr_new / rr), rr_new
    return d


def reference_hf(loss_fn, theta, x, y, cfg: InnerConfig, lam: float):
    """Sequential Newton-CG with backtracking; returns every iterate and every accepted step."""
    def G(p):
        return inner_objective(loss_fn, p, theta, x, y, lam)

    phi, path, taken = dict(theta), [], []
    for _ in range(cfg.steps):
        g = {k: v.detach() for k, v in grad(G)(phi).items()}
        d = reference_direction(lambda v: hvp(G, phi, v), g, cfg.hf_cg_steps)
        f0, slope = G(phi).item(), tree_dot(g, d).item()
        if slope >= 0:
            d, slope = {k: -v for k, v in g.items()}, -tree_dot(g, g).item()
        step = cfg.lr
        for _ in range(cfg.hf_ls_steps):
            if G(tree_add(phi, d, step)).item() <= f0 + 1e-4 * step * slope:
                break
            step *= 0.5
        phi = {k: v.detach() for k, v in tree_add(phi, d, step).items()}
        path.append(phi)
        taken.append((step, f0, slope, G(phi).item()))
    return path, taken


def problems():
    p_mlp, f_mlp = models.build("mlp", seed=1, dtype=D)
    g = torch.Generator().manual_seed(3)
    x = torch.rand(10, 1, generator=g, dtype=D) * 10 - 5
    yield "mlp", models.mse_loss(f_mlp), p_mlp, x, 3.0 * torch.sin(x - 0.5)
    p_cnn, f_cnn = models.build("conv4_omniglot", ways=5, seed=1, dtype=D)
    yield "conv4", models.cross_entropy_loss(f_cnn), p_cnn, torch.rand(5, 1, 28, 28, generator=g, dtype=D), torch.arange(5)


@pytest.mark.parametrize("lam", [2.0, 0.5])
def test_hf_takes_the_sequential_solvers_iterates(lam):
    for name, loss_fn, theta, x, y in problems():
        cfg = InnerConfig.make({"optimizer": "hf", "steps": 4, "lr": 1.0})
        path, taken = reference_hf(loss_fn, theta, x, y, cfg, lam)
        for k in range(1, cfg.steps + 1):
            phi = solve_inner(loss_fn, theta, (x, y), InnerConfig.make({**vars(cfg), "steps": k, "prox_lam": lam}))
            for key in theta:
                torch.testing.assert_close(phi[key], path[k - 1][key], rtol=1e-12, atol=1e-14, msg=f"{name} step {k}")
        # Armijo holds at every step the search accepted (not at the exhausted ladder's last
        # resort), and the solver descends
        last_resort = cfg.lr * 0.5 ** cfg.hf_ls_steps
        assert all(f1 <= f0 + 1e-4 * s * sl for s, f0, sl, f1 in taken if s > last_resort), name
        assert taken[-1][3] < taken[0][1], name


def test_line_search_backtracks_like_the_reference():
    """A first step of 8 overshoots on the MLP: the ladder must pick the same halved step."""
    _, loss_fn, theta, x, y = next(problems())
    cfg = InnerConfig.make({"optimizer": "hf", "steps": 3, "lr": 8.0, "hf_ls_steps": 6})
    path, taken = reference_hf(loss_fn, theta, x, y, cfg, 2.0)
    assert any(s < 8.0 for s, *_ in taken)  # the case under test happens
    phi = solve_inner(loss_fn, theta, (x, y), replace(cfg, prox_lam=2.0))
    for key in theta:
        torch.testing.assert_close(phi[key], path[-1][key], rtol=1e-12, atol=1e-14)


def test_masked_newton_cg_stops_where_the_branching_one_returns():
    """Negative curvature at the first direction (−g), at a later one (the iterate so far), and
    an exact solve in fewer steps than allotted (zero residual): same direction as the branches."""
    g = {"w": torch.tensor([1.0, -2.0, 0.5], dtype=D)}
    for diag in ([-1.0, 2.0, 3.0], [1.0, 2.0, -3.0], [2.0, 2.0, 2.0], [1.0, 4.0, 9.0]):
        a = torch.tensor(diag, dtype=D)

        def matvec(v, a=a):
            return {"w": a * v["w"]}

        for steps in (1, 2, 5):
            torch.testing.assert_close(truncated_newton_direction(matvec, g, steps)["w"],
                                       reference_direction(matvec, g, steps)["w"], rtol=0, atol=0)


def sinusoid_tasks(n=3):
    params, forward = models.build("mlp", seed=1, dtype=D)
    g = torch.Generator().manual_seed(1)
    amp = torch.rand(n, 1, 1, generator=g, dtype=D) * 4.9 + 0.1
    x = torch.rand(n, 20, 1, generator=g, dtype=D) * 10 - 5
    y = amp * torch.sin(x)
    return params, models.mse_loss(forward), (x[:, :10], y[:, :10], x[:, 10:], y[:, 10:])


@pytest.mark.parametrize("batching", ["vmap", "compile"])
def test_hf_batches_and_compiles_like_the_loop(batching):
    params, loss_fn, tasks = sinusoid_tasks()
    inner = {"optimizer": "hf", "steps": 3, "lr": 1.0}
    if batching == "compile":  # a smaller unrolled graph: compiling the full one takes minutes on 2 cores
        inner.update(steps=1, hf_cg_steps=2, hf_ls_steps=2)
    g_loop, i_loop = meta_gradient_batch("imaml", loss_fn, params, tasks, inner, batching="loop", lam=2.0)
    g_other, i_other = meta_gradient_batch("imaml", loss_fn, params, tasks, inner, batching=batching, lam=2.0)
    for k in params:
        torch.testing.assert_close(g_other[k], g_loop[k], rtol=1e-9, atol=1e-12)
    for k in i_loop:
        torch.testing.assert_close(i_other[k], i_loop[k], rtol=1e-9, atol=1e-12)
