"""The official iMAML release (aravindr93/imaml_dev at 6a2a669) as configuration.

The contract: ``meta_gradient("imaml", ..., inner={..., "prox_mode": "final_step"}, lam=λ,
cg_steps=5, cg_damping=1.0, lam_damping=10.0)`` is the release's per-task meta-gradient. The
oracle below transcribes the release's per-task procedure line by line (float64 here; the
release runs float32): ``examples/omniglot_implicit_maml.py`` (the training loop body),
``implicit_maml/learner_model.py`` (``Learner.learn_on_data``, ``regularization_loss``,
``matrix_evaluator``, ``hessian_vector_product``) and ``implicit_maml/utils.py``
(``cg_solve``), on leaf tensors stepped by ``torch.optim.SGD``.
"""
from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import models
from algorithms import InnerConfig, meta_gradient, meta_gradient_batch, solve_inner
from datasets import omniglot


# ---------------------------------------------------------------- a small functional classifier
def forward(params, x):
    h = torch.tanh(x @ params["w0"].T + params["b0"])
    return h @ params["w1"].T + params["b1"]


def loss_fn(params, x, y):
    return F.cross_entropy(forward(params, x), y)


def make_task(seed: int, scale: float = 1.0, ways: int = 3, shots: int = 2, dim: int = 4, hidden: int = 6):
    """Float64 params of a 4-6-3 tanh classifier and a support / query set; ``scale`` scales
    the inputs (larger: a stiffer support Hessian, so CG needs all its steps)."""
    g = torch.Generator().manual_seed(seed)
    dt = torch.float64
    params = {"w0": torch.randn(hidden, dim, generator=g, dtype=dt), "b0": 0.1 * torch.randn(hidden, generator=g, dtype=dt),
              "w1": torch.randn(ways, hidden, generator=g, dtype=dt) / math.sqrt(hidden),
              "b1": torch.zeros(ways, dtype=dt)}
    centres = 1.5 * torch.randn(ways, dim, generator=g, dtype=dt)

    def draw():
        x = centres.repeat_interleave(shots, 0) + torch.randn(ways * shots, dim, generator=g, dtype=dt)
        return scale * x, torch.arange(ways).repeat_interleave(shots)
    return params, draw(), draw()


# ---------------------------------------------------------------- the release, transcribed
def cg_solve(f_Ax, b, cg_iters=10, residual_tol=1e-10):
    """``implicit_maml/utils.py: cg_solve`` (torch branch, x_init=None, no callback/verbose);
    returns (x, iterations run)."""
    x = torch.zeros(b.shape[0], dtype=b.dtype)  # the release: torch.zeros(b.shape[0]) (float32 default)
    r = b - f_Ax(x)
    p = r.clone()
    i = 0
    for i in range(cg_iters):
        rdotr = r.dot(r)
        Ap = f_Ax(p)
        alpha = rdotr / (p.dot(Ap))
        x = x + alpha * p
        r = r - alpha * Ap
        newrdotr = r.dot(r)
        beta = newrdotr / rdotr
        p = r + beta * p
        if newrdotr < residual_tol:
            break
    return x, i + 1


