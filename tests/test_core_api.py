"""The public entry point's contract: argument checking with
one clear ValueError naming the argument and the allowed values, the shape of ``grads``
and the keys / types of ``info``, and purity (inputs untouched, outputs detached)."""
from __future__ import annotations

import pytest
import torch

import models
from algorithms import ESTIMATORS, meta_gradient

HP = {"maml": {}, "fomaml": {}, "reptile": {}, "imaml": {"lam": 2.0, "cg_steps": 3}}


@pytest.fixture
def task():
    params, forward = models.build("mlp", seed=0)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(10, 1, generator=g) * 10 - 5
    return params, forward, (x[:5], torch.sin(x[:5])), (x[5:], torch.sin(x[5:]))


def call(task, name="maml", inner=None, **hp):
    params, forward, support, query = task
    return meta_gradient(name, models.mse_loss(forward), params, support, query,
                         inner={"steps": 2, "lr": 0.01} if inner is None else inner, **hp)


def test_estimator_names():
    assert sorted(ESTIMATORS) == ["fomaml", "imaml", "maml", "reptile"]


@pytest.mark.parametrize("name,inner,hp,pattern", [
    ("mamll", None, {}, r"name='mamll'.*allowed.*'fomaml', 'imaml', 'maml', 'reptile'"),
    ("maml", {"steps": -1}, {}, r"inner\.steps=-1.*>= 0"),
    ("maml", {"steps": 2.5}, {}, r"inner\.steps=2\.5.*integer >= 0"),
    ("maml", {"lr": 0.0}, {}, r"inner\.lr=0\.0.*> 0"),
    ("maml", {"optimizer": "rmsprop"}, {}, r"inner\.optimizer='rmsprop'.*allowed.*'sgd', 'momentum', 'adam', 'hf'"),
    ("maml", {"stepz": 3}, {}, r"inner: unknown key.*'stepz'.*allowed.*'steps'"),
    ("maml", {"prox_lam": -1.0}, {}, r"inner\.prox_lam=-1\.0.*>= 0"),
    ("maml", {"momentum": 1.0}, {}, r"inner\.momentum=1\.0.*\[0, 1\)"),
    ("maml", None, {"lam": 2.0}, r"unknown hyperparameter.*'lam'.*allowed"),
    ("reptile", None, {"cg_steps": 5}, r"unknown hyperparameter.*'cg_steps'.*allowed"),
    ("imaml", None, {"lam": 0.0}, r"lam=0\.0.*> 0"),
    ("imaml", None, {"lam": -2.0}, r"lam=-2\.0.*> 0"),
    ("imaml", None, {"lam": float("inf")}, r"lam=inf.*finite"),
    ("imaml", None, {"cg_steps": 0}, r"cg_steps=0.*>= 1"),
    ("imaml", None, {"cg_steps": 2.0}, r"cg_steps=2\.0.*integer >= 1"),
    ("imaml", None, {"cg_damping": -0.1}, r"cg_damping=-0\.1.*>= 0"),
    ("imaml", None, {"cg_damping": float("nan")}, r"cg_damping=nan.*finite number >= 0"),
    ("imaml", None, {"cg_damping": "1"}, r"cg_damping='1'.*number >= 0"),
    ("imaml", None, {"lam_damping": -1.0}, r"lam_damping=-1\.0.*>= 0"),
    ("imaml", None, {"hvp_mode": "fwdfwd"}, r"hvp_mode='fwdfwd'.*allowed.*'fwdrev', 'revrev'"),
    ("imaml", {"steps": 2, "prox_lam": 1.0}, {"lam": 2.0}, r"inner\.prox_lam=1\.0 differs from lam=2\.0"),
    ("imaml", None, {"lr": 0.1}, r"unknown hyperparameter.*'lr'.*allowed.*'cg_steps'"),
    ("maml", {"optimizer": "hf"}, {}, r"optimizer='hf'.*only.*imaml.*allowed for maml.*'sgd', 'momentum', 'adam'"),
    ("fomaml", {"optimizer": "hf"}, {}, r"optimizer='hf'.*only.*imaml"),
    ("reptile", {"optimizer": "hf"}, {}, r"optimizer='hf'.*only.*imaml"),
])
def test_bad_arguments_raise_value_error_naming_them(task, name, inner, hp, pattern):
    with pytest.raises(ValueError, match=pattern) as err:
        call(task, name, inner, **hp)
    assert "\n" not in str(err.value)  # one line


@pytest.mark.parametrize("name", sorted(HP))
def test_grads_and_info_follow_the_contract(task, name):
    params, forward, support, query = task
    before = {k: v.clone() for k, v in params.items()}
    grads, info = call(task, name, **HP[name])
    assert list(grads) == list(params)
    for k in params:
        assert grads[k].shape == params[k].shape and grads[k].dtype == params[k].dtype
        assert not grads[k].requires_grad
        assert torch.equal(params[k], before[k])  # pure: params untouched
    expected = {"query_loss_before", "query_loss_after", "inner_grad_norm"} | ({"cg_residual"} if name == "imaml" else set())
    assert set(info) == expected
    assert all(type(v) is float for v in info.values())
    assert info["query_loss_after"] != info["query_loss_before"]  # it did adapt
    assert 0.0 <= info["inner_grad_norm"]


def test_metric_and_reduced_diagnostics(task):
    params, forward, support, query = task
    _, info = call(task, "imaml", lam=2.0, metric_fn=lambda p, x, y: -((forward(p, x) - y) ** 2).mean(),
                   diagnostics_full=False)
    assert set(info) == {"query_loss_after", "query_metric_after", "cg_residual"}
    assert info["query_metric_after"] == pytest.approx(-info["query_loss_after"], rel=1e-6)


def test_grads_detach_from_params_that_require_grad(task):
    params, forward, support, query = task
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    for name in sorted(HP):
        grads, _ = meta_gradient(name, models.mse_loss(forward), leaves, support, query,
                                 inner={"steps": 2, "lr": 0.01}, **HP[name])
        assert not any(g.requires_grad for g in grads.values())
        assert all(p.grad is None for p in leaves.values())  # nothing accumulated into .grad


def test_inner_accepts_a_config_object_and_lists(task):
    from algorithms import InnerConfig
    a, _ = call(task, "maml", InnerConfig(steps=2, lr=0.01, optimizer="adam", betas=(0.5, 0.9)))
    b, _ = call(task, "maml", {"steps": 2, "lr": 0.01, "optimizer": "adam", "betas": [0.5, 0.9]})
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", sorted(HP))
def test_same_result_under_no_grad(task, name):
    """A trainer may evaluate under torch.no_grad(); the torch.func transforms must still
    differentiate (MAML's unroll, iMAML's HVPs), not silently return something else."""
    a, _ = call(task, name, **HP[name])
    with torch.no_grad():
        b, _ = call(task, name, **HP[name])
    assert all(torch.equal(a[k], b[k]) for k in a)
