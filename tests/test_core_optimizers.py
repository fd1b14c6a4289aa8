"""The shared inner loop against ``torch.optim`` and the first-order estimators against
their definitions.

The reference trajectory is computed here, independently: leaf tensors, the inner
objective G(φ) = L_support(φ) + (λ/2)||φ − θ||² written out again, ``backward()`` and
``torch.optim``'s SGD / SGD(momentum, nesterov) / Adam ``step()``.
"""
from __future__ import annotations

import pytest
import torch

import models
from algorithms import InnerConfig, meta_gradient, solve_inner

CASES = {
    "sgd": ({"optimizer": "sgd", "lr": 0.05},
            lambda ps: torch.optim.SGD(ps, lr=0.05)),
    "momentum": ({"optimizer": "momentum", "lr": 0.05, "momentum": 0.6},
                 lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.6)),
    "nesterov": ({"optimizer": "momentum", "lr": 0.05, "momentum": 0.6, "nesterov": True},
                 lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.6, nesterov=True)),
    "adam": ({"optimizer": "adam", "lr": 0.02, "betas": (0.7, 0.95), "eps": 1e-6},
             lambda ps: torch.optim.Adam(ps, lr=0.02, betas=(0.7, 0.95), eps=1e-6)),
}


@pytest.fixture
def sinusoid_task():
    """The 1-40-40-1 ReLU MLP on one sinusoid task, float64."""
    params, forward = models.build("mlp", seed=3, dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    x = torch.rand(20, 1, generator=g, dtype=torch.float64) * 10 - 5
    y = 2.0 * torch.sin(x - 0.5)
    return params, models.mse_loss(forward), (x[:10], y[:10]), (x[10:], y[10:])


def torch_optim_trajectory(loss_fn, theta, support, make_opt, steps: int, prox_lam: float):
    """[φ_1, ..., φ_K] from torch.optim on G(φ) = L(φ) + (prox_lam/2)||φ − θ||²."""
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in theta.items()}
    opt = make_opt(list(leaves.values()))
    out = []
    for _ in range(steps):
        opt.zero_grad()
        G = loss_fn(leaves, *support)
        if prox_lam:
            G = G + 0.5 * prox_lam * sum(((leaves[k] - theta[k]) ** 2).sum() for k in leaves)
        G.backward()
        opt.step()
        out.append({k: v.detach().clone() for k, v in leaves.items()})
    return out


def assert_close(a: dict, b: dict, rtol: float = 1e-12) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=rtol, atol=rtol * b[k].abs().max().item())


@pytest.mark.parametrize("prox_lam", [0.0, 0.8])
@pytest.mark.parametrize("case", list(CASES))
def test_inner_iterates_equal_torch_optim(sinusoid_task, case, prox_lam):
    params, loss_fn, support, _ = sinusoid_task
    inner, make_opt = CASES[case]
    ref = torch_optim_trajectory(loss_fn, params, support, make_opt, 5, prox_lam)
    moved = (ref[-1]["fc1.weight"] - params["fc1.weight"]).abs().max()
    assert moved > 1e-3  # the steps do something, so the comparison has teeth
    for k in range(1, 6):
        cfg = InnerConfig.make({**inner, "steps": k, "prox_lam": prox_lam})
        assert_close(solve_inner(loss_fn, params, support, cfg, detach=True), ref[k - 1])
        # MAML's path (no detaching) must take the same steps.
        assert_close(solve_inner(loss_fn, params, support, cfg, detach=False), ref[k - 1])


@pytest.mark.parametrize("case", ["sgd", "nesterov", "adam"])
def test_fomaml_is_query_gradient_at_phi_k(sinusoid_task, case):
    params, loss_fn, support, query = sinusoid_task
    inner, make_opt = CASES[case]
    phi = torch_optim_trajectory(loss_fn, params, support, make_opt, 4, 0.0)[-1]
    leaves = {k: v.clone().requires_grad_(True) for k, v in phi.items()}
    qloss = loss_fn(leaves, *query)
    expected = dict(zip(leaves, torch.autograd.grad(qloss, list(leaves.values()))))
    grads, info = meta_gradient("fomaml", loss_fn, params, support, query, inner={**inner, "steps": 4})
    assert_close(grads, expected, rtol=1e-11)
    assert info["query_loss_after"] == pytest.approx(qloss.item(), rel=1e-12)


