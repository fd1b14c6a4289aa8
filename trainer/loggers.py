"""Loggers on top of the always-written records (metrics.jsonl, summary.json).

``csv`` adds ``metrics.csv``; ``wandb`` mirrors config, per-iteration metrics, the summary
and figures to Weights & Biases — offline unless WANDB_MODE or ``logger.mode`` says
otherwise; ``wandb sync <run_dir>/wandb/offline-run-*`` uploads later.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

from omegaconf import OmegaConf

from .records import read_jsonl


class CsvLogger:
    def __init__(self, cfg, run_dir: Path):
        self.run_dir = run_dir

    def log(self, row: dict) -> None:
        pass  # metrics.jsonl is the record; the CSV is derived from it at the end

    def finish(self, summary: dict) -> None:
        rows = read_jsonl(self.run_dir / "metrics.jsonl")
        if not rows:
            return
        keys = sorted({k for r in rows for k in r})
        tmp = self.run_dir / ".metrics.csv.tmp"
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, self.run_dir / "metrics.csv")


class WandbLogger(CsvLogger):
    def __init__(self, cfg, run_dir: Path):
        super().__init__(cfg, run_dir)
        import wandb

        lc = cfg.logger
        self.wandb = wandb
        self.run = wandb.init(project=lc.project, entity=lc.entity, tags=list(lc.tags or []),
                              mode=os.environ.get("WANDB_MODE", lc.mode), dir=str(run_dir),
                              config=OmegaConf.to_container(cfg, resolve=True),
                              name=f"{cfg.algorithm.name}-{cfg.dataset.name}-s{cfg.seed}", reinit="finish_previous")

    def log(self, row: dict) -> None:
        self.run.log({k: v for k, v in row.items() if v is not None}, step=int(row["iter"]))

    def finish(self, summary: dict) -> None:
        super().finish(summary)
        test = summary.get("test") or {}
        flat = {"status": summary["status"], "iterations_done": summary["iterations_done"],
                **{f"test/{k}": v for k, v in test.items() if isinstance(v, (int, float))},
                **{f"timing/{k}": v for k, v in (summary.get("timing") or {}).items()}}
        for k, v in flat.items():
            self.run.summary[k] = v
        self.run.finish(exit_code=0 if summary["status"] == "completed" else 1)


def make_logger(cfg, run_dir: Path):
    return WandbLogger(cfg, run_dir) if cfg.logger.name == "wandb" else CsvLogger(cfg, run_dir)
