"""Report generator on synthetic run folders.

The fixture builds every kind of record the report must cope with: completed runs with two
seeds, two algorithms sharing a test-task fingerprint and one that does not, a diverged,
an interrupted and a killed run, a corrupt and a truncated summary, a sinusoid inner-step
sweep, a mini-ImageNet paper-scale run and one folder per study (plus a broken study).
The tests check the report's structure (sections, narrow tables without constant columns,
a first page that answers the reviewers' questions, one sign for every paired difference) and the facts each section must
state, not a frozen copy of the output.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from reporting import studies as study_sections
from reporting.generate import generate

REPO = Path(__file__).resolve().parents[1]
FP_OMNI, FP_OTHER, FP_SIN = "a" * 64, "b" * 64, "c" * 64
N_TASKS = 40


def summary(**over) -> dict:
    """A completed cpu-profile Omniglot 5w1s MAML record; keyword arguments override keys
    (dotted keys such as ``inner.steps`` reach into the nested dicts)."""
    d = {"schema_version": 1, "kind": "train", "status": "completed", "run_dir": "ignored", "algorithm": "maml",
         "variant": "maml", "label": "MAML", "dataset": "omniglot", "ways": 5, "shots": 1, "query_shots": 1,
         "profile": "cpu", "experiment": "omniglot_5w1s", "meta_iterations": 200, "iterations_done": 200,
         "meta_batch_size": 8,
         "inner": {"optimizer": "sgd", "steps": 1, "test_steps": 3, "lr": 0.4, "prox_lam": 0.0},
         "imaml": None, "outer": {"optimizer": "adam", "lr": 0.001, "clip": None, "anneal": False},
         "bn_mode": "transductive", "seed": 0, "seeds": {"init": 0, "train_tasks": 1, "test_tasks": 12345},
         "dtype": "float32", "device": "cpu", "device_name": "test CPU (2 threads)",
         "test": None, "timing": {"median_iter_s": 0.05, "train_wall_s": 10.0, "eval_wall_s": 1.0,
                                  "total_wall_s": 11.5},
         "memory": {"gpu_peak_bytes": None, "alloc_peak_bytes": 3 * 2**20, "rss_peak_bytes": 400 * 2**20},
         "versions": {"python": "3.11.7", "torch": "2.14.1", "learn2learn": "0.2.0", "git_commit": "0123456789abcdef"},
         "data": {"archive_sha256": {}}, "failure": None, "config": {}}
    for key, value in over.items():
        cur = d
        *path, last = key.split(".")
        for p in path:
            cur = cur[p]
        cur[last] = value
    return d


def accuracy_test(p: float, seed: int, fingerprint: str = FP_OMNI, queries: int = 5) -> dict:
    """Per-task accuracies of a run that answers each of ``queries`` queries right w.p. p."""
    per_task = (np.random.default_rng(seed).binomial(queries, p, N_TASKS) / queries).tolist()
    arr = np.asarray(per_task)
    return {"metric": "accuracy", "mean": float(arr.mean()), "std": float(arr.std()),
            "ci95": float(1.96 * arr.std() / np.sqrt(arr.size)), "n": N_TASKS, "per_task": per_task,
            "fingerprint": fingerprint, "steps": 3, "by_steps": {}}


def mse_test(level: float, seed: int) -> dict:
    per_task = (level * np.random.default_rng(seed).gamma(4.0, 0.25, N_TASKS)).round(6).tolist()
    arr = np.asarray(per_task)
    return {"metric": "mse", "mean": float(arr.mean()), "std": float(arr.std()),
            "ci95": float(1.96 * arr.std() / np.sqrt(arr.size)), "n": N_TASKS, "per_task": per_task,
            "fingerprint": FP_SIN, "steps": 10,
            "by_steps": {"1": round(level * 1.9, 6), "5": round(level * 1.1, 6), "10": float(arr.mean())}}


def _write(folder: Path, name: str, text: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text, encoding="utf-8")


IMAML_HF = {"algorithm": "imaml", "variant": "imaml_hf", "label": "iMAML-HF", "inner.steps": 16,
            "inner.test_steps": 16, "inner.optimizer": "hf", "inner.lr": 0.1,
            "imaml": {"lam": 2.0, "cg_steps": 5, "cg_damping": 0.0}}


# sinusoid records train at K=10 and test at K=5 (the MAML paper's protocol)
SIN = {"dataset": "sinusoid", "ways": 1, "shots": 10, "query_shots": 10, "bn_mode": None, "meta_batch_size": 25,
       "inner.lr": 0.01, "inner.test_steps": 10, "config": {"eval": {"shots": 5, "query_shots": 100}}}


def build_runs(root: Path) -> Path:
    runs = root / "runs"
    t = runs / "train"
    records = {
        "2026-01-01_00-00-00": summary(test=accuracy_test(0.90, 1)),
        "2026-01-01_00-10-00": summary(seed=1, test=accuracy_test(0.88, 2)),
        "2026-01-01_00-20-00": summary(**IMAML_HF, test=accuracy_test(0.95, 3)),
        "2026-01-01_00-30-00": summary(**IMAML_HF, seed=1, test=accuracy_test(0.94, 4)),
        # same setting, but evaluated on other test tasks: must be refused, never paired
        "2026-01-01_00-40-00": summary(algorithm="fomaml", variant="fomaml", label="FOMAML",
                                       test=accuracy_test(0.85, 5, FP_OTHER)),
        "2026-01-01_00-50-00": summary(algorithm="reptile", variant="reptile", label="Reptile", status="diverged",
                                       iterations_done=37,
                                       failure={"iteration": 37, "reason": "non-finite meta-gradient",
                                                "last_metrics": {}}),
        "2026-01-01_01-00-00": summary(algorithm="imaml", variant="imaml", label="iMAML-GD", status="interrupted",
                                       iterations_done=40, imaml={"lam": 2.0, "cg_steps": 5, "cg_damping": 0.0}),
        "2026-01-01_01-40-00": summary(algorithm="reptile", variant="reptile", label="Reptile",
                                       bn_mode="per_example", **{"outer.optimizer": "sgd", "outer.lr": 1.0,
                                                                     "outer.anneal": True, "inner.optimizer": "adam"},
                                       test=accuracy_test(0.92, 6)),
        "2026-01-02_00-00-00": summary(dataset="miniimagenet", profile="paper", experiment="miniimagenet_5w1s",
                                       meta_iterations=60000, iterations_done=60000, meta_batch_size=4,
                                       device="cuda", **{"outer.clip": 10.0, "inner.lr": 0.01, "inner.steps": 5,
                                                        "inner.test_steps": 10},
                                       test=accuracy_test(0.487, 7, "d" * 64)),
    }
    # killed before its final record: the trainer leaves status "running"
    records["2026-01-01_01-50-00"] = summary(algorithm="imaml", variant="imaml", label="iMAML-GD", status="running",
                                             iterations_done=0, seed=1,
                                             imaml={"lam": 2.0, "cg_steps": 5, "cg_damping": 0.0})
    for name, rec in records.items():
        _write(t / name, "summary.json", json.dumps(rec, indent=1))
    _write(t / "2026-01-01_01-10-00", "summary.json", "\x00garbage{{ not json")
    valid = json.dumps(summary(seed=2, test=accuracy_test(0.9, 8)))
    _write(t / "2026-01-01_01-20-00", "summary.json", valid[: len(valid) // 2])
    _write(t / "2026-01-01_01-30-00", "metrics.jsonl", '{"iter": 1, "train_loss": 1.6}\n')
    sweep = runs / "sweep" / "2026-01-03_00-00-00"
    # MAML protocol: train at K=10, test at K=5 (the test shots live in the config's eval group)
    sin = dict(SIN, experiment="sweep_sinusoid", max_train_minutes=1)
    for job, steps in enumerate((1, 2, 5)):
        rec = summary(**sin, **{"inner.steps": steps}, test=mse_test(0.30 + 0.1 / steps, 10 + job))
        _write(sweep / str(job), "summary.json", json.dumps(rec))
    # the same protocol, run as comparison a's named experiments: the sinusoid table and pairs use these
    for name, over in (("sinusoid_maml", {}), ("sinusoid_fomaml", {"algorithm": "fomaml", "variant": "fomaml",
                                                                   "label": "FOMAML"})):
        rec = summary(**{**sin, **over, "experiment": name, "inner.steps": 1},
                      test=mse_test(0.6 if over else 0.4, 20 if over else 10))
        _write(t / name, "summary.json", json.dumps(rec))
    build_protocol_runs(runs / "reproduce")
    build_sinusoid_seeds(runs, sin)
    build_studies(runs / "study")
    return runs


def zero_predictor() -> dict:
    """The MSE of predicting 0 on the FP_SIN test tasks: the same for every record on them."""
    per_task = (4.0 * np.random.default_rng(0).gamma(4.0, 0.25, N_TASKS)).round(6).tolist()
    arr = np.asarray(per_task)
    return {"mean": float(arr.mean()), "ci95": float(1.96 * arr.std() / np.sqrt(arr.size)), "per_task": per_task}


SIN_LEVELS = {"maml": ("MAML", 0.4), "fomaml": ("FOMAML", 0.55), "imaml_release": ("iMAML-GD (release)", 1.5),
              "imaml_hf": ("iMAML-HF", 2.4), "pretrained": ("Pretrained", 2.4)}


def sinusoid_run(name: str, seed: int, sin: dict, **over) -> dict:
    """A 1-minute sinusoid comparison run of the MAML protocol (three seeds share the test tasks)."""
    label, level = SIN_LEVELS[name]
    algo = {"pretrained": "fomaml", "imaml_release": "imaml", "imaml_hf": "imaml"}.get(name, name)
    test = dict(mse_test(level, 100 * seed + len(name)), zero_predictor=zero_predictor())
    rec = {**sin, "algorithm": algo, "variant": "imaml" if name == "imaml_release" else name, "label": label,
           "experiment": f"sinusoid_{name}", "protocol": f"{label} protocol", "profile": "paper", "seed": seed,
           "meta_iterations": 70000, "iterations_done": 5000, "stopped_by": "max_train_minutes",
           "budget": "capped at 1 min: 5,000 of 70,000 iterations", "inner.steps": 0 if name == "pretrained" else 1,
           "test": test, **over}
    return summary(**rec)


def build_sinusoid_seeds(runs: Path, sin: dict) -> None:
    """Three seeds per algorithm with a pretrained baseline each, one diverged seed, two paper-budget
    runs (no zero predictor of their own), a running campaign's state and a selection on validation."""
    for name in SIN_LEVELS:
        for seed in range(3):
            over = {}
            if name == "imaml_release" and seed == 2:
                over = {"status": "diverged", "test": None, "iterations_done": 870,
                        "failure": {"iteration": 871, "reason": "non-finite loss or meta-gradient", "last_metrics": {}}}
            _write(runs / "repro_sin" / f"{name}-s{seed}", "summary.json",
                   json.dumps(sinusoid_run(name, seed, sin, **over)))
    for seed in (0, 1):
        test = mse_test(0.35 + 0.02 * seed, 300 + seed)
        rec = sinusoid_run("maml", seed, sin, max_train_minutes=None, iterations_done=70000, test=test,
                           stopped_by="meta_iterations", budget="70,000 of 70,000 iterations (paper profile)")
        _write(runs / "campaign" / f"maml-s{seed}", "summary.json", json.dumps(rec))
    _write(runs / "campaign" / "fomaml-s0" / "unfinished", "metrics.jsonl", '{"iter": 1}\n')
    sel = runs / "selection" / "imaml_hf"
    for cand, kind, status in (("steps1", "selection", "completed"), ("steps5", "train", "diverged")):
        rec = sinusoid_run("imaml_hf", 0, sin, kind=kind, status=status, test=None)
        _write(sel / cand, "summary.json", json.dumps(rec))
    _write(sel, "selection.json", json.dumps({
        "kind": "selection", "algorithm": "imaml", "experiment": "sinusoid_imaml_hf", "setting": "sinusoid",
        "metric": "mse", "budget_minutes": 1, "val_tasks": 200, "seed": 0, "grid": {"inner_steps": [1, 5]},
        "winner": {"inner_steps": 1}, "winner_name": "steps1",
        "candidates": [{"candidate": "steps1", "status": "completed"}, {"candidate": "steps5", "status": "diverged"}]}))


