"""What the paper-budget campaign still needs (``configs/campaign.yaml``): per run, its state in the
committed records and the CPU-hours left to its end — the declared rule's earliest stop (its 9th
validation) where the rule applies, else its planned iterations — at the seconds per iteration it
ran at (or that a run of the same experiment ran at). The first page's reproduction table uses it
to say what a published number not yet reached would cost.
"""
from __future__ import annotations

import json
import statistics
from functools import cache
from pathlib import Path

import catalog

EARLIEST_VALIDATIONS = 9  # trainer.evaluate.PLATEAU_MIN_VALIDATIONS


@cache
def _composed(overrides: tuple[str, ...]) -> dict:
    from trainer import compose
    from trainer.evaluate import PLATEAU_MIN_VALIDATIONS

    assert PLATEAU_MIN_VALIDATIONS == EARLIEST_VALIDATIONS
    cfg = compose(list(overrides))
    return {"dataset": cfg.dataset.name, "ways": cfg.ways, "shots": cfg.eval.shots or cfg.shots,
            "planned": int(cfg.meta_iterations), "val_every": int(cfg.eval.val_every),
            "rule": cfg.eval.get("early_stop") == "plateau", "label": cfg.algorithm.label}


def seconds_per_iteration(rows: list[dict], summary: dict | None) -> float | None:
    """Median seconds per iteration (compute + sampling) over a run's last 200 logged iterations
    (``metrics.jsonl`` rows), else the median its record gives; None when neither has one."""
    times = [x["iter_s"] + x.get("sample_s", 0.0) for x in rows[-200:] if "iter_s" in x]
    return statistics.median(times) if times else ((summary or {}).get("timing") or {}).get("median_iter_s")


def _rows(path: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return []


def runs(records: Path, rates: dict[str, float] | None = None) -> list[dict]:
    """Every campaign run with its setting, label, state, iterations and CPU-hours left (None: unknown).
    ``rates``: seconds per iteration by experiment name, measured by other records (the report's rows),
    for a run not started whose experiment the campaign has not run yet."""
    out = []
    for r in catalog.campaign_plan():
        c = _composed(tuple(r["overrides"]))
        folder = records / "campaign-cpu" / r["name"]
        summary = None
        try:
            summary = json.loads((folder / "summary.json").read_text())
        except (OSError, ValueError):
            pass
        rows = _rows(folder / "unfinished" / "metrics.jsonl")
        done = (summary or {}).get("iterations_done") or (rows[-1]["iter"] if rows else 0)
        target = EARLIEST_VALIDATIONS * c["val_every"] if c["rule"] else c["planned"]
        out.append({**r, **c, "status": (summary or {}).get("status") or ("saved" if rows else "not started"),
                    "done": done, "target": target,
                    "s_per_iter": seconds_per_iteration(rows, summary)})
    by_experiment = dict(rates or {})
    by_experiment.update({r["experiment"]: r["s_per_iter"] for r in out if r["s_per_iter"] is not None})
    for r in out:
        per = r["s_per_iter"] or by_experiment.get(r["experiment"])
        ended = r["status"] in ("completed", "diverged")
        r["cpu_hours_left"] = 0.0 if ended else (max(0, r["target"] - r["done"]) * per / 3600 if per else None)
    return out
