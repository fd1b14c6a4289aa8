"""Shared test setup.

- The suite runs from its checkout (it is never installed), so the repo root (and ``tools/``) goes on
  ``sys.path``; the top-level ``algorithms``/``models`` packages are imported from there.
- The profiler's environment must be set before torch is first imported (kineto reads it
  when libtorch loads), and tests must never talk to wandb's servers.
- Thread counts are left alone on purpose when one process runs the suite (run it with
  ``OMP_NUM_THREADS=1`` on shared CPUs). Under pytest-xdist (``make test`` runs one worker per
  core) each worker and the processes it starts use one torch thread, so workers never
  oversubscribe the cores.
- The real data: ``$METAGRAD_DATA``, else ``../shared/data`` beside the checkout (the Makefile's
  default); decoded caches go to the repo's git-ignored ``.cache/metagrad``, shared by the
  test modules so that a cold cache is decoded once.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ["KINETO_LOG_LEVEL"] = "4"
os.environ["WANDB_MODE"] = "disabled"
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "tools"))  # the tools' own modules, e.g. tools/collect.py

import math  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

REAL_ROOT = Path(os.environ.get("METAGRAD_DATA") or ROOT.parent / "shared" / "data")
REPO_CACHE = ROOT / ".cache" / "metagrad"
HAVE_OMNIGLOT = all((REAL_ROOT / "omniglot" / f"{s}.zip").is_file() for s in ("images_background", "images_evaluation"))


def data_cfg(name: str, root, cache, /, **kw) -> DictConfig:
    """The keys ``datasets.build`` reads: 2-way 1-shot tasks of dataset ``name`` under ``root``
    (``dataset={...}`` adds dataset keys, other keywords replace top-level ones)."""
    d = {"dataset": {"name": name, **kw.pop("dataset", {})}, "ways": 2, "shots": 1, "query_shots": 1,
         "dtype": "float32", "data": {"root": str(root), "cache_dir": str(cache)}}
    d.update(kw)
    return OmegaConf.create(d)


def tanh_mlp(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """1-8-8-1 tanh MLP: smooth everywhere, so finite differences and dense Hessians are
    exact oracles (ReLU kinks would spoil both)."""
    h = torch.tanh(x @ params["w0"].T + params["b0"])
    h = torch.tanh(h @ params["w1"].T + params["b1"])
    return h @ params["w2"].T + params["b2"]


def tanh_mse(params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((tanh_mlp(params, x) - y) ** 2).mean()


def make_tanh_task(seed: int = 0, dtype: torch.dtype = torch.float64) -> SimpleNamespace:
    """A curved, smooth regression task (y = sin 2x) on the tiny tanh MLP (97 parameters)."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, dtype=dtype) * scale

    params = {"w0": randn(8, 1), "b0": randn(8, scale=0.1),
              "w1": randn(8, 8, scale=1 / math.sqrt(8)), "b1": randn(8, scale=0.1),
              "w2": randn(1, 8, scale=1 / math.sqrt(8)), "b2": torch.zeros(1, dtype=dtype)}
    xs = torch.linspace(-2, 2, 10, dtype=dtype)[:, None]
    xq = torch.linspace(-1.9, 1.9, 7, dtype=dtype)[:, None]
    return SimpleNamespace(params=params, loss_fn=tanh_mse, support=(xs, torch.sin(2 * xs)),
                           query=(xq, torch.sin(2 * xq)))


@pytest.fixture
def tanh_task() -> SimpleNamespace:
    return make_tanh_task()