def protocol_run(label: str, iterations: int, p: float, seed: int, **over) -> dict:
    """A comparison-a record: a published-protocol experiment stopped by a 4-minute budget."""
    algo = {"MAML": ("maml", "maml"), "iMAML-HF": ("imaml", "imaml_hf")}[label]
    extra = IMAML_HF if label == "iMAML-HF" else {}
    return summary(**{**extra, "algorithm": algo[0], "variant": algo[1], "label": label, "profile": "paper",
                      "experiment": f"omniglot_5w_{algo[1]}", "protocol": f"{label} authors", "meta_batch_size": 32,
                      "meta_iterations": 60000, "iterations_done": iterations, "max_train_minutes": 4,
                      "stopped_by": "max_train_minutes", "timing.train_wall_s": 240.0,
                      "test": accuracy_test(p, seed), **over})


def build_protocol_runs(root: Path) -> None:
    for name, rec, curve in (("maml-s0", protocol_run("MAML", 500, 0.9, 30), (0.2, 0.7, 0.85)),
                             ("imaml_hf-s0", protocol_run("iMAML-HF", 20, 0.5, 31), (0.2, 0.4))):
        _write(root / name, "summary.json", json.dumps(rec))
        rows = ["iter,train_loss,train_wall_s,val_metric"]
        rows += [f"{i + 1},1.0,{60.0 * i:.1f},{v}" for i, v in enumerate(curve)]
        _write(root / name, "metrics.csv", "\n".join(rows) + "\n")


SIN_STUDY = {"dataset": {"name": "sinusoid"}, "seed": 0}


def _study(folder: Path, name: str, files: dict[str, str], config: dict | None = None) -> None:
    meta = {"schema_version": 1, "kind": "study", "study": name, "status": "completed", "versions": {},
            "device": "cpu", "config": config or {}, "csv": f"{name}.csv"}
    _write(folder, "study.json", json.dumps(meta))
    for fname, text in files.items():
        _write(folder, fname, text)