def release_task_grad(theta, support, query, n_steps, inner_lr, lam, cg_steps=5, cg_damping=1.0,
                      lam_damping=10.0, hessian="hvp"):
    """One task of the release's training loop: flat meta-gradient and CG iterations run.
    ``hessian='hvp'``: ``Learner.hessian_vector_product`` (double backward); ``'dense'``: the
    support-loss Hessian formed by ``torch.autograd.functional.hessian``."""
    names = list(theta)
    model = [theta[k].detach().clone().requires_grad_(True) for k in names]  # fast_learner.set_params(w_k)
    w_k = torch.cat([theta[k].detach().reshape(-1) for k in names]).clone()   # meta_learner.get_params()
    lam = torch.tensor(lam, dtype=torch.float64)
    inner_opt = torch.optim.SGD(model, lr=inner_lr)

    def get_loss(x, y):
        return loss_fn(dict(zip(names, model)), x, y)

    def regularization_loss(w_0, lam):
        regu_loss, offset = 0.0, 0
        for param in model:
            delta = param.view(-1) - w_0[offset:offset + param.nelement()].view(-1)
            regu_loss += 0.5 * lam * torch.sum(delta ** 2)
            offset += param.nelement()
        return regu_loss

    for _ in range(n_steps):  # learn_task(task, num_steps=n_steps): add_regularization=False
        inner_opt.zero_grad()
        tloss = get_loss(*support)
        tloss.backward()
        inner_opt.step()
    inner_opt.zero_grad()      # "pull back for regularization"
    regu_loss = regularization_loss(w_k, lam)
    regu_loss.backward()
    inner_opt.step()

    valid_loss = get_loss(*query)
    valid_grad = torch.autograd.grad(valid_loss, model)
    flat_grad = torch.cat([g.contiguous().view(-1) for g in valid_grad])

    if hessian == "dense":
        phi = torch.cat([p.detach().reshape(-1) for p in model])
        shapes = [p.shape for p in model]

        def flat_support_loss(v):
            parts, i = [], 0
            for s in shapes:
                n = math.prod(s)
                parts.append(v[i:i + n].view(s))
                i += n
            return loss_fn(dict(zip(names, parts)), *support)
        H = torch.autograd.functional.hessian(flat_support_loss, phi)

        def hvp(v):
            return H @ v
    else:
        def hvp(vector):  # hessian_vector_product(task, v): on x_train, y_train at the current params
            tloss = get_loss(*support)
            grad_ft = torch.autograd.grad(tloss, model, create_graph=True)
            flat = torch.cat([g.contiguous().view(-1) for g in grad_ft])
            h = torch.sum(flat * vector)
            return torch.cat([g.contiguous().view(-1) for g in torch.autograd.grad(h, model)])

    def evaluator(v):  # matrix_evaluator(task, lam, regu_coef=cg_damping, lam_damping=10.0)
        return (1.0 + cg_damping) * v + hvp(v) / (lam + lam_damping)
    return cg_solve(evaluator, flat_grad, cg_steps)


def flat(grads):
    return torch.cat([v.reshape(-1) for v in grads.values()])


def ours(theta, support, query, steps, lr, lam, **hp):
    inner = {"steps": steps, "lr": lr, "optimizer": "sgd", "prox_mode": "final_step"}
    g, info = meta_gradient("imaml", loss_fn, theta, support, query, inner=inner, lam=lam, cg_steps=5,
                            cg_damping=1.0, lam_damping=10.0, **hp)
    return flat(g), info


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


# ---------------------------------------------------------------- the contract
# (seed, input scale, inner steps, CG iterations the release runs): with its damped system
# ((1 + 1)·I + H/12) CG usually meets ||r||² < 1e-10 within 5 iterations on a model this small.
CASES = [(2, 6.0, 16, 5), (3, 3.0, 5, 5), (0, 1.0, 16, 3), (1, 15.0, 5, 4)]


@pytest.mark.parametrize("seed,scale,steps,iters", CASES)
def test_release_meta_gradient_matches_a_literal_transcription(seed, scale, steps, iters):
    theta, support, query = make_task(seed, scale=scale)
    ref, ran = release_task_grad(theta, support, query, n_steps=steps, inner_lr=0.1, lam=2.0)
    dense, _ = release_task_grad(theta, support, query, n_steps=steps, inner_lr=0.1, lam=2.0, hessian="dense")
    assert ran == iters
    g, _ = ours(theta, support, query, steps, 0.1, 2.0)
    assert rel(g, ref) < 1e-10 and rel(g, dense) < 1e-10


def test_release_early_stopping_cg_is_reproduced():
    """A task whose release CG stops after 3 of 5 iterations gives the same gradient; running
    all 5 (cg_tol=0) gives a measurably different one."""
    theta, support, query = make_task(0, scale=1.0)
    ref, ran = release_task_grad(theta, support, query, n_steps=16, inner_lr=0.1, lam=2.0)
    assert ran == 3
    g, _ = ours(theta, support, query, 16, 0.1, 2.0)
    assert rel(g, ref) < 1e-10
    g_tol, _ = ours(theta, support, query, 16, 0.1, 2.0, cg_tol=1e-10)
    assert torch.equal(g, g_tol)  # final_step's default tolerance is the release's
    g_full, _ = ours(theta, support, query, 16, 0.1, 2.0, cg_tol=0.0)
    assert rel(g_full, ref) > 1e-7


