"""wandb tracking (offline), Hydra sweeps through hydra-submitit-launcher, and
failures that never stop a sweep. Everything runs the real CLI in subprocesses on the CPU.

The wandb checks read the offline run's transaction log (``run-<id>.wandb``) directly: a
LevelDB-style log of protobuf ``Record`` messages that ``wandb sync`` would upload later.
wandb 0.31 ships no Python reader for it, so :func:`read_wandb_log` parses the framing
(checking every chunk's CRC-32) and decodes the records with wandb's own protobuf classes.
"""
from __future__ import annotations

import csv
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCK = 32768                  # LevelDB log block size
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_wandb_log(path: Path) -> dict:
    """Config, history rows, folded summary and exit code of a ``.wandb`` transaction log."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a wandb transaction log"
    records, buf, pos = [], b"", 7                    # 7-byte file header: ':W&B', magic, version
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:                                  # a block's tail too short for a header is padding
            pos += left
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk = data[pos + 7:pos + 7 + length]
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) == crc, f"{path}: bad CRC at byte {pos}"
        buf, pos = buf + chunk, pos + 7 + length
        if kind in (FULL, LAST):
            rec = pb.Record()
            rec.ParseFromString(buf)
            records.append(rec)
            buf = b""
    out = {"config": {}, "history": [], "summary": {}, "exit_code": None, "files": []}
    for rec in records:
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            out["config"].update({u.key: json.loads(u.value_json) for u in rec.run.config.update})
            out["group"], out["name"], out["project"] = rec.run.run_group, rec.run.display_name, rec.run.project
        elif kind == "config":
            out["config"].update({u.key: json.loads(u.value_json) for u in rec.config.update})
        elif kind == "history":
            out["history"].append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json)
                                   for i in rec.history.item})
        elif kind == "summary":
            for u in rec.summary.update:
                out["summary"][u.key or "/".join(u.nested_key)] = json.loads(u.value_json)
        elif kind == "files":
            out["files"] += [f.path for f in rec.files.files]
        elif kind == "exit":
            out["exit_code"] = rec.exit.exit_code
    return out


def env(tmp_path: Path) -> dict:
    """wandb offline, silent, with every wandb folder inside tmp_path and no reachable server."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    e.update(KINETO_LOG_LEVEL="4", OMP_NUM_THREADS="1", WANDB_MODE="offline", WANDB_SILENT="true",
             WANDB_DIR=str(tmp_path / "wandb-dir"), WANDB_CACHE_DIR=str(tmp_path / "wandb-cache"),
             WANDB_CONFIG_DIR=str(tmp_path / "wandb-config"), WANDB_DATA_DIR=str(tmp_path / "wandb-data"),
             WANDB_BASE_URL="http://127.0.0.1:9", WANDB_DISABLE_GIT="true")
    return e


