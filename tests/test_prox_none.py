"""``prox_mode=none`` (hypertorch's iMAML example as it runs): plain gradient descent on the
support loss, λ only in the linear system. Checked against the same computation written out by
hand in float64: K plain SGD steps, then a dense solve of (I + H/λ) g = ∇L_query(φ_K)."""
from __future__ import annotations

import pytest
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


def test_hypertorch_conv4_is_its_reference_network():
    """models.build('conv4_omniglot', arch='hypertorch', init='hypertorch') against the example's
    nn.Sequential written out with the same weights: conv → ReLU → max-pool → batch norm
    (training mode, eps 1e-5), flattened 64 features, linear head; the init's zero head and
    N(0, 2 / (9·64)) convs."""
    import torch.nn as nn

    from models import build

    params, fwd = build("conv4_omniglot", ways=5, seed=0, dtype=torch.float64, arch="hypertorch", init="hypertorch")
    assert not params["head.weight"].any() and not params["head.bias"].any()
    assert params["conv1.weight"].std().item() == pytest.approx((2 / (9 * 64)) ** 0.5, rel=0.05)
    params = {k: v + 0.1 * torch.randn_like(v) for k, v in params.items()}  # a non-trivial head
    blocks = []
    for i, c_in in enumerate((1, 64, 64, 64)):
        conv, bn = nn.Conv2d(c_in, 64, 3, padding=1).double(), nn.BatchNorm2d(64, momentum=1.0).double()
        with torch.no_grad():
            conv.weight.copy_(params[f"conv{i}.weight"]), conv.bias.copy_(params[f"conv{i}.bias"])
            bn.weight.copy_(params[f"bn{i}.weight"]), bn.bias.copy_(params[f"bn{i}.bias"])
        blocks.append(nn.Sequential(conv, nn.ReLU(), nn.MaxPool2d(2), bn))
    head = nn.Linear(64, 5).double()
    with torch.no_grad():
        head.weight.copy_(params["head.weight"]), head.bias.copy_(params["head.bias"])
    ref = nn.Sequential(*blocks, nn.Flatten(), head).train()
    x = torch.rand(10, 1, 28, 28, dtype=torch.float64)
    torch.testing.assert_close(fwd(params, x), ref(x), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(fwd.fused(params, x), ref(x), rtol=1e-10, atol=1e-10)
