"""``prox_mode=none`` (hypertorch's iMAML example as it runs): plain gradient descent on the
support loss, λ only in the linear system. Checked against the same computation written out by
hand in float64: K plain SGD steps, then a dense solve of (I + H/λ) g = ∇L_query(φ_K)."""
from __future__ import annotations

import torch
from conftest import make_tanh_task

from algorithms import InnerConfig, meta_gradient, solve_inner


def by_hand(task, steps: int, lr: float, lam: float) -> torch.Tensor:
    names = list(task.params)
    shapes = [task.params[k].shape for k in names]
    sizes = [task.params[k].numel() for k in names]

    def unflat(v):
        return {k: t.reshape(s) for k, t, s in zip(names, torch.split(v, sizes), shapes)}

    def support_loss(v):
        return task.loss_fn(unflat(v), *task.support)

    phi = torch.cat([task.params[k].flatten() for k in names])
    for _ in range(steps):
        phi = phi - lr * torch.autograd.functional.jacobian(support_loss, phi)
    hessian = torch.autograd.functional.hessian(support_loss, phi)
    gq = torch.autograd.functional.jacobian(lambda v: task.loss_fn(unflat(v), *task.query), phi)
    return torch.linalg.solve(torch.eye(phi.numel(), dtype=phi.dtype) + hessian / lam, gq)


def test_prox_none_is_plain_gd_and_the_implicit_system():
    task = make_tanh_task(seed=3)
    steps, lr, lam = 5, 0.1, 10.0
    inner = InnerConfig.make({"steps": steps, "lr": lr, "optimizer": "sgd", "prox_mode": "none", "prox_lam": lam})
    n = sum(v.numel() for v in task.params.values())
    grads, _ = meta_gradient("imaml", task.loss_fn, task.params, task.support, task.query, inner=inner, lam=lam,
                             cg_steps=4 * n)
    ours = torch.cat([grads[k].flatten() for k in task.params])
    expected = by_hand(task, steps, lr, lam)
    assert torch.allclose(ours, expected, rtol=1e-8, atol=1e-10), (ours - expected).abs().max()
    # the inner loop ignores λ entirely: the same φ_K as with λ = 0 in the paper's mode
    plain = solve_inner(task.loss_fn, task.params, task.support, inner)
    paper_lam0 = solve_inner(task.loss_fn, task.params, task.support,
                             InnerConfig.make({"steps": steps, "lr": lr, "optimizer": "sgd", "prox_lam": 0.0}))
    assert all(torch.equal(plain[k], paper_lam0[k]) for k in plain)