def test_release_contract_other_lambda_and_batched():
    """λ = 0.5, K = 7, and a meta-batch under vmap (masked CG stop) equals the loop and the release."""
    tasks = [make_task(s, scale=sc) for s, sc in ((2, 6.0), (0, 1.0), (3, 3.0))]
    theta = tasks[0][0]
    runs = [release_task_grad(theta, s, q, n_steps=7, inner_lr=0.05, lam=0.5) for _, s, q in tasks]
    refs = [g for g, _ in runs]
    assert [n for _, n in runs] == [5, 4, 5]  # one task of the batch stops early
    stack = tuple(torch.stack([t[i][j] for t in tasks]) for i, j in ((1, 0), (1, 1), (2, 0), (2, 1)))
    inner = {"steps": 7, "lr": 0.05, "optimizer": "sgd", "prox_mode": "final_step"}
    hp = dict(lam=0.5, cg_steps=5, cg_damping=1.0, lam_damping=10.0)
    for batching in ("loop", "vmap"):
        g, _ = meta_gradient_batch("imaml", loss_fn, theta, stack, inner, batching=batching, **hp)
        assert rel(flat(g), torch.stack(refs).mean(0)) < 1e-10, batching


def test_paper_mode_keeps_every_cg_step(tanh_task):
    """every_step's default tolerance is 0: all cg_steps iterations, bit-identical to cg_tol=0."""
    t = tanh_task
    kw = dict(inner={"steps": 5, "lr": 0.1}, lam=2.0, cg_steps=5)
    g0, _ = meta_gradient("imaml", t.loss_fn, t.params, t.support, t.query, **kw)
    g1, _ = meta_gradient("imaml", t.loss_fn, t.params, t.support, t.query, cg_tol=0.0, **kw)
    assert all(torch.equal(g0[k], g1[k]) for k in g0)


# ---------------------------------------------------------------- the inner prox_mode
def test_final_step_is_plain_steps_then_one_prox_step():
    theta, support, _ = make_task(0)
    plain = solve_inner(loss_fn, theta, support, InnerConfig.make({"steps": 4, "lr": 0.1}))
    final = solve_inner(loss_fn, theta, support,
                        InnerConfig.make({"steps": 4, "lr": 0.1, "prox_mode": "final_step", "prox_lam": 2.0}))
    for k in theta:
        torch.testing.assert_close(final[k], plain[k] - 0.1 * 2.0 * (plain[k] - theta[k]), rtol=0, atol=1e-15)
    every = solve_inner(loss_fn, theta, support, InnerConfig.make({"steps": 4, "lr": 0.1, "prox_lam": 2.0}))
    assert not torch.allclose(every["w0"], final["w0"])
    no_prox = solve_inner(loss_fn, theta, support, InnerConfig.make({"steps": 4, "lr": 0.1, "prox_mode": "final_step"}))
    assert all(torch.equal(no_prox[k], plain[k]) for k in theta)  # λ = 0 (the release's test time): plain steps


@pytest.mark.parametrize("inner,hp,pattern", [
    ({"prox_mode": "last"}, {}, r"inner\.prox_mode='last' is unknown; allowed: \['every_step', 'final_step', 'none'\]"),
    ({"prox_mode": "final_step", "optimizer": "hf"}, {}, r"prox_mode='final_step' needs a gradient optimizer"),
    ({}, {"cg_tol": -1.0}, r"cg_tol=-1\.0 must be a finite number >= 0"),
    ({}, {"cg_tol": float("nan")}, r"cg_tol=nan must be a finite number >= 0"),
    ({}, {"cg_tol": True}, r"cg_tol=True must be"),
])
def test_bad_release_switches_raise_one_line(inner, hp, pattern):
    theta, support, query = make_task(0)
    with pytest.raises(ValueError, match=pattern) as err:
        meta_gradient("imaml", loss_fn, theta, support, query, inner={"steps": 1, **inner}, lam=2.0, **hp)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------- network and initialisation
def release_net(ways: int) -> torch.nn.Sequential:
    """``learner_model.make_conv_network(in_channels=1, out_dim=ways)`` (Omniglot branch)."""
    nn = torch.nn
    m = nn.Sequential()
    c = 1
    for i in range(1, 5):
        m.add_module(f"conv{i}", nn.Conv2d(c, 64, kernel_size=3, stride=2, padding=1))
        m.add_module(f"BN{i}", nn.BatchNorm2d(64, track_running_stats=False))
        m.add_module(f"relu{i}", nn.ReLU())
        if i == 2:
            m.add_module("pad2", nn.ZeroPad2d((0, 1, 0, 1)))
        c = 64
    m.add_module("flatten", nn.Flatten())
    m.add_module("fc1", nn.Linear(2 * 2 * 64, ways))
    return m


