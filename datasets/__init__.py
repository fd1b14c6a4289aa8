"""Task sources. ``build(cfg)`` returns an object with

- ``name``, ``metric`` (``accuracy`` or ``mse``), ``model`` (a :func:`models.build` name),
  ``archive_sha256`` (dict: source file name → sha256; empty when no data file is read);
- ``sample(split, n, generator) -> (xs, ys, xq, yq)``: ``n`` tasks stacked on a leading
  dimension, a deterministic function of the generator's state;
- ``fingerprint_fields() -> dict``: what identifies the task distribution (used to check
  that two runs were evaluated on the same test tasks).
"""
from __future__ import annotations

import torch

from .sinusoid import Sinusoid

DATASETS = ("sinusoid", "omniglot", "miniimagenet")
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def build(cfg):
    name = cfg.dataset.name
    dtype = DTYPES[cfg.dtype]
    if name == "sinusoid":
        return Sinusoid(shots=cfg.shots, query_shots=cfg.query_shots, dtype=dtype)
    raise ValueError(f"dataset={name!r} is unknown; allowed: {list(DATASETS)}")
