"""The inner problem shared by every estimator, and the functional inner optimizers.

Inner objective (iMAML, Rajeswaran et al. 2019, Eq. 4; MAML is the special case λ = 0):

    G(φ) = L_support(φ) + (prox_lam / 2) · ||φ − θ||²

run for ``steps`` iterations of ``sgd``, ``momentum`` (heavy ball, optional Nesterov),
``adam`` or — without a differentiable path — ``hf`` (Hessian-free Newton-CG with a
backtracking line search, the paper's iMAML-HF). The first three are pure tensor
arithmetic, so MAML differentiates through them (the gradient of the unrolled loop)
and they run under ``vmap``. Their update rules are exactly ``torch.optim``'s SGD /
SGD(momentum, nesterov) / Adam, which the tests check step by step.

``prox_mode`` says where the proximal term acts. ``every_step`` (the paper: the inner
optimizer runs on G, Eq. 4) puts it in every step's objective. ``final_step`` is the official
iMAML release (aravindr93/imaml_dev, ``examples/omniglot_implicit_maml.py``:
``learn_task(..., add_regularization=False)`` and then one ``inner_opt.step()`` on
``regularization_loss``): ``steps`` iterations of the optimizer on L_support alone, then
one SGD step of size ``lr`` on (λ/2)||φ − θ||² alone, φ ← φ − lr·λ·(φ − θ). ``none`` drops the
proximal term from the inner loop altogether (plain steps on L_support, in training and at test);
λ then appears only in iMAML's linear system. This is what prolearner/hypertorch's iMAML example
runs: its proximal anchor is a generator consumed by the first step.
"""
from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch.func import grad, vjp

import checks

from .linalg import Params, gradient, tree_add, tree_dot, tree_norm, truncated_newton_direction

LossFn = Callable[[Params, torch.Tensor, torch.Tensor], torch.Tensor]
OPTIMIZERS = ("sgd", "momentum", "adam", "hf")
GRADIENT_OPTIMIZERS = OPTIMIZERS[:3]  # every estimator can differentiate through these; hf is iMAML's solver only
# Where the proximal term λ/2||φ − θ||² acts (InnerConfig.prox_mode), and whose inner problem that is.
PROX_MODES = {"every_step": "the paper", "final_step": "the official iMAML release", "none": "hypertorch's example"}


@dataclass(frozen=True)
class InnerConfig:
    """How the inner problem is solved. ``prox_lam`` is λ of the inner objective
    G(φ) = L(φ) + (λ/2)||φ − θ||² (Rajeswaran et al. 2019, Eq. 3; 0: the plain support loss); iMAML
    sets it from its hyperparameter ``lam``. For ``hf``, ``lr`` is the first step
    tried by the backtracking line search (1.0 is a pure Newton step). ``prox_mode``:
    ``every_step`` (the paper) or ``final_step`` (the official release; see the module docstring)."""

    steps: int = 5
    lr: float = 0.01
    optimizer: str = "sgd"
    prox_lam: float = 0.0
    prox_mode: str = "every_step"
    batch: int | None = None
    momentum: float = 0.9      # momentum
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)  # adam
    eps: float = 1e-8
    hf_cg_steps: int = 5       # hf: CG steps per Newton direction, backtracking line-search steps
    hf_ls_steps: int = 10

    @classmethod
    def make(cls, inner: InnerConfig | dict[str, Any] | None) -> InnerConfig:
        """``inner`` as an InnerConfig, its fields checked (:meth:`validate`) when made from a dict or
        None; an InnerConfig passes as it is (checked where it was made: the estimators take one per task)."""
        if isinstance(inner, InnerConfig):
            return inner
        if inner is None:
            cfg = cls()
        else:
            names = {f.name for f in fields(cls)}
            unknown = sorted(set(inner) - names)
            if unknown:
                raise ValueError(f"inner: unknown key(s) {unknown}; allowed: {sorted(names)}")
            d = dict(inner)
            if "betas" in d:
                d["betas"] = tuple(d["betas"])
            cfg = cls(**d)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        checks.choice("inner.optimizer", self.optimizer, OPTIMIZERS, unknown=True)
        checks.integer("inner.steps", self.steps)
        checks.number("inner.lr", self.lr)
        checks.number("inner.prox_lam", self.prox_lam, strict=False)
        checks.number("inner.momentum", self.momentum, strict=False, hi=1)
        for beta in self.betas:
            checks.number("inner.betas", beta, strict=False, hi=1, note=f" (each of {self.betas!r})")
        checks.choice("inner.prox_mode", self.prox_mode, PROX_MODES, unknown=True)
        if self.prox_mode != "every_step" and self.optimizer == "hf":
            raise ValueError(f"inner.prox_mode={self.prox_mode!r} needs a gradient optimizer (sgd, momentum, adam), "
                             "not optimizer='hf' (the release has no Hessian-free solver)")
        checks.integer("inner.hf_cg_steps", self.hf_cg_steps, 1)
        checks.integer("inner.hf_ls_steps", self.hf_ls_steps)
        if self.batch is not None:
            checks.integer("inner.batch", self.batch, 1, " (or None: the whole support set)")
            if self.optimizer == "hf":
                raise ValueError("inner.batch needs a gradient optimizer (sgd, momentum, adam), not optimizer='hf'")


