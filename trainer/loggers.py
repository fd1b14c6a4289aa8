"""Loggers on top of the always-written records (metrics.jsonl, summary.json).

``csv`` adds ``metrics.csv``; ``wandb`` mirrors the resolved config, every per-iteration
metric and the summary to Weights & Biases — offline unless WANDB_MODE or ``logger.mode``
says otherwise; ``wandb sync <run_dir>/wandb/offline-run-*`` uploads later.

Every logger is finished exactly once: ``train()`` calls :meth:`finish` on each outcome
(completed, diverged, oom, interrupted) and wraps the loop in :meth:`guard`, which finishes
it as ``failed`` when an exception escapes, so a crashed job never leaves a wandb run open.
"""
from __future__ import annotations

import contextlib
import csv
import io
import os
from collections.abc import Iterator
from pathlib import Path

from omegaconf import OmegaConf

from atomic import atomic_write_text

from .records import read_jsonl


class CsvLogger:
    def __init__(self, cfg, run_dir: Path):
        self.run_dir = run_dir
        self.finished = False

    def log(self, row: dict) -> None:
        pass  # metrics.jsonl is the record; the CSV is derived from it at the end

    def finish(self, summary: dict) -> None:
        if self.finished:
            return
        self.finished = True
        rows = read_jsonl(self.run_dir / "metrics.jsonl")
        if not rows:
            return
        keys = sorted({k for r in rows for k in r})
        buf = io.StringIO(newline="")
        w = csv.DictWriter(buf, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
        atomic_write_text(self.run_dir / "metrics.csv", buf.getvalue())

    @contextlib.contextmanager
    def guard(self, summary: dict) -> Iterator[None]:
        """Finish the logger as ``failed`` if an exception (or SystemExit, or submitit's
        timeout error) escapes the block, then let it propagate (``train.py`` records the
        failure in ``summary.json``)."""
        try:
            yield
        except BaseException as e:
            if not self.finished:
                reason = f"{type(e).__name__}: {e}".splitlines()[0][:500]
                with contextlib.suppress(Exception):  # never mask the original error
                    self.finish({**summary, "status": "failed",
                                 "failure": {"iteration": None, "reason": reason, "last_metrics": {}}})
            raise


def _scalars(prefix: str, d: dict | None) -> dict:
    """Flatten the numbers (and strings) of a nested dict to ``prefix/key`` entries."""
    out = {}
    for k, v in (d or {}).items():
        if isinstance(v, dict):
            out.update(_scalars(f"{prefix}/{k}", v))
        elif isinstance(v, (bool, int, float, str)):
            out[f"{prefix}/{k}"] = v
    return out


class WandbLogger(CsvLogger):
    """One wandb run per training run, in ``<run_dir>/wandb/``.

    Config: the resolved Hydra config. History: each metrics.jsonl row at ``step=iter``.
    Summary: status, iterations done, test metric (mean, std, ci95, n, by_steps), timing,
    memory, device and the failure reason; ``summary.json`` itself is saved with the run.
    The jobs of one multirun share a wandb ``group``: the sweep folder.
    """

    def __init__(self, cfg, run_dir: Path):
        super().__init__(cfg, run_dir)
        import wandb

        lc = cfg.logger
        self.run = wandb.init(
            project=lc.project, entity=lc.entity, tags=list(lc.tags or []),
            mode=os.environ.get("WANDB_MODE", lc.mode), dir=str(run_dir), group=_sweep_group(),
            config=OmegaConf.to_container(cfg, resolve=True), job_type="train",
            name=f"{cfg.algorithm.name}-{cfg.dataset.name}-K{cfg.inner_steps}-s{cfg.seed}",
            reinit="finish_previous")

    def log(self, row: dict) -> None:
        self.run.log({k: v for k, v in row.items() if v is not None}, step=int(row["iter"]))

    def finish(self, summary: dict) -> None:
        if self.finished:
            return
        try:
            super().finish(summary)
            test = {k: v for k, v in (summary.get("test") or {}).items() if k != "per_task"}
            flat = {"status": summary["status"], "iterations_done": summary.get("iterations_done"),
                    "device": summary.get("device"), "device_name": summary.get("device_name"),
                    **_scalars("test", test), **_scalars("timing", summary.get("timing")),
                    **_scalars("memory", summary.get("memory")), **_scalars("failure", summary.get("failure"))}
            for k, v in flat.items():
                if v is not None:
                    self.run.summary[k] = v
            if (self.run_dir / "summary.json").exists():
                self.run.save(str(self.run_dir / "summary.json"), base_path=str(self.run_dir), policy="now")
        finally:
            # exit code 0 only for a completed run: wandb shows the others as failed
            self.run.finish(exit_code=0 if summary["status"] == "completed" else 1)


def _sweep_group() -> str | None:
    """The sweep folder of a Hydra multirun job (its jobs share a wandb group), else None."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            return str(HydraConfig.get().sweep.dir)
    except Exception:  # used outside Hydra (tests, library use)
        pass
    return None


def make_logger(cfg, run_dir: Path):
    return WandbLogger(cfg, run_dir) if cfg.logger.name == "wandb" else CsvLogger(cfg, run_dir)
