"""Report generator on synthetic run folders.

The fixture builds every kind of record the report must cope with: completed runs with two
seeds, two algorithms sharing a test-task fingerprint and one that does not, a diverged,
an interrupted and a killed run, a corrupt and a truncated summary, a sinusoid inner-step
sweep, a mini-ImageNet paper-scale run and one folder per study (plus a broken study).
The generated Markdown and CSVs are compared with golden files in ``tests/golden``;
regenerate them with ``UPDATE_GOLDEN=1 python -m pytest tests/test_report.py`` and read
the diff before committing it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from reporting.generate import generate

REPO = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).with_name("golden")
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
    sin = {"dataset": "sinusoid", "ways": 1, "shots": 10, "query_shots": 10, "experiment": "sweep_sinusoid",
           "bn_mode": None, "max_train_minutes": 1,
           "meta_batch_size": 25, "inner.lr": 0.01, "inner.test_steps": 10,
           "config": {"eval": {"shots": 5, "query_shots": 100}}}
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
    build_studies(runs / "study")
    return runs


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


def _study(folder: Path, name: str, files: dict[str, str]) -> None:
    meta = {"schema_version": 1, "kind": "study", "study": name, "status": "completed", "versions": {},
            "device": "cpu", "config": {}, "csv": f"{name}.csv"}
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
    _study(root / "fidelity" / "2026-01-04_00-00-00", "fidelity", {"fidelity.csv": "\n".join(fid) + "\n"})
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
    _study(root / "assumptions" / "2026-01-04_00-00-00", "assumptions", {"assumptions.csv": "\n".join(ass) + "\n"})
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


def golden_files(out: Path) -> list[Path]:
    return [Path("REPORT.md"), *sorted(p.relative_to(out) for p in (out / "tables").glob("*.csv"))]


def test_report_matches_golden(report_dir: Path):
    files = golden_files(report_dir)
    if os.environ.get("UPDATE_GOLDEN") == "1":
        if (GOLDEN / "tables").is_dir():
            for old in (GOLDEN / "tables").glob("*.csv"):
                old.unlink()
        for rel in files:
            (GOLDEN / rel).parent.mkdir(parents=True, exist_ok=True)
            (GOLDEN / rel).write_bytes((report_dir / rel).read_bytes())
    expected = [Path("REPORT.md"), *sorted(p.relative_to(GOLDEN) for p in (GOLDEN / "tables").glob("*.csv"))]
    assert files == expected, "the set of generated tables changed"
    for rel in files:
        got, want = (report_dir / rel).read_text(encoding="utf-8"), (GOLDEN / rel).read_text(encoding="utf-8")
        assert got == want, f"{rel} differs from tests/golden/{rel} (UPDATE_GOLDEN=1 to accept a deliberate change)"


def test_golden_test_detects_a_real_change(tmp_path: Path, report_dir: Path):
    """Changing one per-task value of one run must change the report (so the golden check bites)."""
    runs = build_runs(tmp_path)
    path = runs / "train" / "2026-01-01_00-20-00" / "summary.json"
    rec = json.loads(path.read_text())
    rec["test"]["per_task"][0] = 0.0 if rec["test"]["per_task"][0] else 1.0
    path.write_text(json.dumps(rec))
    generate(runs, tmp_path / "out")
    changed = (tmp_path / "out" / "REPORT.md").read_text()
    assert changed != (report_dir / "REPORT.md").read_text()
    assert changed != (GOLDEN / "REPORT.md").read_text()


def test_report_is_byte_identical_on_rerun(tmp_path: Path, report_dir: Path):
    runs = build_runs(tmp_path)
    generate(runs, tmp_path / "out")
    first = sorted(p.relative_to(report_dir) for p in report_dir.rglob("*") if p.is_file())
    second = sorted(p.relative_to(tmp_path / "out") for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert first == second
    for rel in first:
        assert (report_dir / rel).read_bytes() == (tmp_path / "out" / rel).read_bytes(), rel


def test_figures_are_valid_pngs(report_dir: Path):
    from PIL import Image

    names = sorted(p.name for p in (report_dir / "figures").glob("*.png"))
    assert names == ["cost.png", "curves_omniglot_5w1s_4min.png", "deviations.png", "fidelity.png",
                     "inner_steps_sinusoid_K5_cpu.png", "precision.png"]
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


def test_report_content_facts(report_dir: Path):
    """The behaviours the golden file encodes, stated directly."""
    md = (report_dir / "REPORT.md").read_text()
    # failures are results, unreadable records are listed with their reason
    assert "diverged at iteration 37: non-finite meta-gradient" in md
    assert "interrupted at iteration 40" in md
    assert "running, or killed before writing its final record" in md
    assert "| runs/train/2026-01-01_01-10-00/summary.json | not valid JSON" in md
    assert "| runs/train/2026-01-01_01-20-00/summary.json | truncated JSON" in md
    assert "runs/train/2026-01-01_01-30-00 | no summary.json" in md
    assert "runs/study/cost/2026-01-03_00-00-00/study.json | cost.csv: missing columns" in md
    # cpu rows never pass for paper-scale; the paper-profile run does
    assert md.count("NOT paper-scale (cpu)") >= 8 and "| 5w1s | MAML | completed | 46.00" in md
    # the non-transductive Reptile run is compared with the Reptile paper's non-transductive number
    assert "| 95.39 ± 0.09 | -3.39 | yes |" in md
    # mismatched fingerprints are refused, never paired
    assert "FOMAML vs MAML | 0 | test-task fingerprints differ" in md
    paired = (report_dir / "tables" / "paired.csv").read_text()
    assert "FOMAML,MAML" not in paired.replace("sinusoid,K=5,cpu,FOMAML,MAML", "")
    # two seeds → across-seed mean ± std beside the per-run CI
    assert "89.75 ± 1.06 (2 runs)" in md
    # MSE: the algorithm with the larger error is the worse one
    # the sinusoid runs train at K=10 and test at K=5: compared with the paper's K=5 numbers
    assert "| 5 | MAML † | completed |" in md and "| 10/5, query 10/100 |" in md
    assert "| sinusoid | K=5 | FOMAML vs MAML | mse |" in md and "| MAML | — | cpu; a 200/200 it." in md
    assert "| no runs |" in md and "| not tested at paper budget |" in md and "| contradicted |" not in md
    for header in ("## 1. Runs", "## 2. Published protocols", "## 3. Omniglot", "## 4. mini-ImageNet",
                   "## 5. Sinusoid", "## 6. Shared protocol", "## 7. Paired", "## 8. The papers' claims",
                   "## 9. Reviewer studies", "## 10. Skipped records"):
        assert header in md
    # comparison a: the budget is in the title, each row says how far it got and its paired gap to MAML
    assert "### Omniglot 5w1s: published protocols at an equal budget of 4 min of training per run" in md
    row = next(line for line in md.splitlines() if line.startswith("| iMAML-HF † | iMAML-HF authors |"))
    assert "| 20 |" in row and "| 4.0 |" in row and "[" in row  # iterations, minutes, paired CI
    # a claim measured below the paper's budget gets no verdict, only its measured comparison
    assert "not tested at paper budget" in md
    assert "MAML > iMAML-HF (iMAML-HF vs MAML: −" in md


def test_deviation_ladder_section(report_dir: Path):
    """The short-budget study and the long one each get their tables, the budget and device in every title."""
    md = (report_dir / "REPORT.md").read_text()
    section = md[md.index("### 9.6 Deviation ladder"):md.index("## 10. Skipped records")]
    assert "**An equal short budget measures how fast each rung learns, not where it ends up**" in section
    for title in ("The ladder: deviations added one at a time", "Each deviation removed alone from the full release",
                  "The release's leaky evaluation split", "MAML beside the ladder"):
        assert f"#### {title}, at 3 min of training per run on test CPU (2 threads)" in section
    assert "#### The paper as written and the full release, at 60 min of training per run on test CPU" in section
    assert "| + damped_cg | held-out, split seed 1 (1100/100/423) | 62.00 ± 1.30 | 22.00 [20.00, 24.00] |" in section
    assert "| + data | held-out, split seed 123 (1200/0/423) | 66.00 ± 1.20 | 3.00 [1.20, 4.80] (unpaired) |" in section
    assert "| leaky | release_leaky: 310 of 423 are training characters | 71.00 ± 1.10 | 5.00 [3.40, 6.60]" in section
    assert "| − damped_cg | held-out, split seed 123 (1200/0/423) | diverged | — |" in section
    assert "| + data | held-out, split seed 123 (1200/0/423) | 82.00 ± 1.00 | 2.00 [0.60, 3.40] (unpaired) | — | " \
           "3.00 [1.20, 4.80] (unpaired) |" in section


def test_collect_keeps_the_deviation_study_runs_behind_its_rows(tmp_path: Path):
    from reporting.collect import collect

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


def test_empty_runs_folder_says_what_to_run(tmp_path: Path):
    generate(tmp_path / "runs", tmp_path / "out")  # the folder does not even exist
    md = (tmp_path / "out" / "REPORT.md").read_text()
    assert "no runs yet: run `make reproduce`" in md
    assert "no runs yet: run `make sweep`" in md
    for study in ("fidelity", "precision", "assumptions", "cost", "failures"):
        assert f"no runs yet: run `python study.py study={study}`" in md
    assert md.count("| no runs |") == 11  # every claim, none measured
    assert sorted(p.name for p in (tmp_path / "out" / "tables").iterdir()) == ["claims.csv", "claims.tex"]


def test_stale_generated_files_are_removed(tmp_path: Path):
    out = tmp_path / "out"
    (out / "figures").mkdir(parents=True)
    (out / "figures" / "old.png").write_bytes(b"x")
    (out / "figures" / "notes.txt").write_text("kept: not a generated file type")
    generate(tmp_path / "runs", out)
    assert not (out / "figures" / "old.png").exists() and (out / "figures" / "notes.txt").exists()


@pytest.mark.parametrize("mutate, reason", [
    (lambda d: d.update(schema_version=2), "schema_version 2 is not supported"),
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
    md = (tmp_path / "out" / "REPORT.md").read_text()
    assert "| runs/r | diverged at iteration 200: test-time adaptation diverged (non-finite test metric) |" in md


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
    assert "## 10. Skipped records" in md


def test_collect_copies_records_only_and_replaces_the_destination(tmp_path: Path):
    from reporting.collect import collect

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
    assert "| reproduce/omniglot/maml-s0 |" in (tmp_path / "out" / "REPORT.md").read_text()


def test_collect_refuses_an_empty_source(tmp_path: Path):
    proc = subprocess.run([sys.executable, "-m", "reporting.collect", str(tmp_path / "nothing"), str(tmp_path / "d")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "is not a folder of run records" in proc.stderr
    assert not (tmp_path / "d").exists()


def test_collect_thins_long_metrics_but_keeps_every_validation_row():
    from reporting.collect import thin_metrics

    rows = ["iter,train_loss,val_metric"] + [f"{i},1.0,{0.5 if i % 997 == 0 else ''}" for i in range(1, 5001)]
    kept = thin_metrics("\n".join(rows) + "\n", max_rows=100).splitlines()
    assert kept[0] == rows[0] and kept[-1] == rows[-1] and 100 <= len(kept) <= 110
    assert [r for r in kept if r.endswith(",0.5")] == [r for r in rows if r.endswith(",0.5")]
    short = "\n".join(rows[:50]) + "\n"
    assert thin_metrics(short, max_rows=100) == short