def test_release_network_matches_torch_nn_and_its_pad_changes_nothing_at_28():
    params, fwd = models.build("conv4_omniglot", ways=5, seed=0, dtype=torch.float64, head="flatten",
                               init="imaml_release", arch="imaml_release")
    assert params["head.weight"].shape == (5, 256)
    net = release_net(5).double()
    with torch.no_grad():
        for i in range(4):
            getattr(net, f"conv{i + 1}").weight.copy_(params[f"conv{i}.weight"])
            getattr(net, f"conv{i + 1}").bias.copy_(params[f"conv{i}.bias"])
            getattr(net, f"BN{i + 1}").weight.copy_(params[f"bn{i}.weight"])
            getattr(net, f"BN{i + 1}").bias.copy_(params[f"bn{i}.bias"])
        net.fc1.weight.copy_(params["head.weight"])
        net.fc1.bias.copy_(params["head.bias"])
    x = torch.rand(10, 1, 28, 28, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(fwd(params, x), net(x), rtol=1e-12, atol=1e-12)
    no_pad = models.conv4(params, x, head="flatten", bn_eps=models.RELEASE_BN_EPS, pad_block2=False)
    torch.testing.assert_close(fwd(params, x), no_pad, rtol=0, atol=1e-13)
    _, maml_arch = models.build("conv4_omniglot", ways=5, head="flatten")  # BN eps 1e-3: other numbers
    assert not torch.allclose(maml_arch(params, x), fwd(params, x), rtol=1e-6, atol=1e-6)


def test_release_init():
    p, _ = models.build("conv4_omniglot", ways=5, seed=3, head="flatten", init="imaml_release")
    for i in range(4):
        fan_in, fan_out = (1 if i == 0 else 64) * 9, 64 * 9
        bound = 1.73 * math.sqrt(6 / (fan_in + fan_out))
        w = p[f"conv{i}.weight"]
        assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
        assert 0 <= p[f"conv{i}.bias"].min() and p[f"conv{i}.bias"].max() <= 0.05 and p[f"conv{i}.bias"].std() > 0
        assert torch.equal(p[f"bn{i}.weight"], torch.ones(64)) and torch.equal(p[f"bn{i}.bias"], torch.zeros(64))
    assert p["head.weight"].abs().max() <= 1.73 * math.sqrt(6 / (256 + 5))
    assert 0 <= p["head.bias"].min() and p["head.bias"].max() <= 0.05
    default, _ = models.build("conv4_omniglot", ways=5, seed=3, head="flatten")
    assert torch.equal(default["conv0.bias"], torch.zeros(64)) and not torch.equal(default["bn0.weight"], torch.ones(64))


@pytest.mark.parametrize("kw,pattern", [
    ({"init": "kaiming"}, r"model\.init='kaiming'; allowed: \['maml', 'imaml_release', 'hypertorch'\]"),
    ({"arch": "resnet"}, r"model\.arch='resnet'; allowed: \['maml', 'imaml_release', 'hypertorch'\]"),
])
def test_bad_model_switches(kw, pattern):
    with pytest.raises(ValueError, match=pattern):
        models.build("conv4_omniglot", ways=5, **kw)


def test_release_arch_is_omniglot_only():
    with pytest.raises(ValueError, match=r"arch='imaml_release' is an Omniglot conv4"):
        models.build("conv4_miniimagenet", ways=5, arch="imaml_release", image_size=84)


# ---------------------------------------------------------------- the class splits (no data needed)
KEYS = sorted(f"images_{'background' if i < 964 else 'evaluation'}/alphabet{i // 40:02d}/character{i % 40 + 1:02d}"
              for i in range(omniglot.N_CLASSES))


def release_chars(seed: int, train: bool) -> list[str]:
    """``OmniglotTask.__init__`` on the listing ``KEYS``: ``random.seed(seed)``,
    ``random.shuffle(list(range(1623)))``, ``np.array(chars)[perm]``, first 1,200 or the rest."""
    state = random.getstate()
    try:
        random.seed(seed)
        perm = list(range(1623))
        random.shuffle(perm)
    finally:
        random.setstate(state)
    chars = np.array(KEYS)[perm]
    return list(chars[:1200] if train else chars[1200:])


def test_release_split_is_the_releases_and_has_no_validation():
    idx = omniglot.split_classes(KEYS, 123, {"train": 1200, "val": 0, "test": 423})
    assert [KEYS[i] for i in idx["train"]] == release_chars(123, True)
    assert [KEYS[i] for i in idx["test"]] == release_chars(123, False)
    assert idx["val"] == []


def test_release_leaky_test_split_overlaps_training_in_310_characters():
    idx = omniglot.split_classes(KEYS, 123, {"train": 1200, "val": 0, "test": 423}, test_split="release_leaky")
    assert [KEYS[i] for i in idx["test"]] == release_chars(12345, False)
    assert len(idx["test"]) == 423
    assert len(set(idx["test"]) & set(idx["train"])) == 310
