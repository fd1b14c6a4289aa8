"""Meta-gradient estimators behind one entry point (the suite's contract).

    grads, info = meta_gradient(name, loss_fn, params, support, query, inner=..., **hparams)

``loss_fn(params, x, y) -> scalar``; ``params: dict[str, Tensor]``; ``support`` and
``query`` are ``(x, y)``; ``inner`` is an :class:`InnerConfig` or a dict of its fields
(steps / lr / optimizer / prox_lam / ...). ``grads`` has the keys and shapes of
``params``; ``info`` holds floats: ``query_loss_before``, ``query_loss_after``,
``inner_grad_norm`` (||∇G(φ_K)||) and, for iMAML, ``cg_residual``.

Estimators (one file each): ``maml`` (second order, exact through the unroll),
``fomaml``, ``reptile`` (pseudo-gradient θ − φ_K) and ``imaml`` (implicit gradient by CG;
hparams ``lam``, ``cg_steps``, ``cg_damping``, ``lam_damping``, ``cg_tol``; inner optimizer
sgd/momentum/adam or ``hf``). The inner config's ``prox_mode`` selects the paper's inner
problem (``every_step``, default) or the official release's (``final_step``).
:func:`meta_gradient_batch` runs a stacked meta-batch by a per-task loop or by
``torch.func.vmap`` and averages; ``batching='compile'`` loops over a ``torch.compile``d
estimator (TorchInductor fuses each task's graph; compiling takes seconds to minutes once
per process and shape, then ~1.5× the eager speed on a 2-core CPU — ``make bench``). In
float64 compiled and eager agree to ~1e-15 for every estimator (tests); in float32 they can
differ by several per cent where the meta-gradient itself is ill-conditioned (Omniglot, α = 0.4,
K ≥ 5) — as much as eager ``loop`` and ``vmap`` differ from each other there (BENCHMARKS.md).
iMAML's ``hvp_mode='fwdrev'`` does not compile (torch 2.14) and is refused.
"""
from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import torch
from torch.func import vmap

from .fomaml import fomaml
from .imaml import imaml, resolve_cg_tol
from .inner import OPTIMIZERS, PROX_MODES, InnerConfig, inner_objective, solve_inner
from .maml import maml
from .reptile import reptile

ESTIMATORS: dict[str, Callable] = {"maml": maml, "fomaml": fomaml, "reptile": reptile, "imaml": imaml}
BATCHING = ("loop", "vmap", "compile")
_COMPILED: dict[str, Callable] = {}


def _compiled(name: str) -> Callable:
    """One ``torch.compile`` wrapper per estimator, kept for the process (its graphs are cached
    per input shapes and guards, so every meta-iteration after the first reuses them)."""
    if name not in _COMPILED:
        _COMPILED[name] = torch.compile(ESTIMATORS[name], dynamic=False)
    return _COMPILED[name]

__all__ = ["ESTIMATORS", "OPTIMIZERS", "PROX_MODES", "InnerConfig", "check_batching", "inner_objective",
           "meta_gradient", "meta_gradient_batch", "resolve_cg_tol", "solve_inner", "validate"]


def check_batching(batching: str, hparams: dict[str, Any]) -> None:
    """Refuse an unknown ``batching`` and the one combination torch.compile cannot run."""
    if batching not in BATCHING:
        raise ValueError(f"batching={batching!r} is unknown; allowed: {list(BATCHING)}")
    if batching == "compile" and hparams.get("hvp_mode") == "fwdrev":
        raise ValueError("batching='compile' cannot run hvp_mode='fwdrev' (torch.compile fails on forward-over-"
                         "reverse, torch 2.14); use hvp_mode='revrev' (the default) or batching loop/vmap")


