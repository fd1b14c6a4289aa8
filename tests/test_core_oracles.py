"""The meta-gradient estimators against exact, independent oracles.

- MAML vs central finite differences of the unrolled objective (every inner optimizer),
  and vs learn2learn's ``l2l.algorithms.MAML`` on the conv4 with batch norm.
- iMAML vs the implicit gradient (I + H/λ)⁻¹ ∇L_query(φ*) from a dense Hessian at a
  Newton-converged φ* (Rajeswaran et al. 2019, Lemma 1).
- MAML unrolled on the proximal objective vs iMAML: two independent code paths agree as K grows.
- ``linalg``: forward-over-reverse vs double-backward HVPs vs the dense Hessian; Lanczos vs eigvalsh.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import grad, hessian

import models
from algorithms import InnerConfig, meta_gradient, solve_inner
from algorithms.linalg import hvp, lanczos_extreme_eigs

# torch's first forward-mode AD use (torch.func.hessian) registers jvp decompositions via
# torch.jit.script, which warns in torch 2.14; harmless here.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")


def flat(d: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([v.reshape(-1) for v in d.values()])


def unflat(v: torch.Tensor, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out, i = {}, 0
    for k, t in like.items():
        out[k] = v[i:i + t.numel()].view_as(t)
        i += t.numel()
    return out


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


# ---------------------------------------------------------------- 1. MAML vs finite differences
OPTIMIZER_CASES = [
    ("sgd", {"lr": 0.1}),
    ("momentum", {"lr": 0.1, "momentum": 0.7}),
    ("nesterov", {"lr": 0.1, "optimizer": "momentum", "momentum": 0.7, "nesterov": True}),
    ("adam", {"lr": 0.05, "betas": (0.8, 0.99)}),
    ("sgd+prox", {"lr": 0.1, "prox_lam": 1.5}),
    ("adam+prox", {"lr": 0.05, "prox_lam": 1.5}),
]


@pytest.mark.parametrize("case,kw", OPTIMIZER_CASES, ids=[c for c, _ in OPTIMIZER_CASES])
def test_maml_equals_central_finite_differences(tanh_task, case, kw):
    t = tanh_task
    inner = {"steps": 3, "optimizer": case.split("+")[0], **kw}
    cfg = InnerConfig.make(inner)
    g_maml, _ = meta_gradient("maml", t.loss_fn, t.params, t.support, t.query, inner=inner)
    g_fo, _ = meta_gradient("fomaml", t.loss_fn, t.params, t.support, t.query, inner=inner)

    theta0 = flat(t.params)

    def unrolled(v: torch.Tensor) -> float:  # L_query(φ_K(θ)), θ given flat
        phi = solve_inner(t.loss_fn, unflat(v, t.params), t.support, cfg, detach=True)
        return t.loss_fn(phi, *t.query).item()

    h = 1e-5  # float64: truncation O(h²) and rounding O(1e-16/h) both ≈ 1e-10
    fd = torch.empty_like(theta0)
    for i in range(theta0.numel()):
        e = torch.zeros_like(theta0)
        e[i] = h
        fd[i] = (unrolled(theta0 + e) - unrolled(theta0 - e)) / (2 * h)

    assert rel(flat(g_maml), fd) <= 1e-6
    # Second-order terms must flow: on this curved loss FOMAML misses a large part of the
    # gradient. If create_graph were lost, MAML would equal FOMAML and fail both checks.
    assert rel(flat(g_fo), fd) > 0.05


def test_maml_with_zero_steps_is_the_plain_query_gradient(tanh_task):
    t = tanh_task
    g, info = meta_gradient("maml", t.loss_fn, t.params, t.support, t.query, inner={"steps": 0})
    exact = grad(t.loss_fn)(t.params, *t.query)
    assert rel(flat(g), flat(exact)) < 1e-14
    assert info["query_loss_after"] == pytest.approx(info["query_loss_before"], rel=1e-15)


# ---------------------------------------------------------------- 2. MAML vs learn2learn
def _l2l_conv4(dtype: torch.dtype, seed: int, bn_eps: float):
    """learn2learn's OmniglotCNN and the same weights as our conv4_omniglot param dict."""
    l2l = pytest.importorskip("learn2learn")
    torch.manual_seed(seed)
    net = l2l.vision.models.OmniglotCNN(output_size=5).to(dtype).train()
    for block in net.base:
        block.normalize.eps = bn_eps
    params = {}
    for i, block in enumerate(net.base):
        for ours, theirs in (("conv", block.conv), ("bn", block.normalize)):
            params[f"{ours}{i}.weight"] = theirs.weight.detach().clone()
            params[f"{ours}{i}.bias"] = theirs.bias.detach().clone()
    params["head.weight"] = net.classifier.weight.detach().clone()
    params["head.bias"] = net.classifier.bias.detach().clone()
    return l2l, net, params