def build_studies(root: Path) -> None:
    fid = ["theta_source,task,method,inner_steps,cg_steps,cosine,rel_error,hvps,grad_evals"]
    for task in range(2):
        for k in (1, 10):
            for cg in (1, 5):
                err = 0.5 / (k * cg) + 0.01 * task
                fid.append(f"init,{task},imaml,{k},{cg},{1 - err**2 / 2:.6f},{err:.6f},{k + cg},{k + 1}")
            fid.append(f"init,{task},fomaml,{k},,{0.8 + 0.01 * task:.6f},{0.6 - 0.01 * k:.6f},0,{k + 1}")
    _study(root / "fidelity" / "2026-01-04_00-00-00", "fidelity", {"fidelity.csv": "\n".join(fid) + "\n"},
           dict(SIN_STUDY, study={"activation": "tanh", "lam": 2.0, "inner_steps": [1, 10], "cg_steps": [1, 5],
                                  "theta_sources": ["init"]}))
    prec = ["inner_steps,task,rel_diff,norm32,norm64,nonfinite32,nonfinite64"]
    for k in (1, 10, 100):
        for task in range(2):
            nonfinite = int(k == 100 and task == 1)
            prec.append(f"{k},{task},{1e-7 * k * (task + 1):.3e},{1.5 + task},{1.5 + task},{nonfinite},0")
    train = "dtype,metric,mean,ci95,n,verdict\nfloat32,accuracy,0.91,0.02,40,precision does not explain the gap\n" \
            "float64,accuracy,0.912,0.02,40,precision does not explain the gap\n"
    _study(root / "precision" / "2026-01-04_00-00-00", "precision",
           {"precision.csv": "\n".join(prec) + "\n", "precision_train.csv": train})
    ass = ["checkpoint,task,lam,eig_min,eig_max,strongly_convex,hess_lipschitz,inner_grad_norm,cg_residual,"
           "query_grad_norm"]
    for ckpt in (0, 100):
        for lam in (0.5, 2.0):
            for task, eig in enumerate((-1.0, 0.2, -0.1)):
                ass.append(f"{ckpt},{task},{lam},{eig},{10 + task},{eig + lam > 0},{0.5 * (task + 1)},"
                           f"{1e-3 * (task + 1)},{1e-2 / lam},{2.0 + ckpt / 100}")
    _study(root / "assumptions" / "2026-01-04_00-00-00", "assumptions", {"assumptions.csv": "\n".join(ass) + "\n"},
           dict(SIN_STUDY, study={"lams": [0.5, 2.0], "checkpoints": [0, 100], "train": {"algorithm": "imaml",
                                                                                     "inner_steps": 10}}))
    cost = ["algorithm,inner_optimizer,inner_steps,median_iter_s,cpu_time_s,alloc_peak_bytes,rss_peak_bytes,"
            "gpu_peak_bytes,device,status"]
    for algo, opt in (("maml", "sgd"), ("imaml", "sgd"), ("imaml", "hf")):
        for k in (1, 10, 80):
            if algo == "maml" and k == 80:
                cost.append(f"{algo},{opt},{k},,,,,,cpu,oom")
                continue
            mem = (k if algo == "maml" else 1) * 2**20
            cost.append(f"{algo},{opt},{k},{0.001 * k},{0.0012 * k},{mem},{300 * 2**20},,cpu,completed")
    _study(root / "cost" / "2026-01-04_00-00-00", "cost", {"cost.csv": "\n".join(cost) + "\n"})
    # an older cost run whose CSV lost a column: skipped, with the reason
    _study(root / "cost" / "2026-01-03_00-00-00", "cost", {"cost.csv": "algorithm,inner_steps\nmaml,1\n"})
    fail = ["algorithm,lam,inner_steps,cg_steps,inner_lr,final_metric,metric,status"]
    for lam in (0.01, 2.0):
        for k in (1, 16):
            status = "cg_not_converged" if lam == 0.01 else "completed"
            fail.append(f"imaml,{lam},{k},5,0.1,{0.2 if lam == 0.01 else 0.9},accuracy,{status}")
    for lr in (0.1, 10.0):
        fail.append(f"maml,,1,,{lr},{'' if lr == 10.0 else 0.9},accuracy,{'diverged' if lr == 10.0 else 'completed'}")
    _study(root / "failures" / "2026-01-04_00-00-00", "failures", {"failures.csv": "\n".join(fail) + "\n"})
    _study(root / "deviations" / "short", "deviations", {"deviations.csv": deviations_csv(DEVIATION_ROWS, 3)})
    _study(root / "deviations" / "long", "deviations", {"deviations.csv": deviations_csv(LONG_ROWS, 60)})


# (group, rung, deviations on, algorithm, accuracy, ci95, vs, diff mean/low/high, kind, p, split, iterations)
PAPER_SPLIT, RELEASE_SPLIT, LEAKY = ("standard", 1, "1100/100/423", 0), ("standard", 123, "1200/0/423", 0), \
    ("release_leaky", 123, "1200/0/423", 310)
DEVIATION_ROWS = [
    ("ladder", "paper", "none", "iMAML-GD", 0.40, 0.012, None, None, "", PAPER_SPLIT, 30),
    ("ladder", "damped_cg", "damped_cg", "iMAML-GD", 0.62, 0.013, "paper", (0.22, 0.20, 0.24), "paired",
     PAPER_SPLIT, 31),
    ("ladder", "test_lam0", "damped_cg+test_lam0", "iMAML-GD", 0.63, 0.013, "damped_cg", (0.01, -0.005, 0.025),
     "paired", PAPER_SPLIT, 31),
    ("ladder", "data", "damped_cg+test_lam0+data", "iMAML-GD", 0.66, 0.012, "test_lam0", (0.03, 0.012, 0.048),
     "unpaired", RELEASE_SPLIT, 30),
    ("removed", "release", "damped_cg+test_lam0+data", "iMAML-GD", 0.66, 0.012, None, None, "", RELEASE_SPLIT, 30),
    ("removed", "damped_cg", "test_lam0+data", "iMAML-GD", None, None, "release", None, "", RELEASE_SPLIT, 12),
    ("removed", "data", "damped_cg+test_lam0", "iMAML-GD", 0.63, 0.013, "release", (-0.03, -0.048, -0.012),
     "unpaired", PAPER_SPLIT, 31),
    ("leaky", "clean", "damped_cg+test_lam0+data", "iMAML-GD", 0.66, 0.012, None, None, "", RELEASE_SPLIT, 30),
    ("leaky", "leaky", "damped_cg+test_lam0+data", "iMAML-GD", 0.71, 0.011, "clean", (0.05, 0.034, 0.066),
     "unpaired", LEAKY, 30),
    ("maml", "maml", "none", "MAML", 0.80, 0.010, None, None, "", PAPER_SPLIT, 400),
    ("maml", "data", "data", "MAML", 0.82, 0.010, "maml", (0.02, 0.006, 0.034), "unpaired", RELEASE_SPLIT, 410),
]
LONG_ROWS = [
    ("endpoints", "paper", "none", "iMAML-GD", 0.55, 0.012, None, None, "", PAPER_SPLIT, 700),
    ("endpoints", "release", "damped_cg+test_lam0+data", "iMAML-GD", 0.90, 0.008, "paper", (0.35, 0.336, 0.364),
     "unpaired", RELEASE_SPLIT, 690),
    ("leaky", "clean", "damped_cg+test_lam0+data", "iMAML-GD", 0.90, 0.008, None, None, "", RELEASE_SPLIT, 690),
    ("leaky", "leaky", "damped_cg+test_lam0+data", "iMAML-GD", 0.95, 0.006, "clean", (0.05, 0.04, 0.06),
     "unpaired", LEAKY, 690),
]


def deviations_csv(rows: list[tuple], minutes: float) -> str:
    """A deviations.csv (the study's columns) of synthetic rows; a row without accuracy diverged."""
    from studies.deviations import COLUMNS

    out = [",".join(COLUMNS)]
    for i, (group, rung, on, algo, acc, ci, vs, diff, kind, split, iters) in enumerate(rows):
        name = "maml" if algo == "MAML" else "paper"
        run = "+".join([name, *(d for d in on.split("+") if d not in ("none", "test_lam0"))])
        r = {"group": group, "rung": rung, "deviations": on, "algorithm": algo, "test_split": split[0],
             "accuracy": acc, "ci95": ci, "n": 600 if acc is not None else None, "iterations_done": iters,
             "train_minutes": minutes if acc is not None else 1.2, "median_iter_s": round(60 * minutes / iters, 3),
             "status": "completed" if acc is not None else "diverged",
             "fingerprint": (FP_OMNI if split == PAPER_SPLIT else FP_OTHER if split == RELEASE_SPLIT else "e" * 64)
             if acc is not None else None,
             "run_dir": f"train/{run}", "vs": vs, "diff_kind": kind or None,
             "diff_p": 0.0001 * (i + 1) if kind == "paired" else None, "split_seed": split[1],
             "split_sizes": split[2], "test_train_overlap": split[3],
             "evaluation": "retest/eval.prox_lam=0.0.json" if "test_lam0" in on else "summary.json",
             "budget_minutes": minutes, "stopped_by": "max_train_minutes", "device": "test CPU (2 threads)"}
        if diff is not None:
            r.update(diff_mean=diff[0], diff_low=diff[1], diff_high=diff[2])
        out.append(",".join("" if r.get(c) is None else str(r[c]) for c in COLUMNS))
    return "\n".join(out) + "\n"


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rep")
    runs = build_runs(root)
    generate(runs, root / "out")
    return root / "out"


SECTIONS = ("## Did the papers reproduce?", "## The reviewers' questions", "## At equal compute", "## Findings",
            "## Contents", "## 1. Published protocols", "## 2. Paired comparisons",
            "## 3. Shared protocol", "## 4. The papers' claims",
            "## 5. Time to accuracy", "## 6. Reviewer studies", "## 7. When the assumptions fail", "## 8. Limitations",
            "## Appendix A. Run inventory",
            "## Appendix B. Skipped records")


def main_tables(md: str) -> list[list[list[str]]]:
    """The Markdown tables before the appendices, each as rows of cells (header first, rule dropped)."""
    tables, cur = [], []
    end = md.find("## Appendix A.")
    for line in md[:end if end >= 0 else None].splitlines() + [""]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").replace("\\|", "¦").split("|")]
            if not set(line) <= set("|-"):
                cur.append(cells)
        elif cur:
            tables.append(cur)
            cur = []
    return tables


