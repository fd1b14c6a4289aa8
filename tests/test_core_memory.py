"""Memory discipline, measured with ``trainer.meters.AllocationMeter``
(peak CPU tensor bytes allocated inside the block, from the profiler's allocation events).

FOMAML, Reptile and iMAML keep no autograd graph across inner steps, so their peak at
K = 50 is within 10% of K = 5; MAML keeps every step on the graph, so its peak grows
(about linearly) with K.
"""
from __future__ import annotations

import pytest
import torch

import models
from algorithms import meta_gradient
from trainer.meters import AllocationMeter


@pytest.fixture(scope="module")
def task():
    params, forward = models.build("mlp", seed=0)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(20, 1, generator=g) * 10 - 5
    y = 3.0 * torch.sin(x - 1.0)
    with AllocationMeter():  # the profiler's first use has one-off costs; keep them out
        pass
    return params, models.mse_loss(forward), (x[:10], y[:10]), (x[10:], y[10:])


def peak_bytes(task, name: str, steps: int, inner: dict | None = None, **hp) -> int:
    params, loss_fn, support, query = task
    with AllocationMeter() as meter:
        meta_gradient(name, loss_fn, params, support, query, inner={"steps": steps, "lr": 0.01, **(inner or {})}, **hp)
    assert meter.peak > 0  # the meter saw the allocations at all
    return meter.peak


@pytest.mark.parametrize("name,inner,hp,steps", [
    ("fomaml", None, {}, (5, 50)),
    ("reptile", None, {}, (5, 50)),
    ("imaml", None, {"lam": 2.0, "cg_steps": 5}, (5, 50)),
    ("imaml", {"optimizer": "adam"}, {"lam": 2.0, "cg_steps": 5}, (5, 50)),
    # a Newton-CG step costs ~15 gradients under the profiler: fewer steps keep this quick
    ("imaml", {"optimizer": "hf", "lr": 1.0}, {"lam": 2.0, "cg_steps": 5}, (3, 15)),
], ids=["fomaml", "reptile", "imaml-sgd", "imaml-adam", "imaml-hf"])
def test_first_order_and_implicit_memory_is_flat_in_steps(task, name, inner, hp, steps):
    small, large = (peak_bytes(task, name, k, inner, **hp) for k in steps)
    assert abs(large - small) <= 0.10 * small, (small, large)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_maml_memory_grows_with_steps(task, optimizer):
    inner = {"optimizer": optimizer}
    p5, p50 = peak_bytes(task, "maml", 5, inner), peak_bytes(task, "maml", 50, inner)
    assert p50 >= 3 * p5, (p5, p50)
    # ... and costs more than first-order MAML at the same K (the graph through the unroll).
    assert p50 >= 3 * peak_bytes(task, "fomaml", 50, inner)
