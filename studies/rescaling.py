"""Does rescaling the data remove the numerical problems? (Reviewer R2.2 of Rajeswaran et al. 2019.)

Sinusoid targets multiplied by each ``scale`` (``dataset.target_scale``; 0.2 maps the amplitudes
U[0.1, 5] onto U[0.02, 1], i.e. roughly unit-variance targets). The squared loss and its
curvature in the network's output scale with scale², so a rescaling is the knob a practitioner
would reach for first. Two measurements per scale:

(a) Precision: the MAML meta-gradient (Finn et al. 2017, exact through the unroll) of the same
    tasks at the initial θ in float32 and float64 for K = 1…100 inner steps, as in the precision
    study: ||g32 − g64|| / ||g64|| and non-finite entries. Does rescaling shrink float32's error?
(b) Training: the given experiment (by default sinusoid iMAML-GD, whose runs diverged) on the
    rescaled targets for ``train.meta_iterations`` iterations, per seed: did it diverge, where, and
    its test MSE converted back to the original units (÷ scale²) so that scales compare.
"""
from __future__ import annotations

import math
from pathlib import Path

import checks
from trainer.config import inner_config
from trainer.problem import build_problem

from .common import POS, progress, train_config, train_run
from .precision import gradient_rows

COLUMNS = ["scale", "inner_steps", "task", "rel_diff", "norm32", "norm64", "nonfinite32", "nonfinite64"]
TRAIN_COLUMNS = ["scale", "seed", "experiment", "status", "iterations_done", "meta_iterations", "failure_stage",
                 "test_mse_scaled", "test_mse", "test_ci95", "run_dir"]
RULES = {"scales": POS, "tasks": 1, "inner_steps": 1, "train.meta_iterations": 0, "train.seeds": 0,
         "train.eval_tasks": 2}  # studies.common.need


def validate(cfg) -> None:
    """The dataset must declare ``target_scale`` (its targets can be rescaled), and the trained
    experiment must run on that dataset."""
    if "target_scale" not in cfg.dataset:
        raise ValueError(f"study=rescaling rescales a dataset's targets; dataset={cfg.dataset.name} declares no "
                         "target_scale (use a dataset whose config does, such as dataset=sinusoid)")
    trained = train_config([f"experiment={cfg.study.train.experiment}"]).dataset.name
    checks.choice("study.train.experiment's dataset", trained, (cfg.dataset.name,))


def _train_overrides(cfg, scale: float, seed: int) -> list[str]:
    t = cfg.study.train
    return [f"experiment={t.experiment}", f"seed={seed}", f"device={cfg.device}",
            f"meta_iterations={t.meta_iterations}", f"eval.num_tasks={t.eval_tasks}", "eval.val_every=0",
            f"dataset.target_scale={scale}", *[str(o) for o in t.overrides],
            *[str(o) for o in cfg.get("train_overrides", [])]]


def run(cfg, out_dir: Path) -> dict:
    s = cfg.study
    rows, train_rows = [], []
    for scale in progress([float(x) for x in s.scales], desc="rescaling"):
        tcfg = train_config([f"dataset={cfg.dataset.name}", f"seed={cfg.seed}", f"device={cfg.device}",
                             f"dataset.target_scale={scale}"])
        problem = build_problem(tcfg, dtype="float32", device=cfg.device)
        tasks = problem.tasks(int(s.tasks), int(cfg.task_seed))
        for r in gradient_rows(problem.loss_fn, problem.params, tasks, s.inner_steps, inner_config(tcfg), "init"):
            rows.append({"scale": scale, **{k: r[k] for k in COLUMNS if k in r}})
        for seed in s.train.seeds:
            tag = f"scale{scale:g}-s{seed}"
            summary, _ = train_run(_train_overrides(cfg, scale, int(seed)), out_dir / "train" / tag)
            test = summary.get("test") or {}
            mean = test.get("mean")
            ok = mean is not None and math.isfinite(mean)
            train_rows.append({
                "scale": scale, "seed": int(seed), "experiment": s.train.experiment, "status": summary["status"],
                "iterations_done": summary["iterations_done"], "meta_iterations": int(s.train.meta_iterations),
                "failure_stage": (summary.get("failure") or {}).get("stage"),
                "test_mse_scaled": mean if ok else None, "test_mse": mean / scale ** 2 if ok else None,
                "test_ci95": test["ci95"] / scale ** 2 if ok else None,
                "run_dir": f"train/{tag}"})  # relative to the study folder: no machine's paths
            print(f"rescaling: scale {scale:g} seed {seed}: {summary['status']} at {summary['iterations_done']}")
    return {"rescaling.csv": (COLUMNS, rows), "rescaling_train.csv": (TRAIN_COLUMNS, train_rows)}