def validate(name: str, inner: InnerConfig | dict | None, hparams: dict[str, Any]) -> InnerConfig:
    """Check the estimator name, the inner config and the hparams; raise ValueError naming the culprit."""
    if name not in ESTIMATORS:
        raise ValueError(f"algorithm name={name!r} is unknown; allowed: {sorted(ESTIMATORS)}")
    cfg = InnerConfig.make(inner)
    allowed = set(inspect.signature(ESTIMATORS[name]).parameters) - {"loss_fn", "params", "support", "query", "inner"}
    unknown = sorted(set(hparams) - allowed)
    if unknown:
        own = sorted(allowed - {"metric_fn", "diagnostics_full"})  # those two are every estimator's options
        raise ValueError(f"{name}: unknown hyperparameter(s) {unknown}; allowed: {own or 'none'} "
                         "(and metric_fn, diagnostics_full)")
    if name == "imaml":
        lam = hparams.get("lam", 2.0)
        if not (isinstance(lam, (int, float)) and math.isfinite(lam) and lam > 0):
            raise ValueError(f"imaml: lam={lam!r} must be a finite number > 0")
        cg = hparams.get("cg_steps", 5)
        if isinstance(cg, bool) or not isinstance(cg, int) or cg < 1:
            raise ValueError(f"imaml: cg_steps={cg!r} must be an integer >= 1")
        for key in ("cg_damping", "lam_damping"):
            damping = hparams.get(key, 0.0)
            if isinstance(damping, bool) or not (isinstance(damping, (int, float)) and math.isfinite(damping) and damping >= 0):
                raise ValueError(f"imaml: {key}={damping!r} must be a finite number >= 0")
        tol = hparams.get("cg_tol")
        if tol is not None and (isinstance(tol, bool) or not (isinstance(tol, (int, float)) and math.isfinite(tol)
                                                              and tol >= 0)):
            raise ValueError(f"imaml: cg_tol={tol!r} must be a finite number >= 0 (or None: the inner mode's own)")
        if hparams.get("hvp_mode", "revrev") not in ("fwdrev", "revrev"):
            raise ValueError(f"imaml: hvp_mode={hparams['hvp_mode']!r}; allowed: ['fwdrev', 'revrev']")
        if cfg.prox_lam is not None and cfg.prox_lam != lam:
            raise ValueError(f"imaml: inner.prox_lam={cfg.prox_lam!r} differs from lam={lam!r}; "
                             "iMAML's proximal weight is lam (leave inner.prox_lam unset)")
    elif cfg.optimizer == "hf":
        raise ValueError(f"inner.optimizer='hf' is only available for imaml, not {name!r}; "
                         f"allowed for {name}: {[o for o in OPTIMIZERS if o != 'hf']}")
    return cfg


def meta_gradient(name: str, loss_fn, params: dict[str, torch.Tensor], support, query,
                  inner: InnerConfig | dict | None = None, **hparams) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Meta-gradient of one task. See the module docstring."""
    cfg = validate(name, inner, hparams)
    grads, aux = ESTIMATORS[name](loss_fn, params, support, query, cfg, **hparams)
    return {k: v.detach() for k, v in grads.items()}, {k: float(v) for k, v in aux.items()}


def meta_gradient_batch(name: str, loss_fn, params: dict[str, torch.Tensor], tasks,
                        inner: InnerConfig | dict | None = None, batching: str = "loop",
                        **hparams) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Average meta-gradient over a meta-batch.

    ``tasks = (xs, ys, xq, yq)`` stacked along a leading task dimension. ``batching`` is
    ``loop`` (one task at a time), ``vmap`` (``torch.func.vmap`` over tasks) or ``compile``
    (the loop over a ``torch.compile``d estimator); the same numbers up to float rounding.
    Returns the mean gradient and per-task ``info`` tensors.
    """
    cfg = validate(name, inner, hparams)
    check_batching(batching, hparams)
    fn = _compiled(name) if batching == "compile" else ESTIMATORS[name]
    xs, ys, xq, yq = tasks
    if batching == "vmap":
        def one(xs_, ys_, xq_, yq_):
            return fn(loss_fn, params, (xs_, ys_), (xq_, yq_), cfg, **hparams)
        grads, aux = vmap(one)(xs, ys, xq, yq)
        return {k: v.mean(0).detach() for k, v in grads.items()}, {k: v.detach() for k, v in aux.items()}
    total, auxes = None, []
    for i in range(xs.shape[0]):
        g, a = fn(loss_fn, params, (xs[i], ys[i]), (xq[i], yq[i]), cfg, **hparams)
        g = {k: v.detach() for k, v in g.items()}
        total = g if total is None else {k: total[k] + g[k] for k in g}
        auxes.append(a)
    n = xs.shape[0]
    return ({k: v / n for k, v in total.items()},
            {k: torch.stack([a[k] for a in auxes]).detach() for k in auxes[0]})
