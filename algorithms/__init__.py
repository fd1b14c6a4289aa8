"""Meta-gradient estimators behind one entry point (the suite's contract).

    grads, info = meta_gradient(name, loss_fn, params, support, query, inner=..., **hparams)

``loss_fn(params, x, y) -> scalar``; ``params: dict[str, Tensor]``; ``support`` and
``query`` are ``(x, y)``; ``inner`` is an :class:`InnerConfig` or a dict of its fields
(steps / lr / optimizer / prox_lam / ...). ``grads`` has the keys and shapes of
``params``; ``info`` holds floats: ``query_loss_before``, ``query_loss_after``,
``inner_grad_norm`` (||∇G(φ_K)||) and, for iMAML, ``cg_residual``.

Estimators (one file each): ``maml`` (Finn et al. 2017; second order, exact through the
unroll), ``fomaml``, ``reptile`` (Nichol et al. 2018; pseudo-gradient θ − φ_K) and ``imaml``
(Rajeswaran et al. 2019; implicit gradient by CG; hparams ``lam``, ``cg_steps``,
``cg_damping``, ``lam_damping``, ``cg_tol``, ``hvp_mode``; inner optimizer sgd / momentum /
adam or ``hf``). The inner config's ``prox_mode`` selects the paper's inner problem
(``every_step``, default) or the official release's (``final_step``).

:func:`meta_gradient_batch` averages over a stacked meta-batch, by a per-task loop, by
``torch.func.vmap`` or by a loop over a ``torch.compile``d estimator (``batching``);
:func:`meta_gradient_per_task` returns every task's own meta-gradient (vmap). The batching
mode alone fixes the code path (:data:`CODE_PATHS`). The paths agree to rounding: in
float64 to ~1e-15 (tests); in float32 they can differ visibly where the meta-gradient is
ill-conditioned (BENCHMARKS.md). iMAML's ``hvp_mode='fwdrev'`` does not compile and is
refused with ``batching='compile'``.
"""
from __future__ import annotations

import functools
import importlib
import inspect
import typing
from collections.abc import Callable
from typing import Any

import torch
from torch.func import vmap

import checks

from .fomaml import fomaml
from .imaml import imaml, resolve_cg_tol
from .inner import (
    GRADIENT_OPTIMIZERS,
    OPTIMIZERS,
    PROX_MODES,
    InnerConfig,
    InnerState,
    fresh_inner_state,
    inner_objective,
    solve_inner,
    solve_inner_carried,
)
from .maml import maml
from .reptile import reptile

ESTIMATORS: dict[str, Callable] = {"maml": maml, "fomaml": fomaml, "reptile": reptile, "imaml": imaml}
CONTRACT = ("loss_fn", "params", "support", "query", "inner")  # every estimator's first parameters, in this order


def resolve(spec: str) -> str:
    """The registry name of estimator ``spec``: a built-in name (a key of :data:`ESTIMATORS`), or an
    import path ``package.module:function`` — a meta-gradient function outside this package (your own
    method, with the contract of :func:`meta_gradient`), imported once and registered under ``spec``."""
    if spec in ESTIMATORS:
        return spec
    module, _, attr = str(spec).partition(":")
    if not attr:
        raise ValueError(f"algorithm name={spec!r} is unknown; allowed: {sorted(n for n in ESTIMATORS if ':' not in n)} "
                         "or an import path package.module:function (algorithm.estimator)")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"algorithm.estimator={spec!r}: cannot import {attr!r} from {module!r} ({e}); put its "
                         "package on PYTHONPATH") from None
    names = list(inspect.signature(fn).parameters)[:len(CONTRACT)]
    if tuple(names) != CONTRACT:
        raise ValueError(f"algorithm.estimator={spec!r}: its parameters start {names}, the contract is "
                         f"{list(CONTRACT)} (see algorithms.meta_gradient)")
    ESTIMATORS[spec] = fn
    return spec
BATCHING = ("loop", "vmap", "compile")
# The code path of each batching mode, which a run records: how it differentiates
# (``linalg.gradient``), and whether the loss and metric run their ``fused`` variant where
# they have one (``models``' conv4s: F.batch_norm, whose double backward fails under vmap).
CODE_PATHS = {"loop": {"autodiff": "torch.autograd", "loss": "fused"},
              "vmap": {"autodiff": "torch.func", "loss": "plain"},
              "compile": {"autodiff": "torch.func", "loss": "fused"}}