@pytest.mark.parametrize("case", ["sgd", "momentum", "adam"])
def test_reptile_is_theta_minus_phi_k(sinusoid_task, case):
    params, loss_fn, support, query = sinusoid_task
    inner, make_opt = CASES[case]
    phi = torch_optim_trajectory(loss_fn, params, support, make_opt, 6, 0.0)[-1]
    grads, info = meta_gradient("reptile", loss_fn, params, support, query, inner={**inner, "steps": 6})
    assert_close(grads, {k: params[k] - phi[k] for k in params}, rtol=1e-11)
    with torch.no_grad():
        assert info["query_loss_after"] == pytest.approx(loss_fn(phi, *query).item(), rel=1e-12)


def test_estimators_share_the_same_proximal_inner_solution(sinusoid_task):
    """Every estimator adapts on the same objective: with inner.prox_lam = λ for the others
    and lam = λ for iMAML, all report the query loss at torch.optim's φ_K on G."""
    params, loss_fn, support, query = sinusoid_task
    inner, make_opt = CASES["momentum"]
    lam = 1.3
    phi = torch_optim_trajectory(loss_fn, params, support, make_opt, 5, lam)[-1]
    with torch.no_grad():
        expected = loss_fn(phi, *query).item()
    for name in ("maml", "fomaml", "reptile"):
        _, info = meta_gradient(name, loss_fn, params, support, query, inner={**inner, "steps": 5, "prox_lam": lam})
        assert info["query_loss_after"] == pytest.approx(expected, rel=1e-12), name
    _, info = meta_gradient("imaml", loss_fn, params, support, query, inner={**inner, "steps": 5}, lam=lam)
    assert info["query_loss_after"] == pytest.approx(expected, rel=1e-12)


def test_inner_mini_batches_draw_without_replacement_and_wrap():
    """Reptile's inner batches: each step takes ``batch`` distinct rows; consecutive steps
    exhaust the support set before any row comes back; ``batch >= n`` is the whole set."""
    from algorithms.inner import _batches

    assert _batches(50, None, 5) is None and _batches(5, 10, 50) is None and _batches(20, 20, 50) is None
    b = _batches(50, 10, 5)  # Omniglot 5-way: 10 shots × 5 classes, 5 steps of 10 = one pass
    assert [len(set(i.tolist())) for i in b] == [10] * 5
    assert sorted(torch.cat(b).tolist()) == list(range(50))
    assert torch.cat(b).tolist() != list(range(50))  # shuffled, so a batch mixes classes
    b = _batches(75, 10, 8)  # mini-ImageNet: 75 rows, 80 draws: one pass, then 5 rows again
    flat = torch.cat(b).tolist()
    assert sorted(flat[:75]) == list(range(75)) and flat[75:] == flat[:5]


def test_mini_batched_inner_iterates_equal_torch_optim(sinusoid_task):
    """With ``batch``, step t is torch.optim's step on rows batches[t] of the support set."""
    from algorithms.inner import _batches

    params, loss_fn, (x, y), _ = sinusoid_task
    inner, make_opt = CASES["adam"]
    batches = _batches(10, 4, 6)
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    opt = make_opt(list(leaves.values()))
    for idx in batches:
        opt.zero_grad()
        loss_fn(leaves, x[idx], y[idx]).backward()
        opt.step()
    ref = {k: v.detach() for k, v in leaves.items()}
    cfg = InnerConfig.make({**inner, "steps": 6, "batch": 4})
    assert_close(solve_inner(loss_fn, params, (x, y), cfg, detach=True), ref)
    assert_close(solve_inner(loss_fn, params, (x, y), cfg, detach=False), ref)
    full = solve_inner(loss_fn, params, (x, y), InnerConfig.make({**inner, "steps": 6}))
    assert (full["fc1.weight"] - ref["fc1.weight"]).abs().max() > 1e-4  # the batches change the iterates


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_inner_batch_is_validated(bad):
    with pytest.raises(ValueError, match="inner.batch"):
        InnerConfig.make({"batch": bad})
    with pytest.raises(ValueError, match="inner.batch"):
        InnerConfig.make({"optimizer": "hf", "batch": 4})
