"""Task batching: the per-task loop and ``torch.func.vmap`` give the same meta-batch
gradient and per-task diagnostics, for all four estimators, on the
sinusoid MLP and on conv4_omniglot. Float64, so "float tolerance" can be tight; the loop
result is also checked against single-task ``meta_gradient`` calls averaged by hand.
"""
from __future__ import annotations

import sys

import pytest
import torch

import models
from algorithms import meta_gradient, meta_gradient_batch

D = torch.float64
ESTIMATORS = [("maml", {}), ("fomaml", {}), ("reptile", {}), ("imaml", {"lam": 2.0, "cg_steps": 3})]


def sinusoid_batch(n: int = 4):
    params, forward = models.build("mlp", seed=1, dtype=D)
    g = torch.Generator().manual_seed(1)
    amp = torch.rand(n, 1, 1, generator=g, dtype=D) * 4.9 + 0.1
    phase = torch.rand(n, 1, 1, generator=g, dtype=D) * torch.pi
    x = torch.rand(n, 20, 1, generator=g, dtype=D) * 10 - 5
    y = amp * torch.sin(x - phase)
    tasks = (x[:, :10], y[:, :10], x[:, 10:], y[:, 10:])
    return params, models.mse_loss(forward), None, tasks, {"steps": 3, "lr": 0.01}


def omniglot_batch(n: int = 2):
    params, forward = models.build("conv4_omniglot", ways=5, seed=1, dtype=D)
    g = torch.Generator().manual_seed(1)
    xs = torch.rand(n, 5, 1, 28, 28, generator=g, dtype=D)   # 5-way 1-shot
    xq = torch.rand(n, 10, 1, 28, 28, generator=g, dtype=D)  # 2 query images per class
    ys, yq = torch.arange(5).repeat(n, 1), torch.arange(5).repeat(n, 2)
    tasks = (xs, ys, xq, yq)
    return (params, models.cross_entropy_loss(forward), models.accuracy_metric(forward), tasks,
            {"steps": 2, "lr": 0.4})


def rel(a: dict, b: dict) -> float:
    num = sum(((a[k] - b[k]) ** 2).sum() for k in b).sqrt()
    return (num / sum((b[k] ** 2).sum() for k in b).sqrt()).item()


@pytest.mark.parametrize("model", ["mlp", "conv4_omniglot"])
@pytest.mark.parametrize("name,hp", ESTIMATORS, ids=[n for n, _ in ESTIMATORS])
def test_loop_and_vmap_agree(model, name, hp):
    params, loss_fn, metric_fn, tasks, inner = sinusoid_batch() if model == "mlp" else omniglot_batch()
    g_loop, i_loop = meta_gradient_batch(name, loss_fn, params, tasks, inner, batching="loop", metric_fn=metric_fn, **hp)
    g_vmap, i_vmap = meta_gradient_batch(name, loss_fn, params, tasks, inner, batching="vmap", metric_fn=metric_fn, **hp)
    assert g_loop.keys() == g_vmap.keys() == params.keys()
    assert all(g_vmap[k].shape == params[k].shape for k in params)
    assert rel(g_vmap, g_loop) <= 1e-10
    assert i_loop.keys() == i_vmap.keys()
    n = tasks[0].shape[0]
    for k in i_loop:
        assert i_loop[k].shape == i_vmap[k].shape == (n,), k
        torch.testing.assert_close(i_vmap[k], i_loop[k], rtol=1e-10, atol=1e-12)

    # The loop is the plain mean of single-task meta-gradients (the contract's entry point).
    xs, ys, xq, yq = tasks
    singles = [meta_gradient(name, loss_fn, params, (xs[i], ys[i]), (xq[i], yq[i]), inner, **hp)[0] for i in range(n)]
    mean = {k: sum(s[k] for s in singles) / n for k in params}
    assert rel(g_loop, mean) <= 1e-12
    # Tasks differ, so averaging really mixes different gradients.
    assert rel(singles[0], singles[1]) > 1e-3


@pytest.mark.parametrize("model", ["mlp", "conv4_omniglot"])
def test_loop_and_vmap_agree_with_inner_mini_batches(model):
    """Reptile's mini-batched inner loop (``inner.batch``) gives the same meta-gradient per task and under vmap."""
    params, loss_fn, metric_fn, tasks, inner = sinusoid_batch() if model == "mlp" else omniglot_batch()
    inner = {**inner, "batch": 3}
    g_loop, _ = meta_gradient_batch("reptile", loss_fn, params, tasks, inner, batching="loop", metric_fn=metric_fn)
    g_vmap, _ = meta_gradient_batch("reptile", loss_fn, params, tasks, inner, batching="vmap", metric_fn=metric_fn)
    assert rel(g_vmap, g_loop) <= 1e-10
    g_full, _ = meta_gradient_batch("reptile", loss_fn, params, tasks, {**inner, "batch": None}, batching="loop",
                                    metric_fn=metric_fn)
    assert rel(g_full, g_loop) > 1e-3  # the batches are in effect



def test_batching_rejects_unknown_mode():
    params, loss_fn, _, tasks, inner = sinusoid_batch(2)
    with pytest.raises(ValueError, match=r"batching='map'.*'loop', 'vmap', 'compile'"):
        meta_gradient_batch("maml", loss_fn, params, tasks, inner, batching="map")


@pytest.mark.parametrize("name,hp", [("maml", {}), ("reptile", {}), ("imaml", {"lam": 2.0, "cg_steps": 3})],
                         ids=["maml", "reptile", "imaml"])
