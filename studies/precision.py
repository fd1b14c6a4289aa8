"""Float32 vs float64: is MAML's gap a numerical artefact?

(a) The MAML meta-gradient (Finn et al. 2017, Eq. 1–2; exact through the unroll) of the
same tasks at the same θ in float32 and in float64, for K = 1…100 inner steps: relative
difference ||g32 − g64|| / ||g64||, both norms, and whether either has non-finite entries.
θ and the tasks are float32 numbers in both precisions (float64 holds them exactly), so
only the arithmetic differs. θ is the initialisation and the float32 run's final θ.

(b) A paired short MAML training run in float32 and in float64 (same seed, same training
and test tasks — checked through the test-task fingerprint): test metric with its 95% CI
and a verdict from the paired per-task difference (1.96·sd/√n): does float64 change the
result, i.e. could precision explain a gap? Rounding differences send the two training
trajectories apart, so a per-task-significant difference can be ordinary run-to-run noise;
a control run (float32, seed + 1) gives that noise's size, and the verdict only credits
precision with a difference that is both significant and larger than the seed-to-seed one.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from algorithms import meta_gradient_per_task
from trainer.config import algorithm_names, inner_config
from trainer.problem import build_problem

from .common import (
    POS,
    THETA_SOURCES,
    base_overrides,
    flat_rows,
    progress,
    train_config,
    train_run,
)

COLUMNS = ["inner_steps", "task", "rel_diff", "norm32", "norm64", "nonfinite32", "nonfinite64", "theta_source",
           "inner_lr"]
TRAIN_COLUMNS = ["dtype", "metric", "mean", "ci95", "n", "verdict", "status", "paired_diff", "paired_ci95",
                 "seed", "role", "control_diff", "fingerprint", "run_dir"]


RULES = {"tasks": 1, "inner_steps": 1, "inner_lr?": POS, "theta_sources": THETA_SOURCES,
         "train.algorithm": algorithm_names, "train.meta_iterations": 0, "train.eval_tasks": 2,
         "train.inner_steps?": 0}  # studies.common.need


def _train_overrides(cfg, dtype: str, seed: int) -> list[str]:
    t = cfg.study.train
    extra = [f"algorithm={t.algorithm}", f"dtype={dtype}", f"meta_iterations={t.meta_iterations}",
             f"eval.num_tasks={t.eval_tasks}", "eval.val_every=0", f"seed={seed}"]
    if t.inner_steps is not None:
        extra.append(f"inner_steps={t.inner_steps}")
    return base_overrides(cfg, *extra)


def paired_diff(a: dict, b: dict) -> tuple[float, float] | None:
    """Mean per-task difference b − a on the same test tasks and its 95% half-width, or None."""
    if a["status"] != "completed" or b["status"] != "completed" or \
            a["test"]["fingerprint"] != b["test"]["fingerprint"]:
        return None
    d = torch.tensor(b["test"]["per_task"], dtype=torch.float64) - torch.tensor(a["test"]["per_task"], dtype=torch.float64)
    return d.mean().item(), 1.96 * d.std(unbiased=False).item() / math.sqrt(d.numel())


def verdict(s32: dict, s64: dict, control: dict | None = None) -> str:
    """Does float64 change the result beyond noise? ``control``: float32 with another seed."""
    if s32["status"] != "completed" or s64["status"] != "completed":
        both = f"float32 {s32['status']}, float64 {s64['status']}"
        if s64["status"] == "completed":
            return f"yes: {both} — float32 is numerically unstable here"
        return f"inconclusive: {both}"
    pd = paired_diff(s32, s64)
    if pd is None:
        return "inconclusive: the two runs were tested on different tasks"
    mean, ci = pd
    metric = s32["test"]["metric"]
    what = f"float64 − float32 = {mean:+.4g} ± {ci:.2g} ({metric}, paired 95% CI, n={s32['test']['n']})"
    if abs(mean) <= ci:
        return f"no: {what} is not significant — precision does not explain the gap"
    ctrl = paired_diff(s32, control) if control else None
    if ctrl is not None and abs(mean) <= abs(ctrl[0]):
        return (f"no: {what} is within the float32 seed-to-seed difference ({ctrl[0]:+.4g}) — "
                "trajectory noise, not precision")
    better = mean < 0 if metric == "mse" else mean > 0
    if better:
        tail = "" if ctrl is not None else " (no seed control to compare with)"
        return f"possibly: {what} — float64 is significantly better{tail}"
    return f"no: {what} — float64 is significantly worse"


def gradient_rows(loss_fn, theta32: dict, tasks32, ks, inner: dict, source: str) -> list[dict]:
    """MAML meta-gradient of every task in float32 and float64 at the same θ and data."""
    theta64 = {k: v.double() for k, v in theta32.items()}
    tasks64 = tuple(t.double() if t.is_floating_point() else t for t in tasks32)  # labels stay integer
    rows = []
    for K in progress(ks, desc=f"precision ({source})"):
        cfg_k = {**inner, "steps": int(K)}
        g32, _ = meta_gradient_per_task("maml", loss_fn, theta32, tasks32, cfg_k, diagnostics_full=False)
        g64, _ = meta_gradient_per_task("maml", loss_fn, theta64, tasks64, cfg_k, diagnostics_full=False)
        A, B = flat_rows(g32), flat_rows(g64)
        for i in range(A.shape[0]):
            a, b = A[i], B[i]
            bad32, bad64 = not bool(torch.isfinite(a).all()), not bool(torch.isfinite(b).all())
            ok = not (bad32 or bad64) and b.norm() > 0
            rows.append({"inner_steps": int(K), "task": i,
                         "rel_diff": float((a - b).norm() / b.norm()) if ok else float("nan"),
                         "norm32": float(a.norm()), "norm64": float(b.norm()), "nonfinite32": bad32,
                         "nonfinite64": bad64, "theta_source": source, "inner_lr": inner["lr"]})
    return rows


def run(cfg, out_dir: Path) -> dict:
    s = cfg.study
    runs = [("float32", int(cfg.seed), "paired"), ("float64", int(cfg.seed), "paired")]
    if s.train.seed_control:
        runs.append(("float32", int(cfg.seed) + 1, "control"))
    summaries, tags, params32 = {}, {}, None
    for dtype, seed, role in runs:
        tag = tags[(dtype, role)] = f"{dtype}" if role == "paired" else f"{dtype}_seed{seed}"
        summary, params = train_run(_train_overrides(cfg, dtype, seed), out_dir / "train" / tag)
        summaries[(dtype, role)] = summary
        if (dtype, role) == ("float32", "paired") and summary["status"] == "completed":
            params32 = params
    s32, s64 = summaries[("float32", "paired")], summaries[("float64", "paired")]
    control = summaries.get(("float32", "control"))
    text = verdict(s32, s64, control)
    pd, cd = paired_diff(s32, s64), (paired_diff(s32, control) if control else None)
    train_rows = []
    for (dtype, seed, role) in runs:
        sm = summaries[(dtype, role)]
        t = sm.get("test") or {}
        train_rows.append({"dtype": dtype, "metric": t.get("metric"), "mean": t.get("mean"), "ci95": t.get("ci95"),
                           "n": t.get("n"), "verdict": text, "status": sm["status"],
                           "paired_diff": pd[0] if pd else None, "paired_ci95": pd[1] if pd else None,
                           "seed": seed, "role": role, "control_diff": cd[0] if cd else None,
                           # relative to the study folder: a record names no machine's paths
                           "fingerprint": t.get("fingerprint"), "run_dir": f"train/{tags[(dtype, role)]}"})
    print(f"precision: {text}")

    tcfg = train_config(_train_overrides(cfg, "float32", int(cfg.seed)))
    problem32 = build_problem(tcfg, dtype="float32", device=cfg.device)
    inner = inner_config(tcfg)
    if s.inner_lr is not None:
        inner["lr"] = float(s.inner_lr)
    tasks32 = problem32.tasks(int(s.tasks), int(cfg.task_seed))
    rows = []
    for source in s.theta_sources:
        if source == "trained" and params32 is None:
            print("precision: the float32 run did not complete; skipping theta_source=trained")
            continue
        theta = problem32.params if source == "init" else problem32.cast(params32)
        rows += gradient_rows(problem32.loss_fn, theta, tasks32, s.inner_steps, inner, source)
    return {"precision.csv": (COLUMNS, rows), "precision_train.csv": (TRAIN_COLUMNS, train_rows)}