def inner_objective(loss_fn: LossFn, phi: Params, theta: Params, x: torch.Tensor, y: torch.Tensor,
                    prox_lam: float) -> torch.Tensor:
    """G(φ) = L(φ; x, y) + (prox_lam/2)·||φ − θ||²."""
    loss = loss_fn(phi, x, y)
    if prox_lam:
        loss = loss + 0.5 * prox_lam * sum(((phi[k] - theta[k]) ** 2).sum() for k in phi)
    return loss


def _init_state(phi: Params, cfg: InnerConfig) -> dict[str, Params]:
    if cfg.optimizer == "momentum":
        return {"buf": {k: torch.zeros_like(v) for k, v in phi.items()}}
    if cfg.optimizer == "adam":
        z = {k: torch.zeros_like(v) for k, v in phi.items()}
        return {"m": z, "v": dict(z)}
    return {}


InnerState = dict[str, Any]  # {"t": steps taken so far, plus the optimizer's buffers: "m", "v" (adam), "buf" (momentum)}


def fresh_inner_state(params: Params, cfg: InnerConfig) -> InnerState:
    """The inner optimizer's state before its first step: zero buffers and step count 0 (what every
    task starts from unless a carried state is passed to :func:`solve_inner_carried`)."""
    if cfg.optimizer == "hf":
        raise ValueError("inner.optimizer='hf' has no state to carry across tasks")
    return {"t": 0, **_init_state({k: v.detach() for k, v in params.items()}, cfg)}


def _step(phi: Params, g: Params, state: dict[str, Params], cfg: InnerConfig, t: int):
    """One update, matching torch.optim (t is 1-based)."""
    if cfg.optimizer == "sgd":
        return {k: phi[k] - cfg.lr * g[k] for k in phi}, state
    if cfg.optimizer == "momentum":
        # torch.optim.SGD: the first step's buffer is the gradient itself.
        buf = {k: g[k] if t == 1 else cfg.momentum * state["buf"][k] + g[k] for k in phi}
        d = {k: g[k] + cfg.momentum * buf[k] for k in phi} if cfg.nesterov else buf
        return {k: phi[k] - cfg.lr * d[k] for k in phi}, {"buf": buf}
    if cfg.optimizer == "adam":
        b1, b2 = cfg.betas
        m = {k: b1 * state["m"][k] + (1 - b1) * g[k] for k in phi}
        v = {k: b2 * state["v"][k] + (1 - b2) * g[k] * g[k] for k in phi}
        bc1, bc2 = 1 - b1 ** t, 1 - b2 ** t
        # The 1e-30 keeps d sqrt(v)/dv finite where a gradient is exactly zero (dead ReLU),
        # so MAML's second-order path gets 0 rather than 0·inf = nan; it changes no iterate
        # beyond rounding (sqrt(1e-30) = 1e-15 ≪ eps).
        new = {k: phi[k] - (cfg.lr / bc1) * m[k] / ((v[k] + 1e-30).sqrt() / math.sqrt(bc2) + cfg.eps) for k in phi}
        return new, {"m": m, "v": v}
    raise ValueError(f"optimizer {cfg.optimizer!r} has no differentiable step")