_OWN = ("loss_fn", "params", "support", "query", "inner", "autograd", "inner_state", "trace")  # not hparams
_COMPILED: dict[str, Callable] = {}


def _compiled(name: str) -> Callable:
    """One ``torch.compile`` wrapper per estimator, kept for the process (its graphs are cached
    per input shapes and guards, so every meta-iteration after the first reuses them)."""
    if name not in _COMPILED:
        _COMPILED[name] = torch.compile(ESTIMATORS[name], dynamic=False)
    return _COMPILED[name]


_OPTIONS = ("metric_fn", "diagnostics_full")  # every estimator's options, not hyperparameters


def _named(estimator: Callable) -> dict[str, inspect.Parameter]:
    """An estimator's named parameters (``**options`` passes the options on; it names none)."""
    return {k: p for k, p in inspect.signature(estimator).parameters.items()
            if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


def _hparams_of(estimator: Callable) -> frozenset[str]:
    """The keyword arguments an estimator takes beyond the task: its named ones, and the options
    (``metric_fn``, ``diagnostics_full``, ``autograd``, ``trace``) where it passes ``**options`` on."""
    params = inspect.signature(estimator).parameters
    passes_on = any(p.kind == p.VAR_KEYWORD for p in params.values())
    return frozenset(_named(estimator)) - set(_OWN) | (frozenset(_OPTIONS) if passes_on else frozenset())


@functools.cache
def defaults(name: str) -> dict[str, Any]:
    """An estimator's own hyperparameters and their defaults, as its signature declares them."""
    return {k: p.default for k, p in _named(ESTIMATORS[resolve(name)]).items() if k not in _OWN + _OPTIONS}


def record(name: str, hparams: dict[str, Any], inner: InnerConfig | dict | None) -> dict[str, Any] | None:
    """The hyperparameters a run of estimator ``name`` uses, as its records state them: every
    declared one at its value or default, ``cg_tol`` resolved (:func:`resolve_cg_tol`); None for
    an estimator without hyperparameters."""
    own = defaults(name)
    if not own:
        return None
    out = {k: hparams.get(k, v) for k, v in own.items()}
    out = {k: type(own[k])(v) if isinstance(own[k], (int, float)) and v is not None else v for k, v in out.items()}
    if "cg_tol" in out:
        out["cg_tol"] = resolve_cg_tol(out["cg_tol"], InnerConfig.make(inner))
    return out


def proximal_weight(name: str, hparams: dict[str, Any]) -> float:
    """λ of the inner problem (φ* = argmin L̂(φ) + λ/2 ||φ − θ||², Rajeswaran et al. 2019 Eq. 3):
    the estimator's ``lam`` where it declares one, else 0."""
    own = defaults(name)
    return float(hparams.get("lam", own["lam"])) if "lam" in own else 0.0


def _on_path(batching: str, loss_fn, hparams: dict[str, Any]) -> tuple[Callable, dict[str, Any]]:
    """``loss_fn`` and ``hparams`` (``metric_fn`` included) for ``batching``'s code path."""
    path = CODE_PATHS[batching]
    if path["loss"] == "fused":
        loss_fn = getattr(loss_fn, "fused", loss_fn)
        if hparams.get("metric_fn") is not None:
            hparams = {**hparams, "metric_fn": getattr(hparams["metric_fn"], "fused", hparams["metric_fn"])}
    return loss_fn, {**hparams, "autograd": path["autodiff"] == "torch.autograd"}


__all__ = ["BATCHING", "CODE_PATHS", "ESTIMATORS", "GRADIENT_OPTIMIZERS", "OPTIMIZERS", "PROX_MODES", "InnerConfig", "InnerState",
           "carries_state", "check_batching", "defaults", "estimate_batch", "estimate_carried", "resolve", "fresh_inner_state", "inner_objective", "meta_gradient",
           "meta_gradient_batch", "meta_gradient_carried", "meta_gradient_per_task", "proximal_weight", "record",
           "resolve_cg_tol", "solve_inner", "solve_inner_carried", "validate"]


def carries_state(name: str) -> bool:
    """Whether estimator ``name`` can run from an inner optimizer state carried across tasks (it
    declares an ``inner_state`` argument; Reptile's reference protocol)."""
    return "inner_state" in inspect.signature(ESTIMATORS[resolve(name)]).parameters


def check_batching(batching: str, hparams: dict[str, Any]) -> None:
    """Refuse an unknown ``batching`` and the one combination torch.compile cannot run."""
    if batching not in BATCHING:
        raise ValueError(f"batching={batching!r} is unknown; allowed: {list(BATCHING)}")
    if batching == "compile" and hparams.get("hvp_mode") == "fwdrev":
        raise ValueError("batching='compile' cannot run hvp_mode='fwdrev' (torch.compile fails on forward-over-"
                         "reverse, torch 2.14); use hvp_mode='revrev' (the default) or batching loop/vmap")


@functools.cache
def rules(name: str) -> dict[str, checks.Rule]:
    """The rules estimator ``name``'s signature states for its hyperparameters
    (``Annotated[type, checks.Rule(...)]``; a hyperparameter without one is not checked)."""
    try:
        hints = typing.get_type_hints(ESTIMATORS[resolve(name)], include_extras=True)
    except NameError:  # an annotation its module cannot resolve at run time states no rule either
        return {}
    return {k: next(m for m in hints[k].__metadata__ if isinstance(m, checks.Rule)) for k in defaults(name)
            if k in hints and any(isinstance(m, checks.Rule) for m in getattr(hints[k], "__metadata__", ()))}


def validate(name: str, inner: InnerConfig | dict | None, hparams: dict[str, Any]) -> InnerConfig:
    """Check the estimator name, the inner config and the hparams (each by the rule its estimator's
    signature states, :func:`rules`); raise ValueError naming the culprit."""
    name = resolve(name)
    cfg = InnerConfig.make(inner)
    allowed = _hparams_of(ESTIMATORS[name])
    unknown = sorted(set(hparams) - allowed)
    if unknown:
        own = sorted(allowed - set(_OPTIONS))
        raise ValueError(f"{name}: unknown hyperparameter(s) {unknown}; allowed: {own or 'none'} "
                         "(and metric_fn, diagnostics_full)")
    hp = {**defaults(name), **hparams}
    for key, rule in rules(name).items():
        rule(f"{name}: {key}", hp[key])
    lam = proximal_weight(name, hparams)
    if lam and cfg.prox_lam and cfg.prox_lam != lam:
        raise ValueError(f"{name}: inner.prox_lam={cfg.prox_lam!r} differs from lam={lam!r}; "
                         f"{name}'s proximal weight is lam (leave inner.prox_lam at 0)")
    if name != "imaml" and cfg.optimizer == "hf":
        raise ValueError(f"inner.optimizer='hf' is only available for imaml, not {name!r}; "
                         f"allowed for {name}: {[o for o in OPTIMIZERS if o != 'hf']}")
    return cfg


def meta_gradient(name: str, loss_fn, params: dict[str, torch.Tensor], support, query,
                  inner: InnerConfig | dict | None = None, **hparams) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Meta-gradient of one task, on the per-task loop's code path (outside ``torch.func`` transforms).

    Args:
        name: a key of :data:`ESTIMATORS`.
        loss_fn: ``loss_fn(params, x, y) -> scalar``.
        params: θ, a dict of tensors.
        support, query: ``(x, y)`` of the task.
        inner: an :class:`InnerConfig` or a dict of its fields.
        **hparams: the estimator's own (e.g. iMAML's ``lam``), ``metric_fn``, ``diagnostics_full``.

    Returns:
        ``(grads, info)``: detached gradients with the keys of ``params``, floats in ``info``.
    """
    cfg = validate(name, inner, hparams)
    loss_fn, hp = _on_path("loop", loss_fn, hparams)
    grads, aux = ESTIMATORS[name](loss_fn, params, support, query, cfg, **hp)
    return {k: v.detach() for k, v in grads.items()}, {k: float(v) for k, v in aux.items()}


def _vmapped(fn: Callable, loss_fn, params, tasks, cfg: InnerConfig, hparams: dict[str, Any]):
    xs, ys, xq, yq = tasks

    def one(xs_, ys_, xq_, yq_):
        return fn(loss_fn, params, (xs_, ys_), (xq_, yq_), cfg, **hparams)

    grads, aux = vmap(one)(xs, ys, xq, yq)
    return {k: v.detach() for k, v in grads.items()}, {k: v.detach() for k, v in aux.items()}


def meta_gradient_per_task(name: str, loss_fn, params: dict[str, torch.Tensor], tasks,
                           inner: InnerConfig | dict | None = None,
                           **hparams) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Every task's own meta-gradient, under ``torch.func.vmap``.

    Arguments as :func:`meta_gradient_batch`. Returns gradients and ``info`` tensors with a
    leading task dimension.
    """
    cfg = validate(name, inner, hparams)
    loss_fn, hp = _on_path("vmap", loss_fn, hparams)
    return _vmapped(ESTIMATORS[name], loss_fn, params, tasks, cfg, hp)