def _l2l_grads(net) -> dict[str, torch.Tensor]:
    out = {}
    for i, block in enumerate(net.base):
        for ours, theirs in (("conv", block.conv), ("bn", block.normalize)):
            out[f"{ours}{i}.weight"], out[f"{ours}{i}.bias"] = theirs.weight.grad, theirs.bias.grad
    out["head.weight"], out["head.bias"] = net.classifier.weight.grad, net.classifier.bias.grad
    return out


def _omniglot_task(seed: int, dtype: torch.dtype):
    """A random 5-way 1-shot task (5 support, 10 query images), drawn in float32 then cast."""
    g = torch.Generator().manual_seed(seed)
    xs, xq = torch.rand(5, 1, 28, 28, generator=g), torch.rand(10, 1, 28, 28, generator=g)
    return xs.to(dtype), torch.arange(5), xq.to(dtype), torch.arange(5).repeat(2)


def _maml_vs_l2l(steps: int, dtype: torch.dtype, bn_eps: float = 1e-3, seed: int = 0, lr: float = 0.1) -> float:
    l2l, net, params = _l2l_conv4(dtype, seed, bn_eps)
    template, forward = models.build("conv4_omniglot", ways=5)
    assert {k: v.shape for k, v in params.items()} == {k: v.shape for k, v in template.items()}
    xs, ys, xq, yq = _omniglot_task(seed, dtype)

    learner = l2l.algorithms.MAML(net, lr=lr, first_order=False).clone()
    for _ in range(steps):
        learner.adapt(F.cross_entropy(learner(xs), ys))
    F.cross_entropy(learner(xq), yq).backward()
    ref = _l2l_grads(net)

    ours, _ = meta_gradient("maml", models.cross_entropy_loss(forward), params, (xs, ys), (xq, yq),
                            inner={"steps": steps, "lr": lr, "optimizer": "sgd"})
    return rel(flat(ours).double(), flat(ref).double())


def _relu_sign_flips(steps: int, seed: int, lr: float = 0.1) -> int:
    """How many ReLU decisions (over every forward pass of the inner loop and the query)
    differ between float32 and float64 arithmetic on the same draw."""
    signs = {}
    for dtype in (torch.float32, torch.float64):
        _, _, params = _l2l_conv4(dtype, seed, 1e-3)
        loss_fn = models.cross_entropy_loss(models.build("conv4_omniglot", ways=5)[1])
        xs, ys, xq, _ = _omniglot_task(seed, dtype)
        out = []
        for k in range(steps + 1):
            phi = solve_inner(loss_fn, params, (xs, ys), InnerConfig.make({"steps": k, "lr": lr}))
            for x in (xs, xq) if k == steps else (xs,):
                for i in range(4):
                    x = F.conv2d(x, phi[f"conv{i}.weight"], phi[f"conv{i}.bias"], stride=2, padding=1)
                    x = models.batch_norm(x, phi[f"bn{i}.weight"], phi[f"bn{i}.bias"])
                    out.append(x > 0)
                    x = F.relu(x)
        signs[dtype] = out
    return sum(int((a != b).sum()) for a, b in zip(signs[torch.float32], signs[torch.float64]))