def test_compiled_loop_matches_the_eager_loop(name, hp):
    """batching='compile' (torch.compile'd estimator per task): the same float64 meta-gradient
    and diagnostics as the eager loop. (FOMAML shares Reptile's compiled inner loop.)"""
    params, loss_fn, _, tasks, inner = sinusoid_batch(3)
    g_loop, i_loop = meta_gradient_batch(name, loss_fn, params, tasks, inner, batching="loop", **hp)
    g_comp, i_comp = meta_gradient_batch(name, loss_fn, params, tasks, inner, batching="compile", **hp)
    assert rel(g_comp, g_loop) <= 1e-10
    for k in i_loop:
        torch.testing.assert_close(i_comp[k], i_loop[k], rtol=1e-10, atol=1e-12)
    # a second meta-batch reuses the compiled graph and still matches
    shifted = tuple(t.flip(0) for t in tasks)
    assert rel(meta_gradient_batch(name, loss_fn, params, shifted, inner, batching="compile", **hp)[0],
               meta_gradient_batch(name, loss_fn, params, shifted, inner, batching="loop", **hp)[0]) <= 1e-10


def test_compile_refuses_forward_over_reverse_hvps():
    params, loss_fn, _, tasks, inner = sinusoid_batch(2)
    with pytest.raises(ValueError, match=r"batching='compile' cannot run hvp_mode='fwdrev'"):
        meta_gradient_batch("imaml", loss_fn, params, tasks, inner, batching="compile", lam=2.0, hvp_mode="fwdrev")


def test_batch_norm_is_fused_only_when_asked_and_both_forms_are_the_textbook_one(monkeypatch):
    """models.batch_norm(fused=True) takes F.batch_norm's fused kernels; the default is the
    written-out form, which also runs under vmap (F.batch_norm's double backward fails there).
    Both equal the textbook formula. The conv4 loop-vs-vmap test above checks gradients and
    HVPs across the two."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, 3, 5, 5, generator=g, dtype=D) * 3 + 1
    w, b = torch.rand(3, generator=g, dtype=D), torch.randn(3, generator=g, dtype=D)
    mean = x.mean(dim=(1, 3, 4), keepdim=True)
    var = ((x - mean) ** 2).mean(dim=(1, 3, 4), keepdim=True)
    textbook = (x - mean) / torch.sqrt(var + models.BN_EPS) * w.view(1, 1, 3, 1, 1) + b.view(1, 1, 3, 1, 1)
    calls = []
    native = torch.nn.functional.batch_norm
    monkeypatch.setattr(torch.nn.functional, "batch_norm", lambda *a, **k: calls.append(1) or native(*a, **k))
    torch.testing.assert_close(models.batch_norm(x[0], w, b, fused=True), textbook[0], rtol=1e-12, atol=1e-12)
    assert len(calls) == 1
    torch.testing.assert_close(models.batch_norm(x[0], w, b), textbook[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.func.vmap(models.batch_norm, in_dims=(0, None, None))(x, w, b), textbook,
                               rtol=1e-12, atol=1e-12)
    assert len(calls) == 1


@pytest.mark.parametrize("batching", ["loop", "vmap"])
def test_the_batching_mode_alone_chooses_the_code_path(monkeypatch, batching):
    """loop: torch.autograd and the loss's fused batch norm; vmap: torch.func and the written-out
    form (algorithms.CODE_PATHS); no probing of torch's transform stack."""
    from algorithms import CODE_PATHS, linalg

    params, loss_fn, metric_fn, tasks, inner = omniglot_batch(2)
    fused, autograd = [], []
    native = torch.nn.functional.batch_norm
    monkeypatch.setattr(torch.nn.functional, "batch_norm", lambda *a, **k: fused.append(1) or native(*a, **k))
    grad = linalg.gradient
    monkeypatch.setattr(linalg, "gradient", lambda *a, **k: autograd.append(k.get("autograd", False)) or grad(*a, **k))
    for module in ("maml", "fomaml", "inner"):  # (the package's ``maml`` is the function, not the module)
        monkeypatch.setattr(sys.modules[f"algorithms.{module}"], "gradient", linalg.gradient)
    meta_gradient_batch("maml", loss_fn, params, tasks, inner, batching=batching, metric_fn=metric_fn)
    path = CODE_PATHS[batching]
    assert bool(fused) == (path["loss"] == "fused")
    assert set(autograd) == {path["autodiff"] == "torch.autograd"}


@pytest.mark.parametrize("name,hp", ESTIMATORS, ids=[n for n, _ in ESTIMATORS])
def test_query_metric_shares_the_loss_forward(name, hp):
    """models' loss and accuracy share one query forward; the numbers are those of a plain
    metric function that runs its own forward."""
    params, loss_fn, metric_fn, tasks, inner = omniglot_batch(1)
    _, forward = models.build("conv4_omniglot", ways=5, seed=1, dtype=D)
    calls = []

    def counted(p, x):
        calls.append(x.shape[0])
        return forward(p, x)
    shared_loss, shared_metric = models.cross_entropy_loss(counted), models.accuracy_metric(counted)
    g_shared, i_shared = meta_gradient_batch(name, shared_loss, params, tasks, inner, metric_fn=shared_metric, **hp)
    n_shared = calls.count(10)                                        # forwards of the 10 query images
    calls.clear()
    plain = lambda p, x, y: (counted(p, x).argmax(-1) == y).to(x.dtype).mean()  # noqa: E731
    g_plain, i_plain = meta_gradient_batch(name, shared_loss, params, tasks, inner, metric_fn=plain, **hp)
    assert calls.count(10) == n_shared + 1
    assert rel(g_shared, g_plain) == 0.0
    for k in i_plain:
        torch.testing.assert_close(i_shared[k], i_plain[k], rtol=0, atol=0)
