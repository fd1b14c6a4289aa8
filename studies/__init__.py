"""The reviewer studies: ``python study.py study=NAME [overrides]``.

Each study module has ``validate(cfg)`` (raises ValueError naming the bad key),
optionally ``check_folder(cfg, out_dir)`` (the same, for what ``out_dir`` already holds: a
study that continues its folder) and ``run(cfg, out_dir) -> {csv_name: (columns, rows)}``.
:func:`run` checks the config, runs the study, writes every CSV and then ``study.json``
atomically into ``out_dir``:

    {"schema_version": 1, "kind": "study", "study": NAME, "status": "completed" | "failed" | "interrupted",
     "versions": {...}, "device": "cpu", "device_name": ..., "config": {...},
     "csv": "NAME.csv", "csvs": [...], "wall_s": ..., "error": null}
"""
from __future__ import annotations

import importlib
import time
import traceback
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

import checks

STUDIES = ("fidelity", "precision", "assumptions", "cost", "failures", "deviations", "rescaling")

__all__ = ["STUDIES", "check", "run"]


def _module(name: str):
    return importlib.import_module(f"studies.{checks.choice('study', name, STUDIES, unknown=True)}")


def check(cfg: DictConfig, out_dir: str | Path | None = None) -> None:
    """Raise ValueError (one line naming the key) if the study config cannot run (in ``out_dir``)."""
    from trainer.config import resolve_device

    from .common import need

    mod = _module(cfg.study.name)
    resolve_device(cfg.device)
    need(cfg.study, mod.RULES)
    if hasattr(mod, "validate"):  # the rules that span keys
        mod.validate(cfg)
    if out_dir is not None and hasattr(mod, "check_folder"):
        mod.check_folder(cfg, Path(out_dir))


def run(cfg: DictConfig, out_dir: str | Path) -> Path:
    """Validate, run the study, write its CSVs and ``study.json``; return ``out_dir``."""
    from atomic import atomic_write_json
    from trainer.config import resolve_device
    from trainer.records import device_name, versions

    from .common import write_csv

    check(cfg, out_dir)  # before any work: a bad value fails in one line, nothing written
    name = cfg.study.name
    mod = _module(name)
    device = resolve_device(cfg.device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {"schema_version": 1, "kind": "study", "study": name, "status": "running",
              "versions": versions(), "device": device.type, "device_name": device_name(device),
              "config": OmegaConf.to_container(cfg, resolve=True), "csv": f"{name}.csv", "csvs": [],
              "wall_s": None, "error": None}
    t0 = time.perf_counter()
    try:
        tables = mod.run(cfg, out_dir)
    except BaseException as e:
        record.update(status="interrupted" if isinstance(e, KeyboardInterrupt) else "failed",
                      wall_s=time.perf_counter() - t0,
                      error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc(limit=8))
        atomic_write_json(out_dir / "study.json", record)
        raise
    for fname, (columns, rows) in tables.items():
        write_csv(out_dir / fname, columns, rows)
    record.update(status="completed", csvs=list(tables), wall_s=round(time.perf_counter() - t0, 3))
    atomic_write_json(out_dir / "study.json", record)
    return out_dir
