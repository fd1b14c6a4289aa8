"""What the paper-budget campaign still needs (``configs/campaign.yaml``): per run, its state in the committed
records and the CPU-hours left to its end — the declared rule's earliest stop (its 9th validation) where the
rule applies and the run has not passed it, else its planned iterations — at the seconds per iteration it ran at (or that a run of the same
experiment ran at). The first page's reproduction table uses it to say what a published number not yet reached
would cost.
"""
from __future__ import annotations

import contextlib
import json
import statistics
from functools import cache
from pathlib import Path

import catalog


@cache
def _composed(overrides: tuple[str, ...]) -> dict:
    from trainer import compose
    from trainer.evaluate import PLATEAU_MIN_VALIDATIONS

    cfg = compose(list(overrides))
    rule = cfg.eval.get("early_stop") == "plateau"
    return {"dataset": cfg.dataset.name, "ways": cfg.ways, "shots": cfg.eval.shots or cfg.shots,
            "label": cfg.algorithm.label,
            "target": PLATEAU_MIN_VALIDATIONS * int(cfg.eval.val_every) if rule else int(cfg.meta_iterations),
            "planned": int(cfg.meta_iterations)}


def seconds_per_iteration(rows: list[dict], summary: dict | None) -> float | None:
    """Median seconds per iteration (compute + sampling) over a run's last 200 logged iterations
    (``metrics.jsonl`` rows), else the median its record gives; None when neither has one."""
    times = [x["iter_s"] + x.get("sample_s", 0.0) for x in rows[-200:] if "iter_s" in x]
    return statistics.median(times) if times else ((summary or {}).get("timing") or {}).get("median_iter_s")


def runs(records: Path, rates: dict[str, float] | None = None) -> list[dict]:
    """Every campaign run with its setting, label, state, iterations and CPU-hours left (None: unknown).
    ``rates``: seconds per iteration by experiment name, measured by other records (the report's rows),
    for a run not started whose experiment the campaign has not run yet."""
    out = []
    for r in catalog.campaign_plan():
        folder, summary, rows = records / "campaign-cpu" / r["name"], {}, []
        with contextlib.suppress(OSError, ValueError):
            summary = json.loads((folder / "summary.json").read_text())
        with contextlib.suppress(OSError, ValueError):
            text = (folder / "unfinished" / "metrics.jsonl").read_text()
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        out.append({**r, **_composed(tuple(r["overrides"])), "s_per_iter": seconds_per_iteration(rows, summary),
                    "status": summary.get("status") or ("saved" if rows else "not started"),
                    "done": summary.get("iterations_done") or (rows[-1]["iter"] if rows else 0)})
    rates = {**(rates or {}), **{r["experiment"]: r["s_per_iter"] for r in out if r["s_per_iter"] is not None}}
    for r in out:
        if r["done"] >= r["target"]:  # past the rule's earliest stop without stopping: it may run to the plan
            r["target"] = r["planned"]
        per = r["s_per_iter"] or rates.get(r["experiment"])
        ended = r["status"] in ("completed", "diverged")
        r["cpu_hours_left"] = 0.0 if ended else (max(0, r["target"] - r["done"]) * per / 3600 if per else None)
    return out