def test_report_structure(report_dir: Path):
    """Sections in order, the first page first (at most 150 lines, its first table before line 30), narrow
    main-text tables with no constant column."""
    md = (report_dir / "REPORT.md").read_text()
    at = [md.index(h) for h in SECTIONS]
    assert at == sorted(at), "sections out of order"
    lines = md.splitlines()
    assert len(md[:md.index("## 1.")].splitlines()) <= 150
    assert next(i for i, line in enumerate(lines) if line.startswith("|")) < 30
    tables = main_tables(md)
    assert len(tables) >= 15
    for t in tables:
        assert len(t[0]) <= 10, t[0]
        if len(t) > 2:  # a header and two or more rows
            for i, header in enumerate(t[0]):
                assert len({row[i] for row in t[1:]}) > 1, f"constant column {header!r} in table {t[0]}"


def _first_page(md: str) -> str:
    return md[:md.index("## Contents")]


def test_first_page_answers_every_question_and_findings_are_short(report_dir: Path):
    """Every question of the one questions file has a row; every finding is one claim of at most 40 words
    that links an existing table; every evidence link resolves."""
    from reporting.front import load_questions

    md = (report_dir / "REPORT.md").read_text()
    page = _first_page(md)
    questions = page[page.index("## The reviewers' questions"):page.index("## At equal compute")]
    ids = [q["id"] for q in load_questions()["questions"]]
    assert len(ids) == 14 and all(f"| {i} |" in questions for i in ids)
    assert "| R2.2 |" in questions and "no study yet" in questions  # no rescaling study in the records
    findings = [line for line in page[page.index("## Findings"):].splitlines() if line[:1].isdigit()]
    assert 2 <= len(findings) <= 10, findings
    for f in findings:
        claim = f.split(" ", 1)[1].split(" ([table](#")[0]
        assert len(claim.split()) <= 40, f
        anchor = f[f.index("](#") + 3:f.index(")", f.index("](#"))]
        assert f'<a id="{anchor}"></a>' in md, anchor
    for anchor in re.findall(r"\]\(#([^)]+)\)", page):
        assert f'<a id="{anchor}"></a>' in md, anchor


def test_committed_first_page_links_every_finding_and_question():
    """The committed report: within 150 lines, every finding links a table it has, every question has a row."""
    from reporting.front import load_questions

    md = (REPO / "reports" / "REPORT.md").read_text()
    page = _first_page(md)
    assert len(md[:md.index("## 1.")].splitlines()) <= 150
    findings = [line for line in page[page.index("## Findings"):].splitlines() if line[:1].isdigit()]
    assert findings and all(" ([table](#" in f and len(f.split(" ([table](#")[0].split()) <= 41 for f in findings)
    for anchor in re.findall(r"\]\(#([^)]+)\)", page):
        assert f'<a id="{anchor}"></a>' in md, anchor
    assert all(f"| {q['id']} |" in page for q in load_questions()["questions"])
    from reporting.paper import load_paper_numbers  # every paper claim has its verdict or what it still needs
    claims = page[page.index("## The papers' claims"):page.index("## The reviewers' questions")]
    assert all(f"| {cl.text} |" in claims for cl in load_paper_numbers().claims)


def test_every_finding_template_is_short():
    """The templates themselves stay within 40 words, so no filled finding can grow past it by much."""
    from reporting.front import load_questions

    for f in load_questions()["findings"]:
        assert len(f["answer"].split()) <= 40, f["answer"]


def test_a_change_in_the_records_changes_the_first_page(tmp_path: Path, report_dir: Path):
    runs = build_runs(tmp_path)
    path = runs / "reproduce" / "maml-s0" / "summary.json"
    rec = json.loads(path.read_text())
    rec["test"] = accuracy_test(0.3, 99)
    path.write_text(json.dumps(rec))
    generate(runs, tmp_path / "out")
    changed = (tmp_path / "out" / "REPORT.md").read_text()
    before = _first_page((report_dir / "REPORT.md").read_text())
    after = _first_page(changed)
    cell = lambda page: next(line for line in page[page.index("## At equal compute"):].splitlines()
                             if line.startswith("| MAML |"))  # noqa: E731
    assert cell(before) != cell(after)


def _cell(md: str, title: str, row: str, col: str) -> str:
    section = md[md.index(title):]
    table = main_tables(section)[0]
    return next(r for r in table[1:] if r[0].startswith(row))[table[0].index(col)]


def test_one_sign_in_every_section(report_dir: Path):
    """The matrix, the claims table and the findings carry the same signed improvement."""
    md = (report_dir / "REPORT.md").read_text()
    paired = md[md.index("## 2. Paired comparisons"):md.index("## 3.")]
    cell = _cell(paired, "### Omniglot 5w1s (4 min per run)", "iMAML-HF", "MAML")
    back = _cell(paired, "### Omniglot 5w1s (4 min per run)", "MAML", "iMAML-HF")
    assert float(cell.split()[0]) == -float(back.split()[0]) < 0
    claim = next(line for line in md.splitlines() if line.startswith("| iMAML-HF > MAML on Omniglot 5-way 1-shot |")
                 and "4 min per run" in line)
    assert cell.rstrip("*") in claim  # the claims table reads the same comparison with the same sign


def test_records_hold_no_absolute_path():
    """Committed records name paths relative to the records folder only (no machine's home or work folder)."""
    root = REPO / "reports" / "records"
    bad = [p.relative_to(root).as_posix() for p in sorted(root.rglob("*")) if p.is_file()
           and any(s in p.read_text(errors="replace") for s in ('"/work/', '"/home/', '"/tmp/', ",/work/", ",/home/",
                                                               ",/tmp/"))]
    assert not bad, bad


MACHINE_PATHS = re.compile(r"(?<![\w.$])/(work|home|tmp|Users)/")


def test_no_committed_report_file_names_a_machine_path():
    """Every tracked file under reports/ (records, benchmarks, tables, the report) is free of absolute paths
    of the machine that wrote it: data under $METAGRAD_DATA, runs relative to the checkout."""
    tracked = subprocess.run(["git", "ls-files", "-z", "reports"], cwd=REPO, capture_output=True, check=True)
    files = [REPO / f for f in tracked.stdout.decode().split("\0") if f and not f.endswith(".png")]
    assert len(files) > 50
    bad = [str(p.relative_to(REPO)) for p in files if p.is_file() and MACHINE_PATHS.search(p.read_text(errors="replace"))]
    assert not bad, bad


def test_bench_records_are_written_portable(tmp_path: Path, monkeypatch):
    from bench import ROOT, portable

    data = tmp_path / "data"
    monkeypatch.setenv("METAGRAD_DATA", str(data))
    record = {"overrides": [f"data.root={data}"], "config": {"data": {"root": str(data)}},
              "run_dir": str(ROOT / "runs" / "bench" / "x"), "n": 3}
    assert portable(record) == {"overrides": ["data.root=$METAGRAD_DATA"], "config": {"data": {"root": "$METAGRAD_DATA"}},
                                "run_dir": "runs/bench/x", "n": 3}
    assert not MACHINE_PATHS.search(json.dumps(portable(record, str(data))))


def test_collect_makes_run_dirs_relative(tmp_path: Path):
    from collect import collect

    src = tmp_path / "runs"
    _write(src / "omni" / "maml-s0", "summary.json", json.dumps(dict(summary(test=accuracy_test(0.9, 1)),
                                                                     run_dir=str(src / "omni" / "maml-s0"))))
    _study(src / "study" / "precision", "precision", {
        "precision.csv": "inner_steps,task,rel_diff,norm32,norm64,nonfinite32,nonfinite64\n1,0,1e-7,1,1,0,0\n",
        "precision_train.csv": "dtype,metric,mean,ci95,n,verdict,run_dir\nfloat32,mse,1.5,0.1,40,ok,"
                               f"{src}/study/precision/train/float32\n"})
    collect(src, tmp_path / "records")
    text = (tmp_path / "records" / "omni" / "maml-s0" / "summary.json").read_text()
    assert json.loads(text)["run_dir"] == "omni/maml-s0" and str(tmp_path) not in text
    csv_text = (tmp_path / "records" / "study" / "precision" / "precision_train.csv").read_text()
    assert csv_text.endswith(",train/float32\n") and str(tmp_path) not in csv_text


