"""The paper-budget campaign runner (tools/campaign.py) on a two-run plan of smoke runs."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def plan(*runs):
    """A campaign plan as tools/campaign.py holds it, from (name, overrides) pairs whose first override names the
    experiment."""
    return [{"name": n, "overrides": o, "experiment": o[0].split("=", 1)[1]} for n, o in runs]


@pytest.fixture
def campaign(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("campaign", ROOT / "tools" / "campaign.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    runs = ROOT / "runs" / "test-campaign" / tmp_path.name  # run folders are named relative to the checkout
    monkeypatch.setattr(mod, "RUNS", runs)
    monkeypatch.setattr(mod, "RECORDS", tmp_path / "records")
    monkeypatch.setattr(mod, "PLAN", plan(*[(f"smoke/{a}", ["experiment=smoke", f"algorithm={a}", "ckpt_every=5"])
                                            for a in ("maml", "fomaml")]))
    yield mod
    shutil.rmtree(runs, ignore_errors=True)


def test_runs_collects_and_a_complete_campaign_changes_nothing(campaign, tmp_path):
    assert campaign.run(jobs=2) == 0
    for name in (r["name"] for r in campaign.PLAN):
        s = json.loads((tmp_path / "records" / name / "summary.json").read_text())
        assert s["status"] == "completed" and s["iterations_done"] == 20
        assert not s["run_dir"].startswith("/") and (tmp_path / "records" / name / "metrics.csv").exists()
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "records").rglob("*")}
    assert campaign.run(jobs=2) == 0
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "records").rglob("*")} == before


def test_an_unfinished_run_is_saved_and_restored_on_a_fresh_machine(campaign, tmp_path):
    name = campaign.PLAN[0]["name"]
    run = campaign.RUNS / name
    run.mkdir(parents=True)
    (run / "ckpt.pt").write_bytes(b"state")
    (run / "metrics.jsonl").write_text('{"iter": 5}\n')
    assert campaign.save(name) and (tmp_path / "records" / name / "unfinished" / "ckpt.pt").read_bytes() == b"state"
    shutil.rmtree(campaign.RUNS)  # a fresh clone: only the records are there
    campaign.restore(name)
    assert (run / "ckpt.pt").read_bytes() == b"state" and "resume=true" in campaign.command(name, [])


def test_a_running_run_is_saved_up_to_its_checkpoint(campaign, tmp_path):
    """A run still training has logged past its last checkpoint: its saved metrics stop at the checkpoint's
    iteration, so the records never claim iterations a fresh clone would not resume from."""
    import torch

    name = campaign.PLAN[0]["name"]
    run = campaign.RUNS / name
    run.mkdir(parents=True)
    torch.save({"iteration": 5}, run / "ckpt.pt")
    (run / "metrics.jsonl").write_text("".join(json.dumps({"iter": i}) + "\n" for i in range(1, 9)) + '{"it')
    assert campaign.save(name)
    saved = (tmp_path / "records" / name / "unfinished" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["iter"] for x in saved] == [1, 2, 3, 4, 5]


def test_saving_again_does_not_thin_older_rows(campaign):
    """A run saved in one session and again, further on, in the next keeps the rows that one save of the whole run
    would keep: every validated row and every row at a power-of-two step, never sparser with each session."""
    def rows(a, b):
        return "".join(json.dumps({"iter": i, **({"val_metric": 0.5} if i % 1000 == 0 else {})}) + "\n"
                       for i in range(a, b + 1))
    twice = campaign.thin_jsonl(campaign.thin_jsonl(rows(1, 5000), 100) + rows(5001, 9000), 100)
    assert twice == campaign.thin_jsonl(rows(1, 9000), 100)
    kept = [json.loads(x)["iter"] for x in twice.splitlines()]
    assert 60 <= len(kept) <= 100 and kept[-1] == 9000 and {1000 * k for k in range(1, 10)} <= set(kept)


def test_a_diverged_run_is_an_outcome_recorded_and_not_rerun(campaign, tmp_path, monkeypatch):
    monkeypatch.setattr(campaign, "PLAN", plan(("smoke/diverges", ["experiment=smoke", "algorithm=maml", "inner_lr=1e30"])))
    assert campaign.run(jobs=1) == 0
    s = json.loads((tmp_path / "records" / "smoke" / "diverges" / "summary.json").read_text())
    assert s["status"] == "diverged" and campaign.done("smoke/diverges")
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "records").rglob("*")}
    assert campaign.run(jobs=1) == 0
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "records").rglob("*")} == before


def test_the_plan_is_data_every_run_composes_and_says_why(campaign, tmp_path):
    """configs/campaign.yaml: unique names, each with a reason, in issue order except that the second
    seeds of MAML and FOMAML (under an hour each) go before the multi-session runs, and every run's
    overrides compose to a valid config."""
    import yaml

    from trainer import compose
    from trainer.config import validate

    spec = yaml.safe_load((ROOT / "configs" / "campaign.yaml").read_text())
    names = [r["name"] for r in campaign.campaign_plan(campaign.PLAN_FILE)]
    assert names == [r["name"] for r in spec["runs"]] and all(r["why"].strip() for r in spec["runs"])
    order = ["imaml-s0", "maml-s1", "fomaml-s1", "imaml_release_algo-s0", "reptile_ref-s0", "imaml_hf-s0", "imaml-s1"]
    positions = [names.index(f"omniglot_5w1s/{n}") for n in order]
    assert positions == sorted(positions) and len(set(names)) == len(names)
    for name, overrides in ((r["name"], r["overrides"]) for r in campaign.campaign_plan(campaign.PLAN_FILE)):
        cfg = compose(overrides)
        if not name.startswith("sinusoid/"):
            assert cfg.profile_budget.meta_iterations >= 60000, name
        if "reptile_ref" in name:
            assert cfg.inner_state == "carried" and cfg.eval.early_stop is None and cfg.meta_iterations == 100000
        if name.startswith("sinusoid/"):  # (the Omniglot ones need the data root, which CI may not have)
            validate(cfg)
    bad = tmp_path / "plan.yaml"
    bad.write_text("validation: []\nruns:\n  - {name: a, experiment: smoke, seed: 0}\n")
    with pytest.raises(SystemExit, match="lacks \\['why'\\]"):
        campaign.campaign_plan(bad)



def test_status_and_report_read_one_eta(campaign, tmp_path, capsys):
    """reporting.campaign.runs is the one place ETAs come from (status prints it, the report reads it): a run's own
    rate, else a campaign run's of the same experiment, else the median of committed CPU records (borrowed, ~); the
    rule's earliest stop is the target until a run passes it; an ended run needs nothing; a live run folder is read
    before the saved state."""
    from reporting import campaign as eta

    rule = ["experiment=smoke", "meta_iterations=1000", "eval.val_every=10", "eval.early_stop=plateau"]
    campaign.PLAN[:] = plan(("s/ended", ["experiment=smoke"]), ("s/past", rule), ("s/live", rule), ("s/sibling", rule),
                            ("s/recorded", ["experiment=sinusoid_maml"]))
    rec = campaign.RECORDS

    def write(path, text):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def rows(n, s):
        return "".join(json.dumps({"iter": i, "iter_s": s, **({"val_metric": i / 1000, "val_ci95": 0.01}
                                                              if i % 10 == 0 else {})}) + "\n" for i in range(1, n + 1))
    write(rec / "s/ended/summary.json", json.dumps({"status": "completed", "iterations_done": 20}))
    write(rec / "s/past/unfinished/metrics.jsonl", rows(120, 2.0))
    write(rec / "s/live/unfinished/metrics.jsonl", rows(30, 2.0))
    write(campaign.RUNS / "s/live/metrics.jsonl", rows(40, 36.0))  # the running process is ahead of its saved state
    for i, (device, t) in enumerate([("cpu", 1.0), ("cpu", 5.0), ("cpu", 2.0), ("cuda", 0.01)]):
        write(tmp_path / "other" / str(i) / "summary.json",
              json.dumps({"device": device, "experiment": "sinusoid_maml", "timing": {"median_iter_s": t}}))
    got = {r["name"]: r for r in eta.runs(rec, campaign.RUNS, campaign.PLAN)}
    assert got["s/ended"]["status"] == "completed" and got["s/ended"]["cpu_hours_left"] == 0.0
    assert got["s/past"]["target"] == 1000 and got["s/past"]["cpu_hours_left"] == pytest.approx(880 * 2.0 / 3600)
    assert (got["s/live"]["done"], got["s/live"]["target"], got["s/live"]["val"], got["s/live"]["val_iter"]) == (
        40, 90, 0.04, 40)
    assert got["s/live"]["cpu_hours_left"] == pytest.approx(50 * 36.0 / 3600)
    assert got["s/live"]["curve"] == [(10, 0.01), (20, 0.02), (30, 0.03), (40, 0.04)]  # the live run's, not the saved
    # the rule on s/past's 12 validations: the last third (0.09-0.12) against the one before (0.05-0.08), an MSE
    # (smoke is sinusoid), so a loss of 0.04
    assert got["s/past"]["rule"] == pytest.approx((-0.04, 0.01)) and got["s/live"]["rule"] is None
    assert got["s/sibling"]["borrowed"] and got["s/sibling"]["s_per_iter"] == 36.0
    assert got["s/recorded"]["borrowed"] and got["s/recorded"]["s_per_iter"] == 2.0  # median of the CPU records
    # a run that sped up: its live rows and the saved state's thinned copy of them give the recent rate
    long = "".join(json.dumps({"iter": i, "iter_s": 2.0 if i <= 3000 else 1.0}) + "\n" for i in range(1, 5001))
    write(campaign.RUNS / "s/past/metrics.jsonl", long)
    write(rec / "s/past/unfinished/metrics.jsonl", campaign.thin_jsonl(long, max_rows=100))
    assert eta.runs(rec, campaign.RUNS, campaign.PLAN)[1]["s_per_iter"] == 1.0
    assert eta.runs(rec, None, campaign.PLAN)[1]["s_per_iter"] == 1.0
    (campaign.RUNS / "s/past/metrics.jsonl").unlink()
    (campaign.RUNS / "s/past").rmdir()
    write(rec / "s/past/unfinished/metrics.jsonl", rows(120, 2.0))
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",  # a live process trains it
                             *campaign.command("s/live", [])[2:]])
    (campaign.RUNS / "s/live/campaign.pid").write_text(f"{live.pid}\n")
    argv, waited = Path(f"/proc/{live.pid}/cmdline"), 0
    while argv.exists() and b"hydra.run.dir" not in argv.read_bytes() and waited < 100:  # its exec may still be under way
        time.sleep(0.1)
        waited += 1
    (campaign.RUNS / "s/past").mkdir(parents=True)
    (campaign.RUNS / "s/past/campaign.pid").write_text(f"{os.getpid()}\n")  # a live pid that trains something else
    (campaign.RUNS / "s/sibling").mkdir(parents=True)
    (campaign.RUNS / "s/sibling/campaign.pid").write_text("not a pid\n")
    try:
        campaign.status()
    finally:
        live.kill()
    out = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert out["s/ended"].split()[-3:] == ["-", "-", "-"] and out["s/past"].endswith("any val. -0.0400 ≤ 0.0100")
    assert out["s/live"].split()[-5:] == ["9.6", "h", "0.5", "h", "-"] and "~2.000" in out["s/recorded"]
    assert out["s/live"].split()[1] == "training" and out["s/past"].split()[1] == "saved"
    assert out["s/sibling"].split()[1] == "not"  # "not started"


def test_the_report_names_each_unended_campaign_run_with_its_hours():
    """A paper row the campaign holds says, per run not yet ended, where it stands and its CPU-hours left: a range
    from the rule's earliest stop to the planned iterations, at most the latter once past the earliest stop, the
    planned iterations' alone without the rule; then its variants' runs. The claims table names the first run of the
    row's own protocol, which gives the row's first result."""
    from types import SimpleNamespace

    from reporting.front import _hours_to_run

    row = SimpleNamespace(dataset="omniglot", ways=5, shots=1, label="iMAML-GD")
    base = {"dataset": "omniglot", "ways": 5, "shots": 1, "label": "iMAML-GD", "planned": 60000, "earliest": 9000,
            "val": None, "val_iter": None}
    plan = [{**base, "name": "o/imaml-s2", "status": "completed", "done": 9000, "cpu_hours_left": 0.0,
             "cpu_hours_max": 0.0},
            {**base, "name": "o/imaml-s0", "status": "saved", "done": 12010, "cpu_hours_left": 44.0,
             "cpu_hours_max": 44.0, "val": 0.631, "val_ci95": 0.0302, "val_iter": 12000},
            {**base, "name": "o/imaml-s1", "status": "not started", "done": 0, "cpu_hours_left": 8.25,
             "cpu_hours_max": 55.0},
            {**base, "name": "o/imaml-s3", "status": "saved", "done": 10, "earliest": None, "cpu_hours_left": 3.0,
             "cpu_hours_max": 3.0},
            {**base, "name": "o/release-s0", "label": "iMAML-GD (release)", "status": "saved", "done": 2000,
             "cpu_hours_left": 6.0, "cpu_hours_max": 50.0, "val": 0.909, "val_iter": 2000},
            {**base, "name": "o/maml-s0", "label": "MAML", "status": "saved", "done": 5, "cpu_hours_left": 1.0,
             "cpu_hours_max": 9.0}]
    got = _hours_to_run(row, None, plan)
    assert got["in_campaign"] and got["cpu_hours"] == 44.0
    assert got["verdict"] == (
        "not run: in the campaign plan (o/imaml-s0 at 12,010 of 60,000 iterations (validation 63.1 ± 3.0% at 12,000), "
        "≤ 44.0 CPU-h (the rule may end it "
        "at any validation); o/imaml-s1 not started, 8.2–55.0 CPU-h (the rule may end it from iteration 9,000); "
        "o/imaml-s3 at 10 of 60,000 iterations, ≈ 3.0 CPU-h; o/release-s0 at 2,000 of 60,000 iterations (validation "
        "90.9% at 2,000), 6.0–50.0 CPU-h (the rule may end it from iteration 9,000); `make campaign-status`)")
    assert got["needs"] == "≤ 44.0 CPU-h (the rule may end it at any validation) in the campaign (o/imaml-s0)"


def test_the_paper_budget_figure_draws_unfinished_campaign_runs_dashed(tmp_path):
    """A campaign run that trained and validated but has not ended joins its setting's paper-budget curves, dashed,
    against iterations; ended runs (their records draw them), runs of other settings, runs with no validation yet
    and time-capped groups are left out."""
    from reporting import budget

    base = {"dataset": "omniglot", "ways": 5, "shots": 1, "label": "iMAML-GD", "seed": 0, "planned": 60000,
            "done": 2000, "status": "saved", "curve": [(1000, 0.25), (2000, 0.5)]}
    plan = [{**base, "name": "o/run"}, {**base, "name": "o/ended", "status": "completed"},
            {**base, "name": "o/fresh", "curve": []}, {**base, "name": "o/20w", "ways": 20}]
    got = budget.unfinished(("omniglot", "5w1s", None), plan)
    assert [r["name"] for r in got] == ["o/run"]
    assert budget.unfinished(("omniglot", "5w1s", 4.0), plan) == []
    fig = budget.curves_figure(("omniglot", "5w1s", None), [], tmp_path / "fig", got)
    assert fig is not None and fig.stat().st_size > 0
