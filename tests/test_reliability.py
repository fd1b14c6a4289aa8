"""Reliability: bad input is refused before any work, failures are recorded outcomes,
runs survive kill -9 and resume bit-identically, and record writes are atomic."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from trainer.records import load_checkpoint, machines, machines_text, read_json

ROOT = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, WANDB_MODE="disabled", KINETO_LOG_LEVEL="4")


def cli(run_dir, *overrides, timeout=600):
    return subprocess.run([sys.executable, "train.py", f"hydra.run.dir={run_dir}", *overrides], cwd=ROOT,
                          capture_output=True, text=True, env=ENV, timeout=timeout)


# (overrides, text the error must contain): each names the key, the value or the choices.
BAD = [
    (["algorithm=foo"], "algorithm"),
    (["dataset=imagenet"], "dataset"),
    (["inner_optim=lbfgs"], "inner_optim"),
    (["inner_steps=-1"], "inner_steps=-1"),
    (["test_inner_steps=-2"], "test_inner_steps=-2"),
    (["inner_lr=0"], "inner_lr=0"),
    (["inner_lr=-0.5"], "inner_lr=-0.5"),
    (["algorithm=imaml", "algorithm.hparams.lam=0"], r"algorithm.hparams: imaml: lam=0 must be"),
    (["algorithm=imaml", "algorithm.hparams.lam=-1"], r"algorithm.hparams: imaml: lam=-1 must be"),
    (["algorithm=imaml", "algorithm.hparams.cg_steps=0"], r"algorithm.hparams: imaml: cg_steps=0 must be"),
    (["meta_batch_size=0"], "meta_batch_size=0"),
    (["dataset=omniglot", "ways=1"], "ways=1"),
    (["shots=0"], "shots=0"),
    (["query_shots=0"], "query_shots=0"),
    (["dtype=float16"], "dtype='float16'"),
    (["device=tpu"], "device='tpu'"),
    (["source.kind=bogus"], "source.kind='bogus'"),
    (["source.kind=selected"], "source.kind=selected names no selection record"),
    (["dataset.target_scale=0"], r"dataset.target_scale=0"),
    (["eval.num_tasks=0"], "eval.num_tasks=0"),
    (["dataset=omniglot", "data.root=/nonexistent/metagrad"], "data.root='/nonexistent/metagrad' does not exist"),
    (["algorithm=maml", "inner_optim=hf"], "inner_optim=hf is only for iMAML"),
    (["batching=threads"], "batching='threads'"),
    (["algorithm=imaml", "batching=compile", "+algorithm.hparams.hvp_mode=fwdrev"],
     "batching='compile' cannot run hvp_mode='fwdrev'"),
    (["max_train_minutes=0"], "max_train_minutes=0"),
    (["algorithm=imaml", "algorithm.hparams.lam_damping=-1"], r"algorithm.hparams: imaml: lam_damping=-1 must be"),
    (["algorithm=maml", "+algorithm.hparams.lam=2"], "algorithm.hparams: maml: unknown hyperparameter(s) ['lam']; allowed: none"),
    (["inner_optim=momentum", "inner_optim.momentum=1.5"], "inner_optim: inner.momentum=1.5 must be in [0, 1)"),
    (["eval.bn_mode=foo"], "eval.bn_mode='foo'"),
    (["inner_steps=abc"], "inner_steps='abc'"),
    (["meta_iterations=-5"], "meta_iterations=-5"),
    (["inner_steps=="], "inner_steps"),                     # malformed override
    (["algorithm.outer.optimizer=rmsprop"], "algorithm.outer.optimizer='rmsprop'"),
    (["eval.steps_list=[1,x]"], "eval.steps_list[1]='x' is invalid: must be an integer"),   # the schema's types
    (["algorithm.outer.clip=-1"], "algorithm.outer.clip=-1 is invalid: must be a finite number > 0"),
    (["log_every=0"], "log_every=0 is invalid: must be an integer >= 1"),
]
if not torch.cuda.is_available():
    BAD.append((["device=cuda"], "CUDA is not available"))


@pytest.mark.parametrize("overrides,expected", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_input_one_line_nonzero_exit_nothing_written(tmp_path, overrides, expected):
    run_dir = tmp_path / "runs" / "x"
    p = cli(run_dir, *overrides)
    assert p.returncode != 0
    assert expected in p.stderr, p.stderr
    assert "Traceback" not in p.stderr
    assert not run_dir.exists() and not (tmp_path / "runs").exists(), list(tmp_path.rglob("*"))


def test_validation_errors_name_the_choices(tmp_path):
    p = cli(tmp_path / "r", "algorithm=foo")
    for choice in ("maml", "fomaml", "reptile", "imaml", "imaml_hf"):
        assert choice in p.stderr


def test_divergence_is_a_recorded_outcome(tmp_path):
    p = cli(tmp_path, "experiment=smoke", "algorithm=maml", "inner_lr=1e30")
    assert p.returncode == 0, p.stderr[-2000:]
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["status"] == "diverged" and s["test"] is None
    assert s["failure"]["iteration"] >= 1 and "non-finite" in s["failure"]["reason"]
    assert s["iterations_done"] == s["failure"]["iteration"] - 1


def test_oom_is_a_recorded_outcome(tmp_path, monkeypatch):
    import trainer.loop as loop
    from trainer import compose

    def boom(*a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(loop, "meta_gradient_batch", boom)
    s = loop.train(compose(["experiment=smoke"]), tmp_path)
    assert s["status"] == "oom" and "out of memory" in s["failure"]["reason"]
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "oom"


RESUME = ["experiment=smoke", "algorithm=imaml", "meta_iterations=400", "ckpt_every=25", "eval.val_every=100"]


def _metrics(run_dir):
    s = json.loads((run_dir / "summary.json").read_text())
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return s, [(r["iter"], r["train_loss"], r.get("val_metric")) for r in rows]


def _wait_for_checkpoint(run_dir, proc, minimum=1):
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        ck = run_dir / "ckpt.pt"
        if ck.exists():
            c = load_checkpoint(ck)
            if c and c["iteration"] >= minimum:
                return c["iteration"]
        time.sleep(0.2)
    raise AssertionError("no checkpoint appeared")


def test_sigkill_then_resume_is_bit_identical(tmp_path):
    ref = tmp_path / "ref"
    assert cli(ref, *RESUME).returncode == 0
    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "train.py", f"hydra.run.dir={run}", *RESUME], cwd=ROOT, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_checkpoint(run, proc, minimum=50)
    time.sleep(0.3)  # land somewhere between checkpoints
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads((run / "summary.json").read_text())["status"] == "running"
    p = cli(run, *RESUME, "resume=true")
    assert p.returncode == 0, p.stderr[-2000:]
    (s_ref, m_ref), (s_run, m_run) = _metrics(ref), _metrics(run)
    assert s_run["status"] == "completed"
    assert s_run["test"]["per_task"] == s_ref["test"]["per_task"]
    assert m_run == m_ref
    # resumed on the same device: one stretch of iterations, the device's own name
    assert [(m["device_name"], m["from"], m["to"]) for m in s_run["machines"]] == [(s_ref["device_name"], 0, 400)]


def test_a_run_resumed_on_another_machine_says_which_iterations_ran_where():
    before = [{"device_name": "CPU A (1 threads)", "from": 0, "to": 300, "train_wall_s": 60.0}]
    same = machines(before, "CPU A (1 threads)", 300, 500, 40.0)
    assert same == [{"device_name": "CPU A (1 threads)", "from": 0, "to": 500, "train_wall_s": 100.0}]
    assert machines_text(same) == "CPU A (1 threads)"
    moved = machines(before, "CPU B (1 threads)", 300, 500, 40.0)
    assert [m["to"] for m in moved] == [300, 500] and before[0]["to"] == 300  # the input is not changed
    assert machines_text(moved) == "CPU A (1 threads) (iterations 0–300) + CPU B (1 threads) (iterations 300–500)"
    # a checkpoint made before machines were recorded: its iterations ran on an unrecorded device
    old = machines([{"device_name": None, "from": 0, "to": 300, "train_wall_s": 60.0}], "CPU B (1 threads)", 300, 301, 1)
    assert machines_text(old).startswith("an unrecorded device (iterations 0–300) + CPU B")
    assert machines([], "CPU B (1 threads)", 0, 0, 0.0) == [
        {"device_name": "CPU B (1 threads)", "from": 0, "to": 0, "train_wall_s": 0.0}]


def test_sigterm_checkpoints_and_records_interrupted(tmp_path):
    run = tmp_path / "r"
    proc = subprocess.Popen([sys.executable, "train.py", f"hydra.run.dir={run}", *RESUME, "meta_iterations=100000"],
                            cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for_checkpoint(run, proc)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    s = json.loads((run / "summary.json").read_text())
    assert s["status"] == "interrupted" and "SIGTERM" in s["failure"]["reason"]
    assert load_checkpoint(run / "ckpt.pt")["iteration"] == s["iterations_done"]


def test_resume_with_other_config_is_refused(tmp_path):
    assert cli(tmp_path, "experiment=smoke").returncode == 0
    p = cli(tmp_path, "experiment=smoke", "seed=7", "resume=true")
    assert p.returncode == 2 and "different config" in p.stderr


def test_garbage_checkpoint_starts_fresh(tmp_path):
    (tmp_path / "ckpt.pt").write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning, match="unreadable checkpoint"):
        assert load_checkpoint(tmp_path / "ckpt.pt") is None
    p = cli(tmp_path, "experiment=smoke", "resume=true")
    assert p.returncode == 0 and json.loads((tmp_path / "summary.json").read_text())["status"] == "completed"


def test_truncated_record_reads_as_missing(tmp_path):
    path = tmp_path / "summary.json"
    path.write_text('{"status": "compl')
    with pytest.warns(UserWarning, match="unreadable record"):
        assert read_json(path) is None
