"""Task sources. ``build(cfg)`` returns an object with

- ``name``, ``metric`` (``accuracy`` or ``mse``), ``model`` (a :func:`models.build` name),
  ``archive_sha256`` (dict: source file name → sha256; empty when no data file is read);
- ``sample(split, n, generator) -> (xs, ys, xq, yq)``: ``n`` tasks stacked on a leading
  dimension, a deterministic function of the generator's state;
- ``fingerprint_fields() -> dict``: what identifies the task distribution (used to check
  that two runs were evaluated on the same test tasks).

Image datasets (``omniglot``, ``miniimagenet``) also have ``image_size`` and read their
files under ``data.root`` (null → ``$METAGRAD_DATA`` → ``./data``), caching decoded
tensors in ``data.cache_dir`` (null → ``./.cache/metagrad``); see ``datasets/store.py``.
:func:`validate` raises ValueError for impossible task shapes before any data is read.
"""
from __future__ import annotations

import torch

from .sinusoid import Sinusoid

DATASETS = ("sinusoid", "omniglot", "miniimagenet")
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def validate(cfg) -> None:
    """Config checks of the dataset branch that need no data (ValueError naming key and limit)."""
    name = cfg.dataset.name
    if name == "omniglot":
        from . import omniglot
        omniglot.validate(cfg)
    elif name == "miniimagenet":
        from . import miniimagenet
        miniimagenet.validate(cfg)
    elif name != "sinusoid":
        raise ValueError(f"dataset={name!r} is unknown; allowed: {list(DATASETS)}")


def record(source) -> dict:
    """What a run records of its data: the archives' sha256 and, where the source has one, its
    class split (``split_record``: seed, sizes, test split, test/train overlap)."""
    rec = {"archive_sha256": dict(source.archive_sha256)}
    if hasattr(source, "split_record"):
        rec.update(source.split_record())
    return rec


def build(cfg):
    name = cfg.dataset.name
    dtype = DTYPES[cfg.dtype]
    if name == "sinusoid":
        return Sinusoid(shots=cfg.shots, query_shots=cfg.query_shots, dtype=dtype)
    if name == "omniglot":
        from .omniglot import Omniglot  # imported lazily: PIL / learn2learn only when needed
        return Omniglot(cfg)
    if name == "miniimagenet":
        from .miniimagenet import MiniImageNet
        return MiniImageNet(cfg)
    raise ValueError(f"dataset={name!r} is unknown; allowed: {list(DATASETS)}")