def test_baseline_records_judge_learning(tmp_path: Path):
    """A record with meta_iterations == 0 is a baseline, not a row; a row not above it did not learn."""
    runs = tmp_path / "runs"
    for name, label, p, over in (("maml", "MAML", 0.9, {}), ("hf", "iMAML-HF", 0.45, {}),
                                 ("untrained", "MAML", 0.5, {"meta_iterations": 0, "iterations_done": 0})):
        rec = protocol_run(label, 0 if over else 100, p, 7 if name == "hf" else 8, **over)
        _write(runs / name, "summary.json", json.dumps(rec))
    generate(runs, tmp_path / "out")
    md = (tmp_path / "out" / "REPORT.md").read_text()
    assert "1 baseline record(s)" in md
    results = md[md.index("## 1."):md.index("## 2.")]
    assert "did not learn (vs MAML untrained" in results and "learned (vs MAML untrained" in results
    assert "iMAML-HF (did not learn)" in md[md.index("## 2."):md.index("## 3.")]
    claims = md[md.index("## 4."):md.index("## 5.")]
    assert "no verdict: iMAML-HF did not learn" in claims


def test_report_is_byte_identical_on_rerun(tmp_path: Path, report_dir: Path):
    runs = build_runs(tmp_path)
    generate(runs, tmp_path / "out")
    first = sorted(p.relative_to(report_dir) for p in report_dir.rglob("*") if p.is_file())
    second = sorted(p.relative_to(tmp_path / "out") for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert first == second
    for rel in first:
        assert (report_dir / rel).read_bytes() == (tmp_path / "out" / rel).read_bytes(), rel


def test_figures_share_the_colour_map_and_keep_legends_short(tmp_path: Path, monkeypatch):
    """Every legend has at most 7 entries; an entry naming an algorithm is drawn in that algorithm's colour."""
    import matplotlib.colors as mcolors
    from matplotlib.figure import Figure

    import catalog
    from reporting.render import colour

    seen, save = [], Figure.savefig

    def inspect(fig, *args, **kwargs):
        for legend in [*fig.legends, *(ax.get_legend() for ax in fig.axes)]:
            if legend is None:
                continue
            texts = [t.get_text() for t in legend.get_texts()]
            assert len(texts) <= 7, texts
            for text, handle in zip(texts, legend.legend_handles):
                label = text.split(" (")[0]
                if label in catalog.label_order() and hasattr(handle, "get_color"):
                    assert mcolors.to_hex(handle.get_color()) == colour(label), (text, handle.get_color())
                    seen.append(label)
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", inspect)
    generate(build_runs(tmp_path), tmp_path / "out")
    assert {"MAML", "iMAML-HF"} <= set(seen)


def test_figures_are_valid_pngs(report_dir: Path):
    from PIL import Image

    names = sorted(p.name for p in (report_dir / "figures").glob("*.png"))
    assert names == ["curves_omniglot_5w1s_4min.png", "equal_compute.png", "inner_steps_sinusoid_K5_cpu.png"]
    for name in names:
        path = report_dir / "figures" / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            w, h = im.size
            assert 400 <= w <= 2000 and 300 <= h <= 1000, (name, im.size)
            assert len(im.convert("L").getcolors(maxcolors=1 << 16) or range(2)) > 1, "blank figure"
            assert "Software" not in im.info  # stripped so the bytes do not depend on the version
        assert f"(figures/{name})" in (report_dir / "REPORT.md").read_text()


def _inventory(out: Path):
    """The run inventory: the report links it, the CSV holds it."""
    import pandas as pd

    return pd.read_csv(out / "tables" / "runs.csv")


def test_report_content_facts(report_dir: Path):
    """What each section must state, stated directly."""
    md = (report_dir / "REPORT.md").read_text()
    # failures are results (the run inventory, tables/runs.csv), unreadable records are listed with their reason
    runs = _inventory(report_dir)
    assert ((runs["status"] == "diverged") & (runs["failure_iteration"] == 37)
            & (runs["failure_reason"] == "non-finite meta-gradient")).sum() == 1
    assert ((runs["status"] == "interrupted") & (runs["iterations_done"] == 40)).sum() == 1
    assert (runs["status"] == "running").sum() == 1
    assert "| runs/train/2026-01-01_01-10-00/summary.json | not valid JSON" in md
    assert "| runs/train/2026-01-01_01-20-00/summary.json | truncated JSON" in md
    assert "runs/train/2026-01-01_01-30-00 | no summary.json" in md
    assert "runs/study/cost/2026-01-03_00-00-00/study.json | cost.csv: missing columns" in md
    # cpu rows are marked below the paper's budget; the paper-profile run is not
    assert md.count("MAML †") >= 3
    assert "| mini-ImageNet 5w1s | MAML | 48.7 | 46.00 ± 7.49 (1 seed, ± 95% CI over tasks) | reproduced |" in md
    # mismatched fingerprints are refused, never paired
    assert "| FOMAML vs MAML | test-task fingerprints differ" in md
    paired_csv = (report_dir / "tables" / "paired.csv").read_text().splitlines()
    assert not [line for line in paired_csv if line.startswith("omniglot") and ",FOMAML,MAML," in line]
    # two seeds → across-seed mean ± std beside the per-run CI
    import pandas as pd

    summ = pd.read_csv(report_dir / "tables" / "summary.csv")
    two = summ[(summ["label"] == "MAML") & (summ["completed"] == 2) & (summ["setting"] == "5w1s")]
    assert len(two) == 1 and round(100 * two["mean"].iloc[0], 2) == 89.75 and round(100 * two["std"].iloc[0], 2) == 1.06
    # the sinusoid runs train at K=10 and test at K=5: compared with the paper's K=5 numbers; MSE: lower is better
    assert "| FOMAML | -0.228 [-0.324, -0.137]* | — |" in md
    # comparison a: the budget is in the title; one setup table, then results with iterations and minutes
    assert "### Omniglot 5w1s: published protocols at an equal budget of 4 min of training per run" in md
    assert '<a id="table-setup_omniglot_5w1s_4min"></a>' in md
    section = md[md.index("## 1."):md.index("## 2.")]
    assert "| iMAML-HF † | 52.50 ± 7.29 | 20 of 60,000 |" in section
    assert "All rows: status completed; seed 0; vs baseline learned (vs chance 20.00); training min 4.0;" in section
    # a claim measured below the paper's budget gets no verdict, only its measured improvement
    claims = md[md.index("## 4."):md.index("## 5.")]
    assert "not tested at paper budget" in claims and "| contradicted |" not in claims and "| no runs |" in claims
    # every study names what it ran on in its first line
    studies_md = md[md.index("## 6."):md.index("## 7.")]
    for block in studies_md.split("\n### 6.")[1:]:
        first = next(line for line in block.splitlines()[1:] if line.strip())
        assert first.startswith(("Ran on: ", "**The ladder to", "no runs yet")), first
    assert "Ran on: sinusoid regression; MLP 1-40-40-1, tanh activation; λ = 2" in studies_md
    # limitations are generated, once, as a table of at most 8 rows
    limits = md[md.index("## 8. Limitations"):md.index("## Appendix A.")]
    table = main_tables(limits)[0]
    assert 2 <= len(table) <= 9 and [r[0] for r in table[1:]][:2] == ["seeds", "budget"]
    for item in ("| did not learn |", "| devices | test CPU (2 threads) |", "| settings never run |"):
        assert item in limits
    # the mini-ImageNet and sinusoid runs reached the paper's iteration count; no Omniglot run did
    assert "| paper budget | reached on mini-ImageNet, sinusoid only |" in limits


def _section_table(md: str, anchor: str) -> list[list[str]]:
    return main_tables(md[md.index(f'<a id="table-{anchor}"></a>'):])[0]


def test_sinusoid_seeds_baselines_and_paper_budget(report_dir: Path):
    """Three seeds: mean ± std over seeds and each seed's value; the pretrained network of the same
    seed and the zero predictor judge learning; a diverged seed is reported; the release is its own row."""
    md = (report_dir / "REPORT.md").read_text()
    t = _section_table(md, "protocols_sinusoid_K5_1min")
    rows = {r[0]: dict(zip(t[0], r)) for r in t[1:]}
    assert set(rows) == {"MAML †", "FOMAML †", "iMAML-GD (release) †", "iMAML-HF †", "Pretrained (baseline)"}
    assert rows["MAML †"]["test metric (mean ± std over seeds)"].endswith("(3 seeds)")
    assert rows["MAML †"]["per seed (± 95% CI over test tasks)"].count("; s") == 2
    assert rows["MAML †"]["vs baseline"] == "learned (all 3 seeds)"
    assert rows["iMAML-HF †"]["vs baseline"] == "did not learn (all 3 seeds)"
    release = rows["iMAML-GD (release) †"]
    assert release["status"].startswith("2 of 3 completed; seed 2 diverged at iteration 871")
    assert release["test metric (mean ± std over seeds)"].endswith("(2 seeds)") and "s2 diverged" in release[
        "per seed (± 95% CI over test tasks)"]
    assert "The zero predictor (predicting 0) has MSE 4.005 ± " in md
    page = _first_page(md)
    equal = next(line for line in page.splitlines() if line.startswith("| iMAML-HF |"))
    assert "(3 seeds; did not learn)" in equal or "(3 seeds; beat chance only)" in equal
    # the paper-budget runs: a row per published number, with their seeds
    assert "| sinusoid K=5, 10 steps | MAML | 0.35 | 0.341 ± 0.022 (2 seeds) |" in page
    assert "| sinusoid K=5, 10 steps | pretrained | 2.19 |" in page
    assert "| sinusoid K=5, 1 step | pretrained | 2.41 |" in page and "| sinusoid K=5, 5 steps | pretrained | 2.23 |" in page


def test_multi_seed_matrix_pairs_per_seed_with_holm(report_dir: Path):
    md = (report_dir / "REPORT.md").read_text()
    section = md[md.index("### sinusoid K=5 (1 min per run)\n"):]
    t = main_tables(section)[0]
    cell = t[1][t[0].index("FOMAML")]  # MAML's improvement over FOMAML, averaged over three seeds
    assert re.fullmatch(r"0\.\d{3} ± 0\.\d{3}( \([0-3]/3\*\)|\*)?", cell), cell
    back = t[2][t[0].index("MAML")]
    assert back == "-" + cell  # the same comparison read from the other side: the sign flips, nothing else
    assert t[1][t[0].index("iMAML-GD (release)")].endswith("(2 seeds)")  # its seed 2 diverged
    assert t[1][t[0].index("iMAML-HF")] == "— (did not learn)"  # never called better or worse than another
    assert "Holm correction over this table's" in section and "Seeds: 0, 1, 2." in section
    csv_rows = (report_dir / "tables" / "paired.csv").read_text().splitlines()
    maml_fomaml = [r for r in csv_rows if r.startswith("sinusoid,K=5,paper,1,FOMAML,MAML,")]
    assert len(maml_fomaml) == 3  # one comparison per seed, never across seeds or budgets


def test_selection_records_are_protocol_evidence_not_rows(report_dir: Path):
    md = (report_dir / "REPORT.md").read_text()
    assert "runs/selection/imaml_hf/steps5" not in md  # a candidate, even one recorded as kind 'train'
    assert "unfinished" not in md  # a running campaign's state is not a record
    limits = md[md.index("## 8. Limitations"):md.index("## Appendix A.")]
    assert "Protocol choices not taken from a paper, tuned on validation tasks only:" in limits
    assert "| stopped runs |" in limits and "runs diverged" in limits
    table = md[md.index('<a id="table-selection">'):md.index("## Appendix A.")]
    assert "steps1" in table and "**chosen**" in table and "— (diverged)" in table


def test_deviation_ladder_section(report_dir: Path):
    """The short-budget study and the long one each get their tables, the budget and device in every title."""
    md = (report_dir / "REPORT.md").read_text()
    section = md[md.index(f"### 6.{list(study_sections.SECTIONS).index('deviations') + 1} Deviation ladder"):
                 md.index("## 7. When the assumptions fail")]
    assert "**An equal short budget measures how fast each rung learns, not where it ends up**" in section
    for title in ("The ladder: deviations added one at a time", "Each deviation removed alone from the full release",
                  "The release's leaky evaluation split", "MAML beside the ladder"):
        assert f"#### {title}, at 3 min of training per run on test CPU (2 threads)" in section
    assert "#### The paper as written and the full release, at 60 min of training per run on test CPU" in section
    assert "| + damped_cg | held-out, split seed 1 (1100/100/423) | 62.00 ± 1.30 | 22.00 [20.00, 24.00] |" in section
    assert "| + data | held-out, split seed 123 (1200/0/423) | 66.00 ± 1.20 | 3.00 [1.20, 4.80] (unpaired) |" in section
    assert "| leaky | release_leaky: 310 of 423 are training characters | 71.00 ± 1.10 | 5.00 [3.40, 6.60]" in section
    assert "| − damped_cg | held-out, split seed 123 (1200/0/423) | diverged | — |" in section
    assert "| + data | held-out, split seed 123 (1200/0/423) | 82.00 ± 1.00 | 2.00 [0.60, 3.40] (unpaired) | " \
           "3.00 [1.20, 4.80] (unpaired) |" in section


def test_collect_keeps_the_deviation_study_runs_behind_its_rows(tmp_path: Path):
    from collect import collect

    src = tmp_path / "runs" / "study" / "deviations"
    _study(src, "deviations", {"deviations.csv": deviations_csv(DEVIATION_ROWS[:1], 3)})
    for name in ("summary.json", "metrics.csv", "ckpt.pt", "metrics.jsonl", "retest/eval.prox_lam=0.0.json"):
        _write((src / "train" / "paper" / name).parent, Path(name).name, "{}")
    collect(src, tmp_path / "records")
    got = sorted(p.relative_to(tmp_path / "records").as_posix() for p in (tmp_path / "records").rglob("*") if p.is_file())
    assert got == ["deviations.csv", "study.json", "train/paper/metrics.csv", "train/paper/retest/eval.prox_lam=0.0.json",
                   "train/paper/summary.json"]
    generate(tmp_path / "records", tmp_path / "out")  # the study's own runs are its inputs, not rows of section 1
    md = (tmp_path / "out" / "REPORT.md").read_text()
    assert "0 training run(s)" in md and "| paper | held-out, split seed 1 (1100/100/423) | 40.00 ± 1.20 |" in md


def _claim_md(tmp_path: Path, iterations: int) -> str:
    runs = tmp_path / "runs"
    for name, label, p, seed in (("m", "MAML", 0.95, 40), ("h", "iMAML-HF", 0.6, 41)):
        rec = protocol_run(label, iterations, p, seed, max_train_minutes=None, stopped_by="meta_iterations")
        _write(runs / name, "summary.json", json.dumps(rec))
    generate(runs, tmp_path / "out")
    md = (tmp_path / "out" / "REPORT.md").read_text()
    return next(line for line in md.splitlines() if line.startswith("| iMAML-HF > MAML on Omniglot 5-way 1-shot |"))


def test_a_claim_is_contradicted_only_at_the_paper_budget(tmp_path: Path):
    assert "| contradicted |" in _claim_md(tmp_path / "paper", 60000)
    below = _claim_md(tmp_path / "short", 59999)
    assert "| not tested at paper budget |" in below and "contradicted" not in below


def test_runs_ended_by_the_plateau_rule_earn_verdicts_only_beside_each_other(tmp_path: Path):
    """Two runs ended by the declared rule: a verdict that says so, and the rule named beside the
    iterations; a MAML trained to the full budget is its own row, and is not paired with a
    rule-ended run for a verdict."""
    runs = tmp_path / "runs"
    rule = {"max_train_minutes": None, "stopped_by": "converged", "config": {"eval": {"early_stop": "plateau"}}}
    for name, label, iters, p, seed, over in (("maml", "MAML", 9000, 0.95, 40, rule),
                                              ("hf", "iMAML-HF", 12000, 0.6, 41, {**rule, "outer.anneal": True}),
                                              ("maml_full", "MAML", 60000, 0.97, 42,
                                               {"max_train_minutes": None, "stopped_by": "meta_iterations"})):
        _write(runs / name, "summary.json", json.dumps(protocol_run(label, iters, p, seed, **over)))
    generate(runs, tmp_path / "out")
    md = (tmp_path / "out" / "REPORT.md").read_text()
    section = md[md.index("## 1."):md.index("## 2.")]
    assert "| 9,000 of 60,000, ended by the plateau rule |" in section and "| 60,000 of 60,000 |" in section
    claims = [line for line in md[md.index("## 4."):].splitlines()
              if line.startswith("| iMAML-HF > MAML on Omniglot 5-way 1-shot |")]
    assert len(claims) == 1 and "| contradicted |" in claims[0]
    assert "(both runs of every pair converged by the declared rule)" in claims[0] and "MAML 9000/60000" in claims[0]
    page = _first_page(md)  # the plateau-ended run stands beside the paper's number, and says how it ended
    assert "ended by the plateau rule at 9,000 of 60,000" in page
    # the first page's claims table carries section 4's verdict
    row = next(line for line in page.splitlines() if line.startswith("| iMAML-HF > MAML on Omniglot 5-way 1-shot |"))
    assert "| contradicted |" in row


def test_the_same_algorithm_under_another_protocol_stands_beside_its_paper_row(tmp_path: Path):
    """A paper row with our number also names the algorithm's other protocol at the paper's budget
    (iMAML-GD beside the release's algorithm, Reptile beside its fresh-state run), so the verdict says
    what the other protocol reached on the same tasks."""
    runs = tmp_path / "runs"
    rule = {"max_train_minutes": None, "stopped_by": "converged", "config": {"eval": {"early_stop": "plateau"}}}
    _write(runs / "maml", "summary.json", json.dumps(protocol_run("MAML", 9000, 0.6, 40, **rule)))
    other = protocol_run("MAML", 11000, 0.95, 41, **rule)
    other.update(label="MAML (release)", variant="maml_release", experiment="omniglot_5w_maml_release")
    _write(runs / "maml_release", "summary.json", json.dumps(other))
    generate(runs, tmp_path / "out")
    row = next(line for line in _first_page((tmp_path / "out" / "REPORT.md").read_text()).splitlines()
               if line.startswith("| Omniglot 5w1s | MAML |"))
    assert "not reproduced" in row and "ended by the plateau rule at 9,000 of 60,000" in row
    assert "; MAML (release) reached 92.50 ± 3.31 (1 seed, ± 95% CI over tasks)" in row and "ended by the plateau rule at 11,000 of 60,000 |" in row


def _sinusoid_claim(tmp_path: Path, maml_level: float, iterations: int) -> str:
    runs = tmp_path / "runs"
    for name, level in (("maml", maml_level), ("pretrained", 2.4)):
        for seed in (0, 1):
            rec = sinusoid_run(name, seed, SIN, max_train_minutes=None, iterations_done=iterations,
                               stopped_by="meta_iterations",
                               test=dict(mse_test(level, 10 * seed + len(name)), zero_predictor=zero_predictor()))
            _write(runs / f"{name}-s{seed}", "summary.json", json.dumps(rec))
    generate(runs, tmp_path / "out")
    md = (tmp_path / "out" / "REPORT.md").read_text()
    return next(line for line in md[md.index("## 4."):].splitlines()
                if line.startswith("| MAML > Pretrained on sinusoid regression"))


def test_the_sinusoid_claim_pairs_maml_with_the_pretrained_network(tmp_path: Path):
    """The MAML paper's claim is judged against the pretrained records of the same seeds, at the paper's
    budget only; a MAML that does not beat the pretrained network did not learn, so gets no verdict."""
    line = _sinusoid_claim(tmp_path / "paper", 0.4, 70000)
    assert "| supported |" in line and "| 2 |" in line and "(both runs of every pair at the paper's budget)" in line
    page = _first_page((tmp_path / "paper" / "out" / "REPORT.md").read_text())
    assert "| sinusoid K=5, 10 steps | MAML | 0.35 |" in page and "(2 seeds)" in page
    assert "| not tested at paper budget |" in _sinusoid_claim(tmp_path / "short", 0.4, 69999)
    assert "| no verdict: MAML did not learn |" in _sinusoid_claim(tmp_path / "worse", 2.6, 70000)
    page = _first_page((tmp_path / "worse" / "out" / "REPORT.md").read_text())
    row = next(line for line in page.splitlines() if line.startswith("| sinusoid K=5, 10 steps | MAML |"))
    assert "not reproduced" in row


def test_empty_runs_folder_says_what_to_run(tmp_path: Path):
    generate(tmp_path / "runs", tmp_path / "out")  # the folder does not even exist
    md = (tmp_path / "out" / "REPORT.md").read_text()
    assert "no runs yet: run `make reproduce`" in md
    assert "no runs yet: run `make sweep`" in md
    for study in ("fidelity", "precision", "assumptions", "cost", "failures"):
        assert f"no runs yet: run `python study.py study={study}`" in md
    assert "All rows: verdict no runs; improvement of the claimed-better [95% CI] —" in md  # no claim measured
    assert sorted(p.name for p in (tmp_path / "out" / "tables").iterdir()) == ["claims.csv", "claims.tex"]


def test_stale_generated_files_are_removed(tmp_path: Path):
    out = tmp_path / "out"
    (out / "figures").mkdir(parents=True)
    (out / "figures" / "old.png").write_bytes(b"x")
    (out / "figures" / "notes.txt").write_text("kept: not a generated file type")
    generate(tmp_path / "runs", out)
    assert not (out / "figures" / "old.png").exists() and (out / "figures" / "notes.txt").exists()


@pytest.mark.parametrize("mutate, reason", [
    (lambda d: d.update(schema_version=3), "schema_version 3 is not supported"),
    (lambda d: d.pop("label"), "missing field 'label'"),
    (lambda d: d.update(ways="five"), "field 'ways' should be int"),
    (lambda d: d.update(status="exploded"), "status 'exploded' is not one of"),
    (lambda d: d.update(test=None), "status is completed but the record has no test results"),
    (lambda d: d["test"].update(per_task=[1.0]), "test.per_task has 1 values but test.n is 40"),
    (lambda d: d["test"].update(metric="f1"), "test.metric 'f1' is not one of"),
])
def test_bad_records_are_skipped_with_reason(tmp_path: Path, mutate, reason):
    rec = summary(test=accuracy_test(0.9, 1))
    mutate(rec)
    _write(tmp_path / "runs" / "r", "summary.json", json.dumps(rec))
    _write(tmp_path / "runs" / "s", "summary.json", "[1, 2]")
    (tmp_path / "runs" / "t").mkdir()
    (tmp_path / "runs" / "t" / "summary.json").write_bytes(b"\xff\xfe\x00bad")
    generate(tmp_path / "runs", tmp_path / "out")
    md = (tmp_path / "out" / "REPORT.md").read_text()
    assert f"| runs/r/summary.json | {reason}" in md
    assert "| runs/s/summary.json | top-level JSON value is list, expected an object |" in md
    assert "| runs/t/summary.json | not UTF-8 text (garbage bytes) |" in md


def test_a_non_finite_test_metric_is_a_divergence(tmp_path: Path):
    rec = summary(test=dict(accuracy_test(0.9, 1), mean=float("nan")))
    _write(tmp_path / "runs" / "r", "summary.json", json.dumps(rec))
    generate(tmp_path / "runs", tmp_path / "out")
    runs = _inventory(tmp_path / "out")
    assert runs.loc[0, "run"] == "runs/r" and runs.loc[0, "status"] == "diverged" and runs.loc[0, "failure_iteration"] \
        == 200 and runs.loc[0, "failure_reason"] == "test-time adaptation diverged (non-finite test metric)"


def test_paper_numbers_file_matches_the_issue():
    from reporting.paper import load_paper_numbers

    paper = load_paper_numbers()
    table2 = {  # iMAML Table 2, 5w1s / 5w5s / 20w1s / 20w5s
        "MAML": (98.7, 99.9, 95.8, 98.9), "FOMAML": (98.3, 99.2, 89.4, 97.9),
        "Reptile": (97.68, 99.48, 89.43, 97.12), "iMAML-GD": (99.16, 99.67, 94.46, 98.69),
        "iMAML-HF": (99.50, 99.74, 96.18, 99.14)}
    pms = {"MAML": (0.4, 0.1, 0.3, 0.2), "FOMAML": (0.5, 0.2, 0.5, 0.1), "Reptile": (0.04, 0.06, 0.14, 0.32),
           "iMAML-GD": (0.35, 0.12, 0.42, 0.1), "iMAML-HF": (0.26, 0.11, 0.36, 0.1)}
    settings = ((5, 1), (5, 5), (20, 1), (20, 5))
    for label, values in table2.items():
        for (w, s), v, pm in zip(settings, values, pms[label]):
            r = paper.lookup("omniglot", w, s, label, "transductive")
            assert (r.value, r.pm, r.source) == (v, pm, "imaml_t2"), (label, w, s)
    for (w, s), v in zip(settings, (95.39, 98.90, 88.14, 96.65)):  # Reptile paper, non-transductive
        r = paper.lookup("omniglot", w, s, "Reptile", "non_transductive")
        assert (r.value, r.transductive, r.source) == (v, False, "reptile_t2")
    table3 = {"MAML": (48.70, 1.84), "FOMAML": (48.07, 1.75), "Reptile": (49.97, 0.32), "iMAML-GD": (48.96, 1.84),
              "iMAML-HF": (49.30, 1.88)}
    for label, (v, pm) in table3.items():
        r = paper.lookup("miniimagenet", 5, 1, label, "transductive")
        assert (r.value, r.pm, r.source) == (v, pm, "imaml_t3")
    # REFERENCE.md: Reptile mini-ImageNet 1-/5-shot, non-transductive and transductive
    assert [paper.lookup("miniimagenet", 5, s, "Reptile", "per_example").value for s in (1, 5)] == [47.07, 62.74]
    assert paper.lookup("miniimagenet", 5, 5, "Reptile", "transductive").value == 65.99
    sin = [paper.lookup("sinusoid", 1, 5, "MAML", None, steps=k).value for k in (1, 5, 10)]
    assert sin == [0.67, 0.38, 0.35]
    assert all(r.source in paper.sources for r in paper.results)
    assert "transductive" in paper.sources["imaml_t2"] and "non-transductive" in paper.sources["reptile_t2"]
    assert any(c.text == "iMAML-HF > MAML on Omniglot 20-way 1-shot" for c in paper.claims)


def test_cli_writes_the_report(tmp_path: Path):
    runs = tmp_path / "runs"
    _write(runs / "train" / "x", "summary.json", json.dumps(summary(test=accuracy_test(0.9, 1))))
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    proc = subprocess.run([sys.executable, str(REPO / "report.py"), "--runs", str(runs), "--out",
                           str(tmp_path / "out")], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stdout
    assert "runs/train/x" in (tmp_path / "out" / "REPORT.md").read_text()


def test_garbage_study_values_are_skipped_not_fatal(tmp_path: Path):
    runs = tmp_path / "runs"
    _study(runs / "study" / "precision" / "d", "precision",
           {"precision.csv": "inner_steps,task,rel_diff,norm32,norm64,nonfinite32,nonfinite64\n1,0,abc,1,1,0,0\n"})
    _study(runs / "study" / "cost" / "d", "cost", {"cost.csv": "not,a\ncsv\x00\n\"unclosed"})
    generate(runs, tmp_path / "out")
    md = (tmp_path / "out" / "REPORT.md").read_text()
    assert "| runs/study/precision/d/study.json | precision.csv: column rel_diff holds non-numbers |" in md
    assert "| runs/study/cost/d/study.json | cost.csv: " in md
    assert "## Appendix B. Skipped records" in md


def test_collect_copies_records_only_and_replaces_the_destination(tmp_path: Path):
    from collect import collect

    src, dst = tmp_path / "runs", tmp_path / "reports" / "records" / "reproduce"
    _write(src / "omniglot" / "maml-s0", "summary.json", json.dumps(summary(test=accuracy_test(0.9, 1))))
    _write(src / "omniglot" / "maml-s0", "metrics.csv", "iter,train_loss\n1,1.0\n")
    _write(src / "omniglot" / "maml-s0", "ckpt.pt", "weights")
    _write(src / "omniglot" / "maml-s0" / ".hydra", "config.yaml", "a: 1\n")
    _study(src / "study" / "cost", "cost", {"cost.csv": "algorithm\nmaml\n", "notes.txt": "x"})
    _write(src / "study" / "cost" / "inner_run", "summary.json", "{}")  # a study's own training input
    _write(dst / "stale", "summary.json", "{}")
    assert collect(src, dst) == 4
    got = sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*") if p.is_file())
    assert got == ["omniglot/maml-s0/metrics.csv", "omniglot/maml-s0/summary.json", "study/cost/cost.csv",
                   "study/cost/study.json"]
    assert not any(p.name.startswith(".") for p in dst.parent.iterdir())  # no temporary folder left behind
    generate(dst, tmp_path / "out")  # the report reads the collected records, paths named from its root
    assert list(_inventory(tmp_path / "out")["run"]) == ["reproduce/omniglot/maml-s0"]


def test_collect_refuses_an_empty_source(tmp_path: Path):
    proc = subprocess.run([sys.executable, "tools/collect.py", str(tmp_path / "nothing"), str(tmp_path / "d")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "is not a folder of run records" in proc.stderr
    assert not (tmp_path / "d").exists()


def test_collect_thins_long_metrics_but_keeps_every_validation_row():
    from collect import thin_metrics

    rows = ["iter,train_loss,val_metric"] + [f"{i},1.0,{0.5 if i % 997 == 0 else ''}" for i in range(1, 5001)]
    kept = thin_metrics("\n".join(rows) + "\n", max_rows=100).splitlines()
    assert kept[0] == rows[0] and kept[-1] == rows[-1] and 100 <= len(kept) <= 110
    assert [r for r in kept if r.endswith(",0.5")] == [r for r in rows if r.endswith(",0.5")]
    short = "\n".join(rows[:50]) + "\n"
    assert thin_metrics(short, max_rows=100) == short
    fid = ["iter,train_loss,fid_cos_exact"] + [f"{i},1.0,{0.9 if i % 101 == 0 else ''}" for i in range(1, 5001)]
    kept = thin_metrics("\n".join(fid) + "\n", max_rows=100).splitlines()
    assert [r for r in kept if r.endswith(",0.9")] == [r for r in fid if r.endswith(",0.9")]  # every fidelity row


def test_fidelity_along_training_reads_the_runs_fidelity_rows(tmp_path):
    """Section 8: each run's fid_* rows of metrics.csv, medians over seeds of the first and the last
    measurement per algorithm; a run without fidelity rows is not in the table."""
    from reporting import anatomy as ft

    rows = []
    for seed, (first, last) in enumerate(((0.8, 0.4), (0.6, 0.2))):
        folder = tmp_path / f"imaml-s{seed}"
        folder.mkdir()
        (folder / "metrics.csv").write_text("iter,train_loss,fid_cos_exact,fid_cos_solved,fid_rel_exact\n"
                                            f"1,1.0,{first},0.99,0.5\n2,1.0,,,\n100,0.9,{last},0.98,0.9\n")
        rows.append({"folder": str(folder), "dataset": "sinusoid", "setting": "K5", "max_train_minutes": 1,
                     "label": "iMAML-GD", "seed": seed, "run": f"records/x/imaml-s{seed}"})
    plain = tmp_path / "maml-s0"
    plain.mkdir()
    (plain / "metrics.csv").write_text("iter,train_loss\n1,1.0\n")
    rows.append({"folder": str(plain), "dataset": "sinusoid", "setting": "K5", "max_train_minutes": 1,
                 "label": "MAML", "seed": 0, "run": "records/x/maml-s0"})
    found = ft.fidelity_points(rows)
    assert list(found["iter"]) == [1, 100, 1, 100] and set(found["label"]) == {"iMAML-GD"}
    assert list(found.groupby(ft.KEY).groups) == [("sinusoid", "K5", 1)]
    t = ft.fidelity_table(("sinusoid", "K5", 1), found)
    (row,) = t.raw.to_dict("records")
    assert row["cos_exact"] == "0.70 → 0.30" and row["cos_solved"] == "0.99 → 0.98" and row["n_points"] == 4
