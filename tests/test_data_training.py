"""A short meta-training run on real Omniglot must beat chance: the data, the model and an
estimator fit together. :func:`short_meta_train` is reusable (e.g. one run per algorithm)."""
from __future__ import annotations

import pytest
import torch
from conftest import HAVE_OMNIGLOT, REAL_ROOT, REPO_CACHE, data_cfg

import datasets
import models
from algorithms import meta_gradient_batch


def evaluate(ds, params, forward, tasks: int, inner: dict, seed: int = 12345) -> float:
    """Mean query accuracy after adapting to each fixed test task's support set with plain
    SGD (FOMAML's inner loop; its gradient is discarded): algorithm-independent."""
    xs, ys, xq, yq = ds.sample("test", tasks, torch.Generator().manual_seed(seed))
    _, info = meta_gradient_batch("fomaml", models.cross_entropy_loss(forward), params, (xs, ys, xq, yq),
                                  inner=inner, metric_fn=models.accuracy_metric(forward), diagnostics_full=False)
    return float(info["query_metric_after"].mean())


def short_meta_train(ds, algorithm: str, *, steps: int = 100, meta_batch: int = 8, inner: dict | None = None,
                     test_inner: dict | None = None, outer_lr: float = 1e-3, seed: int = 0,
                     eval_tasks: int = 100, **hparams) -> dict[str, float]:
    """``steps`` Adam steps on ``meta_gradient_batch(algorithm, ...)`` over ``meta_batch``
    training tasks; returns test accuracy before and after training (same test tasks)."""
    inner = inner or {"steps": 1, "lr": 0.4}                  # MAML's Omniglot 5-way setting
    test_inner = test_inner or {"steps": 3, "lr": inner["lr"]}
    torch.manual_seed(seed)
    params, forward = models.build(ds.model, ways=ds.ways, seed=seed, image_size=ds.image_size)
    before = evaluate(ds, params, forward, eval_tasks, test_inner)
    params = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    opt = torch.optim.Adam(params.values(), lr=outer_lr)
    loss_fn = models.cross_entropy_loss(forward)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        tasks = ds.sample("train", meta_batch, g)
        grads, _ = meta_gradient_batch(algorithm, loss_fn, {k: v.detach() for k, v in params.items()}, tasks,
                                       inner=inner, diagnostics_full=False, **hparams)
        for k, p in params.items():
            p.grad = grads[k]
        opt.step()
    after = evaluate(ds, {k: v.detach() for k, v in params.items()}, forward, eval_tasks, test_inner)
    return {"acc_before": before, "acc_after": after}


@pytest.mark.data
@pytest.mark.slow  # 15–45 s on 2 shared cores; the per-algorithm runs reuse short_meta_train
@pytest.mark.skipif(not HAVE_OMNIGLOT, reason=f"real Omniglot zips not under {REAL_ROOT}/omniglot")
def test_fomaml_100_steps_on_omniglot_5w1s_beats_chance():
    ds = datasets.build(data_cfg("omniglot", REAL_ROOT, REPO_CACHE, ways=5, shots=1, query_shots=1))
    res = short_meta_train(ds, "fomaml", steps=100, meta_batch=8)
    print(res)
    assert res["acc_after"] > 0.4 and res["acc_after"] > res["acc_before"] + 0.1, res