def run(tmp_path: Path, args: list[str], code: str | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", code, *args] if code else [sys.executable, "train.py", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env(tmp_path), capture_output=True, text=True, timeout=300)


def offline_run(run_dir: Path) -> tuple[Path, dict]:
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, f"expected one offline run under {run_dir}/wandb, found {runs}"
    logs = list(runs[0].glob("run-*.wandb"))
    assert len(logs) == 1
    return runs[0], read_wandb_log(logs[0])


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def test_wandb_offline_run_holds_config_metrics_and_summary(tmp_path):
    rd = tmp_path / "run"
    p = run(tmp_path, ["experiment=smoke", "logger=wandb", f"hydra.run.dir={rd}"])
    assert p.returncode == 0, p.stderr[-3000:]
    summary = load(rd / "summary.json")
    rows = [json.loads(line) for line in (rd / "metrics.jsonl").read_text().splitlines()]
    assert summary["status"] == "completed" and (rd / "metrics.csv").exists()  # plain records regardless
    folder, w = offline_run(rd)

    # the resolved config, as summary.json records it
    config = {k: v for k, v in w["config"].items() if k != "_wandb"}
    assert config == summary["config"]
    assert config["logger"]["name"] == "wandb" and config["meta_iterations"] == 20

    # every per-iteration metric, at step = iteration
    assert [h["_step"] for h in w["history"]] == [r["iter"] for r in rows] == list(range(1, 21))
    for h, r in zip(w["history"], rows):
        for k, v in r.items():
            assert h[k] == pytest.approx(v, rel=1e-12), (k, h, r)
    assert [h["iter"] for h in w["history"] if "val_metric" in h] == [10, 20]

    # the summary: outcome, test metric and timing equal summary.json's; a clean exit
    s = w["summary"]
    assert s["status"] == "completed" and s["iterations_done"] == 20
    assert s["test/mean"] == pytest.approx(summary["test"]["mean"], rel=1e-12)
    assert s["test/ci95"] == pytest.approx(summary["test"]["ci95"], rel=1e-12)
    assert s["test/n"] == 20 and s["test/metric"] == "mse"
    assert s["test/by_steps/10"] == pytest.approx(summary["test"]["by_steps"]["10"], rel=1e-12)
    assert s["timing/median_iter_s"] == pytest.approx(summary["timing"]["median_iter_s"], rel=1e-12)
    assert w["exit_code"] == 0 and w["group"] == "" and w["name"] == "maml-sinusoid-K1-s0"
    assert "summary.json" in w["files"] and load(folder / "files" / "summary.json") == summary


def test_submitit_local_sweep_runs_jobs_in_subprocesses_and_the_report_reads_them(tmp_path):
    sweep = tmp_path / "sweep"
    # gpus_per_node=0: CUDA hidden from the jobs, so they train on the CPU even on a GPU machine
    p = run(tmp_path, ["-m", "hydra/launcher=submitit_local", "hydra.launcher.gpus_per_node=0", "experiment=smoke",
                       "algorithm=maml,fomaml", f"hydra.sweep.dir={sweep}"])
    assert p.returncode == 0, p.stderr[-3000:]
    jobs = {"0_maml_K1_s0": "maml", "1_fomaml_K1_s0": "fomaml"}
    assert {d.name for d in sweep.iterdir() if not d.name.startswith(".") and d.is_dir()} == set(jobs)
    summaries = {}
    for job, algo in jobs.items():
        s = summaries[job] = load(sweep / job / "summary.json")
        assert s["status"] == "completed" and s["variant"] == algo and s["iterations_done"] == 20
        assert s["run_dir"] == str(sweep / job) and s["device"] == "cpu"
    # each job ran in its own submitit subprocess, which logged the trainer's last line
    logs = sorted((sweep / ".submitit").glob("*/*_log.out"))
    assert len(logs) == 2
    text = "".join(f.read_text() for f in logs)
    assert "completed: MAML on sinusoid" in text and "completed: FOMAML on sinusoid" in text
    assert all("Job completed successfully" in f.read_text() for f in logs)
    # the job ids Hydra recorded are submitit's (the local job's pid), one log folder each
    assert {load_hydra_job_id(sweep / job) for job in jobs} == {f.parent.name for f in logs}

    if not (ROOT / "report.py").exists():
        pytest.skip("report.py is missing: the report generator has not landed yet")
    out = tmp_path / "report"
    p = subprocess.run([sys.executable, "report.py", "--runs", str(sweep), "--out", str(out)], cwd=ROOT,
                       env=env(tmp_path), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "MAML" in (out / "REPORT.md").read_text()
    with open(out / "tables" / "runs.csv", newline="") as f:
        table = {row["run"]: row for row in csv.DictReader(f)}
    assert set(table) == {f"{sweep.name}/{job}" for job in jobs}, table.keys()
    for job, s in summaries.items():
        row = table[f"{sweep.name}/{job}"]
        assert row["status"] == "completed" and row["variant"] == jobs[job] and row["metric"] == "mse"
        assert float(row["mean"]) == pytest.approx(s["test"]["mean"], rel=1e-8)


def load_hydra_job_id(job_dir: Path) -> str:
    import yaml

    return str(yaml.safe_load((job_dir / ".hydra" / "hydra.yaml").read_text())["hydra"]["job"]["id"])


def test_a_diverged_job_never_stops_the_sweep_and_finishes_its_wandb_run(tmp_path):
    # inner_lr=1e6 overflows the adapted weights: the loss is inf at the 2nd iteration on sinusoid
    sweep = tmp_path / "sweep"
    p = run(tmp_path, ["-m", "experiment=smoke", "logger=wandb", "inner_lr=1e6,0.01", f"hydra.sweep.dir={sweep}"])
    assert p.returncode == 0, p.stderr[-3000:]
    first, second = load(sweep / "0_maml_K1_s0" / "summary.json"), load(sweep / "1_maml_K1_s0" / "summary.json")
    assert first["status"] == "diverged" and first["iterations_done"] == 1 and first["failure"]["iteration"] == 2
    assert second["status"] == "completed" and second["iterations_done"] == 20

    _, w = offline_run(sweep / "0_maml_K1_s0")
    assert w["summary"]["status"] == "diverged" and w["exit_code"] == 1
    assert w["group"] == str(sweep) and w["project"] == "metagrad-bench"  # the sweep's jobs share a group
    assert w["summary"]["failure/reason"] == first["failure"]["reason"]
    assert w["summary"]["failure/iteration"] == 2 and [h["_step"] for h in w["history"]] == [1]
    _, w = offline_run(sweep / "1_maml_K1_s0")
    assert w["summary"]["status"] == "completed" and w["exit_code"] == 0
    assert w["config"]["inner_lr"] == 0.01 and len(w["history"]) == 20 and w["group"] == str(sweep)


# Runs train.py as the CLI does, with the 3rd meta-iteration of the process raising (a step may
# call the meta-gradient more than once: diagnostics and the memory profile run off the clock).
CRASH_ON_THIRD_CALL = """
import runpy, sys
import trainer.loop as loop
real, calls = loop._Run.step, []
def flaky(self, it):
    calls.append(1)
    if len(calls) == 3:
        raise RuntimeError("injected failure")
    return real(self, it)
loop._Run.step = flaky
sys.argv = ["train.py", *sys.argv[1:]]
runpy.run_path("train.py", run_name="__main__")
"""


def test_a_crashed_job_finishes_its_wandb_run_and_the_sweep_goes_on(tmp_path):
    sweep = tmp_path / "sweep"
    p = run(tmp_path, ["-m", "experiment=smoke", "logger=wandb", "seed=0,1", f"hydra.sweep.dir={sweep}"],
            code=CRASH_ON_THIRD_CALL)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "injected failure" in p.stderr
    crashed, ok = load(sweep / "0_maml_K1_s0" / "summary.json"), load(sweep / "1_maml_K1_s1" / "summary.json")
    assert crashed["status"] == "failed" and crashed["failure"]["reason"] == "RuntimeError: injected failure"
    assert ok["status"] == "completed" and ok["seed"] == 1

    _, w = offline_run(sweep / "0_maml_K1_s0")
    assert w["exit_code"] == 1 and w["summary"]["status"] == "failed"
    assert w["summary"]["failure/reason"] == "RuntimeError: injected failure"
    assert [h["_step"] for h in w["history"]] == [1, 2]
    _, w = offline_run(sweep / "1_maml_K1_s1")
    assert w["exit_code"] == 0 and w["summary"]["status"] == "completed" and len(w["history"]) == 20


# configs/hydra/launcher/submitit_local.yaml shares its name with the plugin's schema, which Hydra
# 1.3 still matches automatically (with this warning); the file is complete without it.
@pytest.mark.filterwarnings("ignore:(?s).*validated against ConfigStore schema with the same name")
def test_slurm_launcher_defaults_overrides_and_sbatch_script(tmp_path, monkeypatch):
    """The slurm launcher config goes through the plugin's real submission code up to the
    ``sbatch`` call (intercepted): one GPU per job by default, overrides reach the script."""
    from omegaconf import OmegaConf

    from trainer import compose

    cfg = compose(["hydra/launcher=slurm", f"hydra.sweep.dir={tmp_path / 'sweep'}"], return_hydra_config=True)
    lc = cfg.hydra.launcher
    assert lc._target_.endswith("SlurmLauncher")
    assert (lc.gpus_per_node, lc.nodes, lc.tasks_per_node, lc.max_num_timeout) == (1, 1, 1, 0)
    assert lc.timeout_min > 0 and lc.mem_gb > 0 and lc.cpus_per_task > 0
    assert OmegaConf.to_container(lc, resolve=True)["submitit_folder"] == f"{tmp_path / 'sweep'}/.submitit/%j"

    local = compose(["hydra/launcher=submitit_local", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                    return_hydra_config=True).hydra.launcher
    assert local._target_.endswith("LocalLauncher") and (local.gpus_per_node, local.nodes) == (1, 1)
    assert OmegaConf.to_container(local, resolve=True)["submitit_folder"] == f"{tmp_path / 'sweep'}/.submitit/%j"

    with pytest.raises(Exception, match="partiton"):  # the plugin's schema rejects unknown keys
        compose(["hydra/launcher=slurm", "hydra.launcher.partiton=gpu"], return_hydra_config=True)

    cfg = compose(["hydra/launcher=slurm", f"hydra.sweep.dir={tmp_path / 'sweep'}",
                   "hydra.launcher.partition=gpu-a100", "hydra.launcher.timeout_min=90",
                   "hydra.launcher.mem_gb=48", "hydra.launcher.gpus_per_node=2",
                   "+hydra.launcher.additional_parameters.account=lab"], return_hydra_config=True)
    import submitit.slurm.slurm as slurm
    from hydra.utils import instantiate

    scripts = []

    def fake_sbatch(self, submission_file: Path):  # the plugin's script, read instead of submitted
        scripts.append(Path(submission_file).read_text())
        raise RuntimeError("sbatch intercepted")

    monkeypatch.setattr(slurm.SlurmExecutor, "affinity", staticmethod(lambda: 2))  # "srun is installed"
    monkeypatch.setattr(slurm.SlurmExecutor, "_make_submission_command", fake_sbatch)
    launcher = instantiate(cfg.hydra.launcher)
    launcher.config = cfg
    with pytest.raises(RuntimeError, match="sbatch intercepted"):
        launcher.launch([["algorithm=maml"], ["algorithm=fomaml"]], initial_job_idx=0)
    assert len(scripts) == 1  # one job array for the whole sweep
    text = scripts[0]
    for flag in ("--partition=gpu-a100", "--gpus-per-node=2", "--time=90", "--mem=48GB", "--nodes=1",
                 "--ntasks-per-node=1", "--cpus-per-task=8", "--account=lab", "--array=0-1%2",
                 "--signal=USR2@120"):
        assert f"#SBATCH {flag}\n" in text, (flag, text)
    assert f"#SBATCH --output={tmp_path / 'sweep'}/.submitit/" in text  # logs beside the sweep's runs