def solve_inner(loss_fn: LossFn, theta: Params, support: tuple[torch.Tensor, torch.Tensor],
                cfg: InnerConfig, detach: bool = True, autograd: bool = False, trace: list | None = None) -> Params:
    """Run the inner optimizer from φ₀ = θ and a fresh optimizer state, and return φ_K
    (``prox_mode='final_step'``: the optimizer on L_support alone, then φ_K ← φ_K − lr·λ·(φ_K − θ)).

    ``detach=True`` (FOMAML, Reptile, iMAML): θ is detached and no graph is kept across
    steps, so memory is flat in K. ``detach=False`` (MAML): every step stays on the graph
    of the enclosing gradient so the meta-gradient is exact through the unroll.
    ``autograd``: see :func:`linalg.gradient`. ``trace`` (a list, outside ``torch.func``
    transforms only): each step appends its loss, gradient norm and ‖φ‖ (``trainer.anatomy``).
    """
    if cfg.optimizer == "hf":
        if not detach:
            raise ValueError("inner.optimizer='hf' is not differentiable: use it with imaml only")
        theta = {k: v.detach() for k, v in theta.items()}
        return _solve_hf(loss_fn, theta, support[0], support[1], cfg, cfg.prox_lam, trace)
    return _gradient_steps(loss_fn, theta, support, cfg, None, detach, autograd, trace)[0]


def solve_inner_carried(loss_fn: LossFn, theta: Params, support: tuple[torch.Tensor, torch.Tensor],
                        cfg: InnerConfig, state: InnerState, autograd: bool = False,
                        trace: list | None = None) -> tuple[Params, InnerState]:
    """Run the inner optimizer from φ₀ = θ but from ``state`` — the optimizer state the previous
    task left — and return (φ_K, the state after these K steps). Adam's moments and its step count
    (hence its bias correction) continue across tasks: what Reptile's reference code does, whose
    ``train_step`` restores only the trainable variables between tasks (Nichol et al. 2018,
    openai/supervised-reptile ``reptile.py``). First order only (θ is detached)."""
    return _gradient_steps(loss_fn, theta, support, cfg, state, True, autograd, trace)


def _traced(trace: list | None, **values) -> None:
    """Append one stage's values (floats) to ``trace`` when tracing (``trainer.anatomy``)."""
    if trace is not None:
        trace.append({k: float(v) if isinstance(v, torch.Tensor) else v for k, v in values.items()})


def _gradient_steps(loss_fn: LossFn, theta: Params, support, cfg: InnerConfig, state: InnerState | None,
                    detach: bool, autograd: bool, trace: list | None = None) -> tuple[Params, InnerState]:
    """``cfg.steps`` steps of a gradient optimizer (sgd / momentum / adam) from θ and ``state``
    (None: fresh); returns φ_K and the state after them."""
    lam = cfg.prox_lam
    x, y = support
    if detach:
        theta = {k: v.detach() for k, v in theta.items()}
    if cfg.optimizer == "hf":
        raise ValueError("inner.optimizer='hf' has no state to carry across tasks")
    phi = dict(theta)
    final = cfg.prox_mode == "final_step"
    plain = cfg.prox_mode != "every_step"  # the optimizer runs on L_support alone
    batches = _batches(x.shape[0], cfg.batch, cfg.steps)

    t0 = 0 if state is None else state["t"]
    buffers = _init_state(phi, cfg) if state is None else {k: v for k, v in state.items() if k != "t"}
    for t in range(1, cfg.steps + 1):
        xb, yb = (x, y) if batches is None else (x[batches[t - 1]], y[batches[t - 1]])

        def G(p):
            return inner_objective(loss_fn, p, theta, xb, yb, 0.0 if plain else lam)

        g = gradient(G, phi, create_graph=not detach, autograd=autograd)
        if detach:
            g = {k: v.detach() for k, v in g.items()}
        if trace is not None:
            with torch.no_grad():
                _traced(trace, stage="inner", step=t, loss=G({k: v.detach() for k, v in phi.items()}),
                        grad_norm=tree_norm(g).detach(), phi_norm=tree_norm(phi).detach())
        phi, buffers = _step(phi, g, buffers, cfg, t0 + t)
    if final and lam:
        # The release's pull-back: one torch.optim.SGD step on 0.5·λ·||φ − θ||², whose gradient is λ·(φ − θ).
        phi = {k: phi[k] - cfg.lr * (lam * (phi[k] - theta[k])) for k in phi}
    return phi, {"t": t0 + cfg.steps, **buffers}


