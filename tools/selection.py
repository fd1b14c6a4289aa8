"""Select the protocol choices no paper fixes, on validation tasks only:
``python tools/selection.py SETTING [ALGO ...]`` (all of the setting's algorithms by default).

Reads ``configs/selection.yaml``: per setting, a budget (``stop_at`` iterations of the experiment's own
schedule, or ``budget_minutes``), a validation-task count, a seed, and per
algorithm its experiment and a grid. Every candidate (experiment + one grid point) trains for the
setting's budget with ``eval.final=val``, so it is scored on the validation tasks and never on the
test tasks. Records go to ``RECORDS``/SETTING/ALGO: each candidate's
``summary.json`` and ``metrics.csv`` and a ``selection.json`` with the grid, every candidate's
validation score, the winner (best validation metric) and both fingerprints. Each tuned
experiment then states the winner's values and its protocol names the selection; a test checks
that the two agree.
"""
from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tools")]  # the suite, and tools/collect.py
from collect import collect  # noqa: E402  (tools/collect.py)

from atomic import atomic_write_json  # noqa: E402

RECORDS = ROOT / "reports" / "records" / "selection-cpu"


def candidates(grid: dict) -> list[dict]:
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def candidate_name(point: dict) -> str:
    return "-".join(f"{k.split('.')[-1]}{v:g}" if isinstance(v, float) else f"{k.split('.')[-1]}{v}"
                    for k, v in point.items())


def jobs(setting: str, spec: dict, algos: list[str]) -> list[str]:
    """A candidate stopped at ``stop_at`` iterations keeps the experiment's planned ``meta_iterations``,
    so a schedule over the run (Reptile's annealed outer step) is the one the winner will train with."""
    lines = []
    for algo in algos:
        a = spec["algorithms"][algo]
        for point in candidates(a["grid"]):
            budget = ([f"stop_at={spec['stop_at']}"] if "stop_at" in spec
                      else [f"max_train_minutes={spec['budget_minutes']}"])
            overrides = [f"experiment={a['experiment']}", f"seed={spec['seed']}", "eval.final=val",
                         f"eval.val_tasks={spec['val_tasks']}", *budget, "eval.val_every=0",
                         *(f"{k}={v}" for k, v in point.items())]
            lines.append(f"{setting}/{algo}/{candidate_name(point)} train.py {' '.join(overrides)}")
    return lines


def test_fingerprint(experiment: str) -> str:
    """The fingerprint of the test tasks the winner will be tested on (no test task is scored here)."""
    import datasets
    from trainer import compose
    from trainer.evaluate import fingerprint
    cfg = compose([f"experiment={experiment}"])
    from omegaconf import OmegaConf
    source = datasets.build(OmegaConf.merge(cfg, {"shots": cfg.eval.shots or cfg.shots,
                                                  "query_shots": cfg.eval.query_shots or cfg.query_shots}))
    return fingerprint(source, "test", cfg.eval.test_seed, cfg.eval.num_tasks)


def _budget(spec: dict) -> dict:
    """What every candidate of a setting trained for, as its selection record states it."""
    return {"stop_at": spec.get("stop_at"), "budget_minutes": spec.get("budget_minutes")}


def summarise(setting: str, spec: dict, algos: list[str]) -> None:
    for algo in algos:
        a = spec["algorithms"][algo]
        rows = []
        for point in candidates(a["grid"]):
            s = json.loads((RECORDS / setting / algo / candidate_name(point) / "summary.json").read_text())
            assert s["config"]["eval"]["final"] == "val" and s["test"] is None, "a selection candidate was tested"
            val = s.get("val") if s["status"] == "completed" else None  # a diverged candidate has no score
            rows.append({"candidate": candidate_name(point), "values": point, "status": s["status"],
                         "val_metric": val["mean"] if val else None, "val_ci95": val["ci95"] if val else None,
                         "iterations_done": s["iterations_done"], "val_fingerprint": val["fingerprint"] if val else None})
        scored = [r for r in rows if r["val_metric"] is not None and math.isfinite(r["val_metric"])]
        if not scored:  # every candidate diverged: nothing to select, and the record says so
            atomic_write_json(RECORDS / setting / algo / "selection.json", {
                "kind": "selection", "setting": setting, "algorithm": algo, "experiment": a["experiment"],
                "grid": a["grid"], **_budget(spec), "val_tasks": spec["val_tasks"], "seed": spec["seed"],
                "metric": None, "candidates": rows, "winner": None, "winner_name": None, "test_fingerprint": None})
            print(f"select: {setting} {algo}: every candidate diverged; none selected")
            continue
        lower = json.loads((RECORDS / setting / algo / scored[0]["candidate"] / "summary.json").read_text())["val"][
            "metric"] == "mse"
        best = (min if lower else max)(scored, key=lambda r: r["val_metric"])
        atomic_write_json(RECORDS / setting / algo / "selection.json", {
            "kind": "selection", "setting": setting, "algorithm": algo, "experiment": a["experiment"],
            "grid": a["grid"], **_budget(spec), "val_tasks": spec["val_tasks"],
            "seed": spec["seed"], "metric": "mse" if lower else "accuracy", "candidates": rows,
            "winner": best["values"], "winner_name": best["candidate"],
            "test_fingerprint": test_fingerprint(a["experiment"])})
        print(f"select: {setting} {algo}: {best['candidate']} (validation {best['val_metric']:.4g})")


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python tools/selection.py SETTING [ALGO ...]   (keys of configs/selection.yaml)", file=sys.stderr)
        return 2
    setting, spec = argv[0], yaml.safe_load((ROOT / "configs" / "selection.yaml").read_text())
    if setting not in spec:
        print(f"select: setting {setting!r} is not in configs/selection.yaml; choose one of {list(spec)}",
              file=sys.stderr)
        return 2
    algos = argv[1:] or list(spec[setting]["algorithms"])
    unknown = [a for a in algos if a not in spec[setting]["algorithms"]]
    if unknown:
        print(f"select: {unknown[0]!r} is not an algorithm of {setting} in configs/selection.yaml; choose from "
              f"{list(spec[setting]['algorithms'])}", file=sys.stderr)
        return 2
    out = Path("runs") / "select"  # relative: records name no folder of this machine
    for algo in algos:
        shutil.rmtree(ROOT / out / setting / algo, ignore_errors=True)
    proc = subprocess.run([sys.executable, "tools/jobs.py", str(out)],
                          input="\n".join(jobs(setting, spec[setting], algos)) + "\n",
                          text=True, cwd=ROOT, env=dict(os.environ, PY=sys.executable))
    if proc.returncode:
        return proc.returncode
    for algo in algos:
        collect(ROOT / out / setting / algo, RECORDS / setting / algo)
    summarise(setting, spec[setting], algos)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