@pytest.mark.parametrize("steps", [1, 3])
def test_maml_equals_learn2learn_float32(steps):
    # Float32 agreement is limited by rounding, and where a ReLU pre-activation lies within
    # rounding of 0 the float32 gradient of *either* implementation jumps (measured: on
    # about 1 draw in 6 at K=3, one to a few dozen sign flips vs float64 and errors of
    # 1e-3 to 5e-2). Such draws test rounding luck, not MAML, so take the first draw on
    # which float32 resolves every ReLU decision; the float64 test below is the tight one.
    seed = next((s for s in range(8) if _relu_sign_flips(steps, s) == 0), None)
    assert seed is not None, "every draw flips a ReLU in float32"
    assert _maml_vs_l2l(steps, torch.float32, seed=seed) <= 1e-5


@pytest.mark.parametrize("steps", [1, 3])
def test_maml_equals_learn2learn_float64(steps):
    assert _maml_vs_l2l(steps, torch.float64) <= 1e-10


def test_learn2learn_default_bn_eps_breaks_the_match():
    # learn2learn 0.2.0's ConvBlock leaves BatchNorm2d at eps=1e-5 (its eps=1e-3 is
    # commented out); our conv4 uses the TF reference's 1e-3. With l2l's default the
    # gradients differ grossly, so the match above really depends on the BN eps.
    assert _maml_vs_l2l(1, torch.float64, bn_eps=1e-5) > 1e-2


# ---------------------------------------------------------------- 3. iMAML vs dense implicit gradient
LAM = 5.0  # with this λ the proximal inner problem on the tanh task is strongly convex (checked)


def _dense_oracle(t, lam: float = LAM, damping: float = 0.0, lam_damping: float = 0.0):
    """φ* by dense Newton on G, then ((1 + damping)·I + H/(λ + lam_damping))⁻¹ ∇L_query(φ*)
    by a dense solve."""
    theta = flat(t.params)

    def L(v, data):
        return t.loss_fn(unflat(v, t.params), *data)

    def G(v):
        return L(v, t.support) + 0.5 * lam * ((v - theta) ** 2).sum()

    phi = theta.clone()
    for _ in range(8):
        H_G = hessian(G)(phi)
        assert torch.linalg.eigvalsh(H_G)[0] > 1.0  # strongly convex along the path
        phi = phi - torch.linalg.solve(H_G, grad(G)(phi))
    assert grad(G)(phi).norm() <= 1e-10
    H = hessian(lambda v: L(v, t.support))(phi)
    A = (1 + damping) * torch.eye(theta.numel(), dtype=theta.dtype) + H / (lam + lam_damping)
    return torch.linalg.solve(A, grad(lambda v: L(v, t.query))(phi))


HF = {"optimizer": "hf", "steps": 6, "lr": 1.0, "hf_cg_steps": 15}  # converges to ||∇G|| ≈ 1e-15


def test_imaml_equals_dense_implicit_gradient_and_error_shrinks_with_cg(tanh_task):
    t = tanh_task
    exact = _dense_oracle(t)
    errs = []
    for cg in (1, 2, 4, 8, 16, 32):
        g, info = meta_gradient("imaml", t.loss_fn, t.params, t.support, t.query, inner=HF, lam=LAM, cg_steps=cg)
        assert info["inner_grad_norm"] <= 1e-10  # hf converged the strongly convex inner problem
        errs.append(rel(flat(g), exact))
    v = flat(g)
    assert (v @ exact / (v.norm() * exact.norm())).item() >= 1 - 1e-8
    assert errs[-1] <= 1e-10
    # CG's Euclidean error decreases monotonically (Hestenes & Stiefel 1952, §6).
    assert all(b < a for a, b in zip(errs, errs[1:]) if a > 1e-12), errs
    assert errs[0] > 1e-2  # and one step is far off, so the test resolves the CG steps


def test_imaml_with_gradient_descent_inner_matches_the_oracle(tanh_task):
    t = tanh_task
    g, info = meta_gradient("imaml", t.loss_fn, t.params, t.support, t.query,
                            inner={"optimizer": "sgd", "steps": 150, "lr": 0.1}, lam=LAM, cg_steps=40)
    assert info["inner_grad_norm"] <= 1e-10
    assert rel(flat(g), _dense_oracle(t)) <= 1e-9


