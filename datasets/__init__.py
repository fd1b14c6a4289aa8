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

import importlib
import sys
from dataclasses import dataclass

import torch

import catalog
import checks

# learn2learn imports gym, whose import prints a four-line "Gym has been unmaintained" notice to
# stderr; without its notices module it prints nothing (every command would otherwise open with it).
sys.modules.setdefault("gym_notices", None)


@dataclass(frozen=True)
class Spec:
    """A dataset's declared fields (``configs/dataset/NAME.yaml``, read by :func:`catalog.dataset`):
    its ``module`` (imported when first used, so that PIL and learn2learn load only for image data)
    provides ``build(cfg)`` and, where it has options, ``validate(cfg)``."""
    title: str      # its name in the report (the config's ``label``)
    model: str      # the network it trains (a :func:`models.build` name)
    batching: str   # ``batching=auto``: the faster eager batching mode for that network on a CPU
    module: str


DATASETS: dict[str, Spec] = {n: Spec(d["label"], d["model"], d["batching"], d["module"])
                             for n, d in ((n, catalog.dataset(n)) for n in catalog.datasets())}
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _module(d):
    """The module of dataset config ``d``: its ``module``, else the checkout's config of that name."""
    module = d.get("module") if hasattr(d, "get") else getattr(d, "module", None)
    return importlib.import_module(module or DATASETS[checks.choice("dataset", d.name, DATASETS, unknown=True)].module)


def validate(cfg) -> None:
    """Config checks of the dataset branch that need no data (ValueError naming key and limit)."""
    check = getattr(_module(cfg.dataset), "validate", None)
    if check is not None:
        check(cfg)


def record(source) -> dict:
    """What a run records of its data: the archives' sha256 and, where the source has one, its
    class split (``split_record``: seed, sizes, test split, test/train overlap)."""
    rec = {"archive_sha256": dict(source.archive_sha256)}
    if hasattr(source, "split_record"):
        rec.update(source.split_record())
    return rec


def build(cfg):
    """The task source of ``cfg.dataset.name``, in ``cfg.dtype``."""
    return _module(cfg.dataset).build(cfg)
