"""The problem a training config describes: task source, model, initial parameters, loss and
metric on one device and dtype. The trainer, the studies and the benchmark all build it here,
so they run the same model on the same tasks."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from omegaconf import DictConfig, OmegaConf

import datasets
import models
from datasets import DATASETS, DTYPES

from .config import model_options, resolve_device

Params = dict[str, torch.Tensor]

# batching=auto per network: each dataset's declared mode (datasets.DATASETS; measured by
# `make bench`, BENCHMARKS.md "Per-task loop vs torch.func.vmap").
AUTO_BATCHING = {spec.model: spec.batching for spec in DATASETS.values()}


def batching(mode: str, model: str) -> str:
    """loop | vmap | compile: ``mode`` itself, or for ``auto`` the faster eager one for ``model``.
    ``compile`` is never automatic: on a CPU its per-iteration gain over eager vmap is too
    unsteady to repay the compile (BENCHMARKS.md, "Notes")."""
    return AUTO_BATCHING[model] if mode == "auto" else mode


@dataclass
class Problem:
    """A config made concrete. ``source.sample(split, n, generator) -> (xs, ys, xq, yq)``;
    ``metric`` is ``mse`` or ``accuracy``; ``origin`` says where the tasks come from."""

    cfg: DictConfig
    source: object
    model: str
    params: Params
    forward: Callable
    loss_fn: Callable
    metric_fn: Callable | None
    metric: str
    device: torch.device
    dtype: torch.dtype
    origin: str = "datasets.build"

    def tasks(self, n: int, seed: int, split: str = "train"):
        """``n`` tasks (xs, ys, xq, yq), a deterministic function of ``seed``."""
        return tuple(t.to(self.device) for t in self.source.sample(split, n, torch.Generator().manual_seed(seed)))

    def cast(self, params: Params) -> Params:
        return {k: v.detach().to(device=self.device, dtype=self.dtype) for k, v in params.items()}

    def fresh_params(self, device: torch.device | str) -> Params:
        """A copy of the initial parameters on ``device`` (each timed run starts from them)."""
        return {k: v.detach().clone().to(device) for k, v in self.params.items()}


def build_problem(cfg: DictConfig, dtype: str | None = None, device: str | None = None,
                  activation: str = "relu", source=None, origin: str = "datasets.build") -> Problem:
    """The problem of ``cfg`` (``dtype`` / ``device``: in place of the config's), with the tasks
    of ``datasets.build(cfg)`` unless another ``source`` is given."""
    if dtype is not None:
        cfg = OmegaConf.merge(cfg, {"dtype": dtype})
    dev, dt = resolve_device(device or cfg.device), DTYPES[cfg.dtype]
    source = datasets.build(cfg) if source is None else source
    params, forward = models.build(source.model, ways=cfg.ways, seed=cfg.seed, dtype=dt, **model_options(cfg),
                                   image_size=getattr(source, "image_size", 28), activation=activation)
    if source.metric == "mse":
        loss_fn, metric_fn = models.mse_loss(forward), None
    else:
        loss_fn, metric_fn = models.cross_entropy_loss(forward), models.accuracy_metric(forward)
    return Problem(cfg, source, source.model, {k: v.to(dev) for k, v in params.items()}, forward, loss_fn,
                   metric_fn, source.metric, dev, dt, origin)
