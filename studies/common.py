"""Shared plumbing of the reviewer studies.

A study works on the same task source, model and loss as ``train.py`` (built from the
training config composed with the study's dataset and ``train_overrides``), trains through
the shared trainer (``trainer.train``) when it needs a trained θ, and writes tidy CSVs.
Nothing here re-implements an estimator: studies call the registered ones
(``algorithms.meta_gradient``, ``meta_gradient_batch`` or ``meta_gradient_per_task``).
"""
from __future__ import annotations

import csv
import io
import math
import sys
from collections.abc import Iterable
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

import checks
from atomic import atomic_write_bytes
from trainer.records import load_checkpoint

Params = dict[str, torch.Tensor]


# ---------------------------------------------------------------- configs
def train_config(overrides: Iterable[str]) -> DictConfig:
    """The validated config ``python train.py <overrides>`` would run."""
    import trainer

    cfg = trainer.compose(list(overrides))
    trainer.validate(cfg)
    return cfg


def base_overrides(cfg: DictConfig, *extra: str) -> list[str]:
    """Training overrides shared by a study's runs: its dataset and task shape, seed, device,
    the user's extras."""
    data = [f"data.{k}={v}" for k in ("root", "cache_dir") if (v := cfg.get("data", {}).get(k)) is not None]
    return [f"dataset={cfg.dataset.name}", f"ways={cfg.ways}", f"shots={cfg.shots}",
            f"query_shots={cfg.query_shots}", f"seed={cfg.seed}", f"device={cfg.device}", *data,
            *[str(o) for o in cfg.get("train_overrides", [])], *extra]


# ---------------------------------------------------------------- training runs
def train_run(overrides: list[str], run_dir: Path) -> tuple[dict, Params | None]:
    """One run of the shared trainer into ``run_dir``: (summary dict, final params or None).

    The study's training runs live inside its run folder (``<study>/train/<tag>``).
    """
    import trainer

    tcfg = train_config(overrides)
    summary = trainer.train(tcfg, run_dir)
    if summary["status"] == "interrupted":  # the trainer turned SIGINT/SIGTERM into a clean stop: so do we
        raise KeyboardInterrupt(f"training run {run_dir} was interrupted")
    ck = load_checkpoint(Path(run_dir) / "ckpt.pt")
    return summary, (ck["params"] if ck else None)


def load_params(path: str | Path) -> Params:
    """Parameters from a trainer checkpoint (``ckpt.pt``: a dict with key ``params``)."""
    ck = load_checkpoint(path)
    if ck is None or "params" not in ck:
        raise ValueError(f"checkpoint {str(path)!r} is missing or has no 'params'; "
                         "point it at a run folder's ckpt.pt")
    return ck["params"]


# ---------------------------------------------------------------- small numerics
def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    den = a.norm() * b.norm()
    return float((a @ b) / den) if den > 0 else float("nan")


def rel_error(a: torch.Tensor, ref: torch.Tensor) -> float:
    n = ref.norm()
    return float((a - ref).norm() / n) if n > 0 else float("nan")


# ---------------------------------------------------------------- output
def progress(iterable, total: int | None = None, desc: str = ""):
    """A tqdm bar on a terminal only (no bars in logs and CI)."""
    from tqdm import tqdm
    return tqdm(iterable, total=total, desc=desc, disable=not sys.stderr.isatty(), dynamic_ncols=True, leave=False)


def write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    """Tidy CSV, written atomically; ``None`` and NaN become empty cells."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="raise", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None or (isinstance(r.get(k), float) and math.isnan(r[k])) else r[k])
                    for k in columns})
    atomic_write_bytes(path, buf.getvalue().encode())


# ---------------------------------------------------------------- config checks (one line each)
POS = "a finite number > 0"
THETA_SOURCES = ("init", "trained")  # where a study's θ comes from: the initialisation or a trained run


def need(block, rules: dict) -> None:
    """Check ``study.<key>`` for every ``key: rule`` (dotted keys reach into sub-blocks; a key
    ending in ``?`` may be null): an int ``lo`` asks for integers >= lo (one or a list),
    :data:`POS` for a finite number > 0, a collection for names from it (one or a list), a function
    for the names it returns (the configs present: ``trainer.config.algorithm_names``)."""
    for key, rule in rules.items():
        key, optional = key.rstrip("?"), key.endswith("?")
        v = OmegaConf.select(block, key)
        if optional and v is None:
            continue
        if callable(rule):
            rule = tuple(rule())
        name = f"study.{key}"
        if rule is POS:
            for x in (v if OmegaConf.is_list(v) else [v]):
                checks.number(name, x)
        elif isinstance(rule, int):
            checks.integers(name, v, rule)
        else:
            checks.subset(name, v, rule)


# ---------------------------------------------------------------- per-task meta-gradients
def flat_rows(g: Params) -> torch.Tensor:
    """(tasks, n_params) float64 matrix of per-task gradients."""
    return torch.cat([v.reshape(v.shape[0], -1) for v in g.values()], dim=1).double()
