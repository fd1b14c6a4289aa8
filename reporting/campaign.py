"""What the paper-budget campaign (``configs/campaign.yaml``) holds and still needs: per run, its state, iterations,
latest validation and the CPU-hours left on one core. ``make campaign-status`` prints it, and the first page's
reproduction table says with it what a published number not yet reached would cost.

A run's target is the declared plateau rule's earliest stop (its 9th validation) while the rule applies and the run has
not passed it, else its planned iterations. Its rate is the median seconds per iteration (compute + sampling) of its own
last ``RATE_WINDOW`` iterations, else of another campaign run of the same experiment, else the median over the committed CPU
records of that experiment (``borrowed``).
"""
from __future__ import annotations

import contextlib
import json
import statistics
from functools import cache
from pathlib import Path

import catalog
from trainer.evaluate import plateau_gain
from trainer.records import read_jsonl

OUTCOMES = ("completed", "diverged")  # a run's result either way: recorded, never rerun
# A run's own rate: the median over its last RATE_WINDOW iterations, a span of iterations rather than of rows, so
# that the live metrics and the saved state's thinned copy of them give the same rate.
RATE_WINDOW = 2000


@cache
def _composed(overrides: tuple[str, ...]) -> dict:
    from trainer import compose
    from trainer.evaluate import PLATEAU_MIN_VALIDATIONS

    cfg = compose(list(overrides))
    rule = cfg.eval.get("early_stop") == "plateau"
    return {"dataset": cfg.dataset.name, "ways": cfg.ways, "shots": cfg.eval.shots or cfg.shots,
            "label": cfg.algorithm.label, "planned": int(cfg.meta_iterations),
            "lower_is_better": cfg.dataset.lower_is_better,
            "earliest": PLATEAU_MIN_VALIDATIONS * int(cfg.eval.val_every) if rule else None}


def _read(path: Path) -> dict:
    with contextlib.suppress(OSError, ValueError):
        return json.loads(path.read_text())
    return {}


def recorded_rates(records: Path) -> dict[str, float]:
    """Median seconds per iteration by experiment over the committed CPU records under ``records``."""
    seen: dict[str, list[float]] = {}
    for path in sorted(records.rglob("summary.json")):
        s = _read(path)
        if s.get("device") == "cpu" and (t := (s.get("timing") or {}).get("median_iter_s")) is not None:
            seen.setdefault(s.get("experiment"), []).append(t)
    return {e: statistics.median(ts) for e, ts in seen.items()}


def runs(saved: Path, live: Path | None = None, plan: list[dict] | None = None) -> list[dict]:
    """Every campaign run of ``plan`` (default: the committed plan) with its setting, label, ``status``, ``done`` and
    ``planned`` iterations, ``target``, latest validation ``val`` (± ``val_ci95``, at iteration ``val_iter``), every
    validation as ``curve`` [(iteration, value)], ``rule``: the plateau rule's (gain, CI) on them once it applies
    (:func:`trainer.evaluate.plateau_gain`; else None), ``s_per_iter`` (``borrowed`` when not its own),
    ``cpu_hours_left`` to the target and ``cpu_hours_max`` to the planned iterations (0 once ended, None with no
    rate). ``saved``: the campaign's records folder (in a records root, whose other CPU records lend rates);
    ``live``: the run folders of a campaign running on this machine, read before the saved state."""
    out = []
    for r in catalog.campaign_plan() if plan is None else plan:
        folder = saved / r["name"]
        summary = _read(folder / "summary.json")
        rows = next((x for x in ([] if live is None else [read_jsonl(live / r["name"] / "metrics.jsonl")])
                     + [read_jsonl(folder / "unfinished" / "metrics.jsonl")] if x), [])
        ended, setting = summary.get("status") in OUTCOMES, _composed(tuple(r["overrides"]))
        validated = [(x["val_metric"], x["val_ci95"]) for x in rows if "val_metric" in x and "val_ci95" in x]
        times = [x["iter_s"] + x.get("sample_s", 0) for x in rows if "iter_s" in x
                 and x["iter"] > rows[-1]["iter"] - RATE_WINDOW]
        done = summary.get("iterations_done") or 0 if ended else (rows[-1]["iter"] if rows else 0)
        out.append({**r, **setting, "status": summary.get("status") if ended
                    else ("saved" if rows else "not started"), "done": done,
                    **next(({"val": x["val_metric"], "val_ci95": x.get("val_ci95"), "val_iter": x["iter"]}
                            for x in reversed(rows) if "val_metric" in x),
                           {"val": None, "val_ci95": None, "val_iter": None}),
                    "curve": [(x["iter"], x["val_metric"]) for x in rows if "val_metric" in x],
                    "rule": plateau_gain(validated, setting["lower_is_better"]) if setting["earliest"] else None,
                    "s_per_iter": statistics.median(times) if times else (summary.get("timing") or {}).get("median_iter_s"),
                    "borrowed": False})
    rates = {**recorded_rates(saved.parent), **{r["experiment"]: r["s_per_iter"] for r in out if r["s_per_iter"]}}
    for r in out:
        if r["s_per_iter"] is None and r["experiment"] in rates:
            r["s_per_iter"], r["borrowed"] = rates[r["experiment"]], True
        rule = r["earliest"] is not None and r["done"] < r["earliest"]  # past it without stopping: it may run to plan
        r["target"] = r["earliest"] if rule else r["planned"]
        per, ended = r["s_per_iter"], r["status"] in OUTCOMES
        r["cpu_hours_left"] = 0.0 if ended else (max(0, r["target"] - r["done"]) * per / 3600 if per else None)
        r["cpu_hours_max"] = 0.0 if ended else (max(0, r["planned"] - r["done"]) * per / 3600 if per else None)
    return out


def hours(r: dict) -> str:
    """A run's CPU-hours left (a run not ended, with a rate), in words: a range while the plateau rule may end it
    before its planned iterations."""
    if r["earliest"] is None:
        return f"≈ {r['cpu_hours_max']:.1f} CPU-h"
    if r["done"] >= r["earliest"]:
        return f"≤ {r['cpu_hours_max']:.1f} CPU-h (the rule may end it at any validation)"
    return (f"{r['cpu_hours_left']:.1f}–{r['cpu_hours_max']:.1f} CPU-h (the rule may end it from iteration "
            f"{r['earliest']:,})")