def meta_gradient_batch(name: str, loss_fn, params: dict[str, torch.Tensor], tasks,
                        inner: InnerConfig | dict | None = None, batching: str = "loop",
                        **hparams) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Average meta-gradient over a meta-batch.

    Args:
        tasks: ``(xs, ys, xq, yq)`` stacked along a leading task dimension.
        batching: ``loop`` (one task at a time), ``vmap`` (``torch.func.vmap`` over tasks) or
            ``compile`` (the loop over a ``torch.compile``d estimator); it fixes the code
            path, :data:`CODE_PATHS`.
        The others as :func:`meta_gradient`.

    Returns:
        The mean gradient and per-task ``info`` tensors.
    """
    cfg = validate(name, inner, hparams)
    check_batching(batching, hparams)
    return estimate_batch(name, loss_fn, params, tasks, cfg, batching, **hparams)


def estimate_batch(name: str, loss_fn, params: dict[str, torch.Tensor], tasks, inner: InnerConfig,
                   batching: str = "loop", **hparams) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """:func:`meta_gradient_batch` without its argument check, for a caller that checked its config
    once (the trainer: ``trainer.config.validate``), so that nothing is re-checked per iteration."""
    loss_fn, hp = _on_path(batching, loss_fn, hparams)
    fn = _compiled(name) if batching == "compile" else ESTIMATORS[name]
    if batching == "vmap":
        grads, aux = _vmapped(fn, loss_fn, params, tasks, inner, hp)
        return {k: v.mean(0) for k, v in grads.items()}, aux
    xs, ys, xq, yq = tasks
    total, auxes = None, []
    for i in range(xs.shape[0]):
        g, a = fn(loss_fn, params, (xs[i], ys[i]), (xq[i], yq[i]), inner, **hp)
        g = {k: v.detach() for k, v in g.items()}
        total = g if total is None else {k: total[k] + g[k] for k in g}
        auxes.append(a)
    n = xs.shape[0]
    return ({k: v / n for k, v in total.items()},
            {k: torch.stack([a[k] for a in auxes]).detach() for k in auxes[0]})


def meta_gradient_carried(name: str, loss_fn, params: dict[str, torch.Tensor], tasks, state: InnerState,
                          inner: InnerConfig | dict | None = None,
                          **hparams) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], InnerState]:
    """Average meta-gradient over a meta-batch whose tasks run one after another from a carried
    inner optimizer state: task i starts from the state task i − 1 left, the first from ``state``
    (Reptile's reference code, Nichol et al. 2018). Sequential by nature, so always the per-task
    loop's code path (no ``vmap``). Returns the mean gradient, per-task ``info`` tensors and the
    state after the last task; ``state`` itself is not modified, so calling again with the same
    one repeats the same computation."""
    cfg = validate(name, inner, hparams)
    if not carries_state(name):
        raise ValueError(f"{name}: carries no inner optimizer state across tasks (only estimators with an "
                         "inner_state argument do: " + ", ".join(n for n in ESTIMATORS if carries_state(n)) + ")")
    return estimate_carried(name, loss_fn, params, tasks, state, cfg, **hparams)


def estimate_carried(name: str, loss_fn, params: dict[str, torch.Tensor], tasks, state: InnerState,
                     inner: InnerConfig, **hparams) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], InnerState]:
    """:func:`meta_gradient_carried` without its argument check (see :func:`estimate_batch`)."""
    loss_fn, hp = _on_path("loop", loss_fn, hparams)
    xs, ys, xq, yq = tasks
    total, auxes = None, []
    for i in range(xs.shape[0]):
        g, a, state = ESTIMATORS[name](loss_fn, params, (xs[i], ys[i]), (xq[i], yq[i]), inner, inner_state=state, **hp)
        g = {k: v.detach() for k, v in g.items()}
        total = g if total is None else {k: total[k] + g[k] for k in g}
        auxes.append(a)
    n = xs.shape[0]
    return ({k: v / n for k, v in total.items()},
            {k: torch.stack([a[k] for a in auxes]).detach() for k in auxes[0]}, state)