def _batches(n: int, batch: int | None, steps: int) -> list[torch.Tensor] | None:
    """Row indices of each inner step's mini-batch, or None for the whole support set.

    Reptile's reference code (Nichol et al. 2018, ``reptile.py _mini_batches``) takes each
    inner step on ``batch`` samples drawn without replacement from a shuffled support set,
    reshuffling when it runs out. Here the shuffle is one fixed permutation of the n rows
    (``random.Random(n)``), cut into consecutive batches that wrap around: no random draw in
    the inner loop, so the same tasks give the same iterates under the per-task loop, ``vmap``
    and ``torch.compile``. The sampler already puts freshly drawn images, in a fresh class
    order, in every row of every task, so what repeats across tasks is only which row
    positions share a batch. ``batch >= n`` takes the whole support set in every step."""
    if batch is None or batch >= n:
        return None
    perm = list(range(n))
    random.Random(n).shuffle(perm)
    flat = [perm[i % n] for i in range(steps * batch)]
    return [torch.tensor(flat[t * batch:(t + 1) * batch]) for t in range(steps)]


def _solve_hf(loss_fn: LossFn, theta: Params, x, y, cfg: InnerConfig, lam: float, trace: list | None = None) -> Params:
    """Hessian-free inner solver (iMAML-HF, Rajeswaran et al. 2019, §4 and Table 2):
    each step takes a truncated-Newton direction from ``hf_cg_steps`` CG iterations on
    ∇²G, then backtracks (Armijo, c = 1e-4, halving) from step ``lr``.

    Free of data-dependent Python control flow, so it runs under ``vmap`` and
    ``torch.compile``: ∇G is linearised once per step (its pullback gives every
    Hessian-vector product of that step's CG), the CG runs its fixed number of iterations
    with a stop mask (``truncated_newton_direction``), and the line search evaluates its
    whole ladder of step sizes lr·2⁻ʲ, j < ``hf_ls_steps``, and takes the first that satisfies
    Armijo (lr·2^-hf_ls_steps when none does) — the step a sequential backtracking search
    takes. (The ladder is a loop of forward passes rather than a ``vmap`` over step sizes:
    under the trainer's ``vmap`` over tasks that would nest, and ``F.mse_loss`` fails under
    nested ``vmap`` in torch 2.14.)
    """
    def G(p):
        value = inner_objective(loss_fn, p, theta, x, y, lam)
        return value, value

    def at(p):
        return G(p)[0]

    ladder = [cfg.lr * 0.5 ** j for j in range(cfg.hf_ls_steps)]
    phi = dict(theta)
    for t in range(1, cfg.steps + 1):
        g, pullback, f0 = vjp(grad(G, has_aux=True), phi, has_aux=True)
        g, f0 = {k: v.detach() for k, v in g.items()}, f0.detach()
        if trace is not None:
            _traced(trace, stage="inner", step=t, loss=f0, grad_norm=tree_norm(g), phi_norm=tree_norm(phi))
        cg_trace = None if trace is None else []
        d = truncated_newton_direction(lambda v: pullback(v)[0], g, cfg.hf_cg_steps, trace=cg_trace)
        for e in cg_trace or []:
            _traced(trace, stage="inner_cg", step=t, **{k: v for k, v in e.items() if k != "stage"})
        d = {k: v.detach() for k, v in d.items()}
        slope = tree_dot(g, d)
        ascent = slope >= 0  # not a descent direction (rounding): fall back to steepest descent
        d = {k: torch.where(ascent, -g[k], d[k]) for k in d}
        slope = torch.where(ascent, -tree_dot(g, g), slope)
        step = torch.full_like(f0, cfg.lr * 0.5 ** cfg.hf_ls_steps)
        if ladder:
            steps = torch.tensor(ladder, dtype=f0.dtype, device=f0.device)
            f = torch.stack([at(tree_add(phi, d, s)) for s in steps]).detach()
            # Armijo in float64, as a search on Python floats compares
            s64 = torch.tensor(ladder, dtype=torch.float64, device=f0.device)
            ok = f.double() <= f0.double() + 1e-4 * s64 * slope.double()
            first = ok & (ok.cumsum(0) == 1)
            step = torch.where(ok.any(), (steps * first).sum(), step)
        phi = {k: v.detach() for k, v in tree_add(phi, d, step).items()}
        if trace is not None:
            trace[-1 - len(cg_trace)]["step_size"] = float(step)
    return phi


def inner_grad_norm(loss_fn: LossFn, phi: Params, theta: Params, support, lam: float,
                    autograd: bool = False) -> torch.Tensor:
    """||∇G(φ)||: how well the inner problem was solved (iMAML's δ)."""
    x, y = support
    theta = {k: v.detach() for k, v in theta.items()}
    g = gradient(lambda p: inner_objective(loss_fn, p, theta, x, y, lam), {k: v.detach() for k, v in phi.items()},
                 autograd=autograd)
    return tree_norm(g).detach()
