"""End to end on sinusoid: every algorithm trains through the real CLI, records are complete,
runs are deterministic, and MAML actually meta-learns."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ALGOS = ["maml", "fomaml", "reptile", "imaml", "imaml_hf"]
SUMMARY_KEYS = {"schema_version", "kind", "status", "run_dir", "algorithm", "variant", "label", "dataset", "ways",
                "shots", "query_shots", "profile", "experiment", "meta_iterations", "iterations_done",
                "meta_batch_size", "inner", "imaml", "outer", "bn_mode", "seed", "seeds", "dtype", "device",
                "device_name", "test", "timing", "memory", "versions", "data", "failure", "config"}


def run_train(run_dir, *overrides, check=True):
    env = dict(os.environ, WANDB_MODE="disabled", KINETO_LOG_LEVEL="4")
    p = subprocess.run([sys.executable, "train.py", f"hydra.run.dir={run_dir}", *overrides], cwd=ROOT,
                       capture_output=True, text=True, env=env, timeout=600)
    if check:
        assert p.returncode == 0, p.stderr[-3000:]
    return p


@pytest.mark.parametrize("algo", ALGOS)
def test_smoke_every_algorithm(tmp_path, algo):
    run_train(tmp_path, f"algorithm={algo}", "experiment=smoke")
    s = json.loads((tmp_path / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(s)
    assert s["status"] == "completed" and s["iterations_done"] == 20 and s["variant"] == algo
    t = s["test"]
    assert t["metric"] == "mse" and t["n"] == 20 and len(t["per_task"]) == 20
    assert t["ci95"] == pytest.approx(1.96 * t["std"] / 20 ** 0.5)
    assert set(t["by_steps"]) == {"1", "5", "10"} and len(t["fingerprint"]) == 64
    assert s["timing"]["median_iter_s"] > 0 and s["memory"]["rss_peak_bytes"] > 0
    assert s["versions"]["torch"] and s["outer"]["optimizer"] in ("adam", "sgd")
    assert (s["imaml"] is not None) == algo.startswith("imaml")
    rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in rows] == list(range(1, 21))
    # the extra diagnostics on the first and every 10th iteration (diagnostics=10), iMAML's CG residual on all
    for key in ("query_loss_before", "inner_grad_norm"):
        assert [r["iter"] for r in rows if key in r] == [1, 10, 20], key
    assert all(("cg_residual" in r) == algo.startswith("imaml") for r in rows)
    assert (tmp_path / ".hydra" / "config.yaml").exists() and (tmp_path / "metrics.csv").exists()


def test_same_seed_same_metrics_different_seed_differs(tmp_path):
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        run_train(tmp_path / name, "algorithm=imaml", "experiment=smoke", f"seed={seed}")
        runs[name] = json.loads((tmp_path / name / "summary.json").read_text())["test"]
    assert runs["a"]["per_task"] == runs["b"]["per_task"]
    assert runs["a"]["per_task"] != runs["c"]["per_task"]
    assert runs["a"]["fingerprint"] == runs["c"]["fingerprint"]  # same test tasks across seeds


def test_maml_meta_learns_sinusoid(tmp_path):
    """A short run lowers the post-adaptation MSE well below the unadapted one."""
    run_train(tmp_path, "algorithm=maml", "meta_iterations=1500", "eval.num_tasks=200", "eval.steps_list=[0,10]")
    t = json.loads((tmp_path / "summary.json").read_text())["test"]
    assert t["by_steps"]["10"] < 0.5 * t["by_steps"]["0"], t["by_steps"]


def test_time_budget_stops_then_a_larger_budget_continues_bit_identically(tmp_path):
    """max_train_minutes ends a run early (tested, status completed, stopped_by says why);
    resume=true with a larger budget continues it to the same weights as one uninterrupted run
    (what `python -m bench.tta` relies on)."""
    import torch

    from trainer import train
    from trainer.config import compose

    base = ["experiment=smoke", "algorithm=fomaml", "meta_iterations=60", "ckpt_every=0", "eval.val_every=0"]
    whole = train(compose(base), tmp_path / "whole")
    assert whole["stopped_by"] == "meta_iterations" and whole["iterations_done"] == 60
    seg = train(compose([*base, "max_train_minutes=0.0005"]), tmp_path / "seg")  # 30 ms
    assert seg["status"] == "completed" and seg["stopped_by"] == "max_train_minutes"
    assert 0 < seg["iterations_done"] < 60 and seg["test"]["n"] == 20
    assert seg["timing"]["train_wall_s"] >= 0.03
    done = train(compose([*base, "max_train_minutes=100", "resume=true"]), tmp_path / "seg")
    assert done["iterations_done"] == 60 and done["stopped_by"] == "meta_iterations"
    a = torch.load(tmp_path / "whole" / "ckpt.pt")["params"]
    b = torch.load(tmp_path / "seg" / "ckpt.pt")["params"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert done["test"]["per_task"] == whole["test"]["per_task"]


def test_job_runner_runs_lines_in_parallel_and_reports_a_failed_job(tmp_path):
    """tools/jobs.py: each line NAME ENTRY OVERRIDE... becomes one run in OUT/NAME; a job that fails
    (here a bad override, exit 2) makes the runner fail after the others finish; each start and end is
    a line with jobs done / total."""
    repo = Path(__file__).resolve().parents[1]
    lines = ("ok/maml train.py experiment=smoke meta_iterations=2 eval.num_tasks=2\n"
             "ok/fomaml train.py experiment=smoke algorithm=fomaml meta_iterations=2 eval.num_tasks=2\n"
             "bad train.py experiment=smoke inner_lr=-1\n")
    proc = subprocess.run([sys.executable, "tools/jobs.py", str(tmp_path / "out")], input=lines, text=True, cwd=repo,
                          capture_output=True, timeout=600, env=dict(os.environ, PY=sys.executable))
    assert proc.returncode != 0 and "job bad failed" in proc.stderr
    assert "[0/3 done] started ok/maml" in proc.stdout and "[3/3 done]" in proc.stdout
    for name in ("maml", "fomaml"):
        assert json.loads((tmp_path / "out" / "ok" / name / "summary.json").read_text())["status"] == "completed"
    assert "inner_lr=-1" in (tmp_path / "out" / "bad.log").read_text()
