"""Failure regimes: where does MAML break and iMAML not, and vice versa?

Short training runs (the shared trainer) over a grid of λ (down to values where the
proximal inner problem is no longer strongly convex), inner steps K (too few for iMAML's
assumption of a solved inner problem, Rajeswaran et al. 2019 Thm. 1), CG steps and inner
learning rate (too large: the unrolled MAML recursion explodes). ``mode: axes`` varies one
knob at a time around ``base``; ``mode: product`` runs the full grid. λ and CG steps only
apply to iMAML (empty for the others). Each run's status, in order of precedence:

- ``non-finite``: the trainer stopped on a non-finite loss or meta-gradient (its ``diverged``),
  or the final test metric is not finite;
- ``diverged``: finite but useless — test MSE above ``diverge_factor`` × the zero predictor's
  MSE on the same test tasks, or accuracy at chance level (≤ 1/ways + 0.02);
- ``cg_not_converged`` (iMAML): median CG relative residual over the run's logged
  iterations above ``cg_threshold``;
- ``completed`` otherwise (``oom`` / ``interrupted`` pass through from the trainer).
"""
from __future__ import annotations

import itertools
import math
import statistics
from pathlib import Path

import checks
from trainer.config import algorithm_config, algorithm_names
from trainer.evaluate import sample_fixed
from trainer.problem import build_problem
from trainer.records import read_jsonl

from .common import POS, base_overrides, progress, train_config, train_run

KNOBS = ("lam", "inner_steps", "cg_steps", "inner_lr")
HPARAM_KNOBS = ("lam", "cg_steps")  # varied only for an algorithm whose config has these hyperparameters (iMAML)
COLUMNS = ["algorithm", "lam", "inner_steps", "cg_steps", "inner_lr", "final_metric", "metric", "status",
           "cg_residual", "inner_grad_norm", "iterations_done", "reason", "run_dir"]


RULES = {"algorithms": algorithm_names, "mode": ("axes", "product"), "meta_iterations": 0, "meta_batch_size": 1,
         "eval_tasks": 2, "cg_threshold": POS, "diverge_factor": POS}  # studies.common.need


def validate(cfg) -> None:
    s = cfg.study
    for k in KNOBS:
        if k not in s.base:
            raise ValueError(f"study.base.{k} is missing; base needs {list(KNOBS)}")
        values = [s.base[k], *s.axes.get(k, [])]
        for v in values:
            if k in ("lam", "inner_lr"):
                checks.number(f"study.axes.{k}", v)
            else:
                checks.integer(f"study.axes.{k}", v, 1 if k == "cg_steps" else 0)


def grid(s, algorithm: str) -> list[dict]:
    """The points of one algorithm: knob → value (None where the knob does not apply)."""
    own = algorithm_config(algorithm).hparams or {}
    knobs = [k for k in KNOBS if k not in HPARAM_KNOBS or k in own]
    base = {k: s.base[k] for k in knobs}
    if s.mode == "product":
        values = [list(s.axes.get(k, [base[k]])) for k in knobs]
        points = [dict(zip(knobs, combo)) for combo in itertools.product(*values)]
    else:
        points = [base] + [{**base, k: v} for k in knobs for v in s.axes.get(k, []) if v != base[k]]
    out, seen = [], set()
    for p in points:
        p = {k: p.get(k) for k in KNOBS}
        key = tuple(p.values())
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def classify(summary: dict, metrics: list[dict], zero_mse: float | None, ways: int, s) -> tuple[str, str]:
    """(status, reason) of one run; see the module docstring."""
    if summary["status"] == "diverged":
        return "non-finite", (summary.get("failure") or {}).get("reason", "non-finite")
    if summary["status"] != "completed":
        return summary["status"], (summary.get("failure") or {}).get("reason", "")
    test = summary["test"]
    m = test["mean"]
    if not math.isfinite(m):
        return "non-finite", "non-finite test metric"
    if test["metric"] == "mse" and zero_mse and m > float(s.diverge_factor) * zero_mse:
        return "diverged", f"test MSE {m:.3g} > {s.diverge_factor} × zero predictor's {zero_mse:.3g}"
    if test["metric"] == "accuracy" and m <= 1.0 / ways + 0.02:
        return "diverged", f"test accuracy {m:.3f} at chance (1/{ways})"
    cg = [r["cg_residual"] for r in metrics if "cg_residual" in r]
    if cg and statistics.median(cg) > float(s.cg_threshold):
        return "cg_not_converged", f"median CG residual {statistics.median(cg):.3g} > {s.cg_threshold}"
    return "completed", ""


def zero_predictor_mse(cfg, overrides) -> float | None:
    """MSE of predicting 0 on the run's fixed test tasks (E[y²]): the yardstick of 'diverged'."""
    tcfg = train_config(overrides)
    problem = build_problem(tcfg, device="cpu")
    if problem.metric != "mse":
        return None
    _, _, _, yq = sample_fixed(problem.source, "test", int(tcfg.eval.test_seed), 0, int(tcfg.eval.num_tasks), "cpu")
    return float((yq.double() ** 2).mean())


def run(cfg, out_dir: Path) -> dict:
    s = cfg.study
    common = [f"meta_iterations={s.meta_iterations}", f"meta_batch_size={s.meta_batch_size}",
              f"eval.num_tasks={s.eval_tasks}", "eval.val_every=0",
              "diagnostics=true"]  # its ||∇G(φ_K)|| column is a median over every iteration
    zero = zero_predictor_mse(cfg, base_overrides(cfg, *common))
    ways = int(cfg.ways or 1)
    jobs = [(a, p) for a in s.algorithms for p in grid(s, a)]
    rows = []
    for n, (algo, p) in enumerate(progress(jobs, desc="failures")):
        extra = [f"algorithm={algo}", f"inner_steps={p['inner_steps']}", f"inner_lr={p['inner_lr']}", *common]
        extra += [f"algorithm.hparams.{k}={p[k]}" for k in HPARAM_KNOBS if p[k] is not None]
        run_dir = out_dir / "train" / f"{n:03d}_{algo}"
        summary, _ = train_run(base_overrides(cfg, *extra), run_dir)
        metrics = read_jsonl(run_dir / "metrics.jsonl")
        status, reason = classify(summary, metrics, zero, ways, s)
        test = summary.get("test") or {}
        med = (lambda k: statistics.median([r[k] for r in metrics if k in r]) if any(k in r for r in metrics) else None)
        rows.append({"algorithm": algo, **p, "final_metric": test.get("mean"), "metric": test.get("metric"),
                     "status": status, "cg_residual": med("cg_residual"), "inner_grad_norm": med("inner_grad_norm"),
                     "iterations_done": summary.get("iterations_done"), "reason": reason, "run_dir": str(run_dir)})
        print(f"failures: {algo:8s} " + " ".join(f"{k}={v}" for k, v in p.items() if v is not None) +
              f" → {status} ({test.get('metric')}={test.get('mean')})", flush=True)
    return {"failures.csv": (COLUMNS, rows)}