def test_imaml_cg_damping_solves_the_damped_system(tanh_task):
    t = tanh_task
    g, info = meta_gradient("imaml", t.loss_fn, t.params, t.support, t.query, inner=HF, lam=LAM,
                            cg_steps=40, cg_damping=1.0)
    damped = _dense_oracle(t, damping=1.0)
    assert rel(flat(g), damped) <= 1e-9
    assert rel(damped, _dense_oracle(t)) > 0.1  # damping really changes the answer
    assert info["cg_residual"] <= 1e-9


def test_imaml_official_release_system(tanh_task):
    """cg_damping=1, lam_damping=10: the official release's ((1 + 1)·I + H/(λ + 10)); the inner
    problem keeps its proximal weight λ."""
    t = tanh_task
    g, _ = meta_gradient("imaml", t.loss_fn, t.params, t.support, t.query, inner=HF, lam=LAM,
                         cg_steps=40, cg_damping=1.0, lam_damping=10.0)
    official = _dense_oracle(t, damping=1.0, lam_damping=10.0)
    assert rel(flat(g), official) <= 1e-9
    assert rel(official, _dense_oracle(t, damping=1.0)) > 0.05  # the Hessian weight really changes it


# ---------------------------------------------------------------- 4. MAML on the prox objective → iMAML
def test_maml_on_proximal_objective_converges_to_imaml(tanh_task):
    t = tanh_task
    g_imaml, _ = meta_gradient("imaml", t.loss_fn, t.params, t.support, t.query, inner=HF, lam=LAM, cg_steps=40)
    target = flat(g_imaml)
    errs = []
    for steps in (5, 10, 20, 40, 80):
        g, _ = meta_gradient("maml", t.loss_fn, t.params, t.support, t.query,
                             inner={"optimizer": "sgd", "steps": steps, "lr": 0.1, "prox_lam": LAM})
        errs.append(rel(flat(g), target))
    assert all(b < a for a, b in zip(errs, errs[1:]) if a > 1e-13), errs
    assert errs[0] > 1e-3 and errs[-1] <= 1e-10, errs


# ---------------------------------------------------------------- linalg
def test_hvp_modes_agree_with_the_dense_hessian(tanh_task):
    t = tanh_task
    g = torch.Generator().manual_seed(1)
    v = {k: torch.randn(p.shape, generator=g, dtype=p.dtype) for k, p in t.params.items()}

    def f(p):
        return t.loss_fn(p, *t.support)

    dense = hessian(lambda w: f(unflat(w, t.params)))(flat(t.params)) @ flat(v)
    fwdrev, revrev = flat(hvp(f, t.params, v, "fwdrev")), flat(hvp(f, t.params, v, "revrev"))
    assert rel(fwdrev, dense) <= 1e-12
    assert rel(revrev, dense) <= 1e-12
    with pytest.raises(ValueError, match="fwdrev"):
        hvp(f, t.params, v, "forward")


def test_lanczos_matches_eigvalsh():
    g = torch.Generator().manual_seed(0)
    n = 40
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    spectrum = torch.linspace(-3.0, 7.0, n, dtype=torch.float64)
    A = q @ torch.diag(spectrum) @ q.T
    true = torch.linalg.eigvalsh(A)
    lo, hi = lanczos_extreme_eigs(lambda x: A @ x, n, n, generator=g)
    assert lo == pytest.approx(true[0].item(), abs=1e-9)
    assert hi == pytest.approx(true[-1].item(), abs=1e-9)
    # Fewer steps: Ritz values lie inside the spectrum and already approach its ends.
    lo, hi = lanczos_extreme_eigs(lambda x: A @ x, n, 15, generator=g)
    assert true[0].item() - 1e-9 <= lo < true[0].item() + 0.5
    assert true[-1].item() - 0.5 < hi <= true[-1].item() + 1e-9
