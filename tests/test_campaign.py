"""The paper-budget campaign runner (tools/campaign.py) on a two-run plan of smoke runs."""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def campaign(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("campaign", ROOT / "tools" / "campaign.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    runs = ROOT / "runs" / "test-campaign" / tmp_path.name  # run folders are named relative to the checkout
    monkeypatch.setattr(mod, "RUNS", runs)
    monkeypatch.setattr(mod, "RECORDS", tmp_path / "records")
    monkeypatch.setattr(mod, "PLAN", [(f"smoke/{a}", ["experiment=smoke", f"algorithm={a}", "ckpt_every=5"])
                                      for a in ("maml", "fomaml")])
    yield mod
    shutil.rmtree(runs, ignore_errors=True)


def test_runs_collects_and_a_complete_campaign_changes_nothing(campaign, tmp_path):
    assert campaign.run(jobs=2) == 0
    for name, _ in campaign.PLAN:
        s = json.loads((tmp_path / "records" / name / "summary.json").read_text())
        assert s["status"] == "completed" and s["iterations_done"] == 20
        assert not s["run_dir"].startswith("/") and (tmp_path / "records" / name / "metrics.csv").exists()
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "records").rglob("*")}
    assert campaign.run(jobs=2) == 0
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "records").rglob("*")} == before


def test_an_unfinished_run_is_saved_and_restored_on_a_fresh_machine(campaign, tmp_path):
    name = campaign.PLAN[0][0]
    run = campaign.RUNS / name
    run.mkdir(parents=True)
    (run / "ckpt.pt").write_bytes(b"state")
    (run / "metrics.jsonl").write_text('{"iter": 5}\n')
    assert campaign.save(name) and (tmp_path / "records" / name / "unfinished" / "ckpt.pt").read_bytes() == b"state"
    shutil.rmtree(campaign.RUNS)  # a fresh clone: only the records are there
    campaign.restore(name)
    assert (run / "ckpt.pt").read_bytes() == b"state" and "resume=true" in campaign.command(name, [])


def test_a_diverged_run_is_an_outcome_recorded_and_not_rerun(campaign, tmp_path, monkeypatch):
    monkeypatch.setattr(campaign, "PLAN", [("smoke/diverges", ["experiment=smoke", "algorithm=maml", "inner_lr=1e30"])])
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

    plan = campaign.load_plan()
    spec = yaml.safe_load((ROOT / "configs" / "campaign.yaml").read_text())
    assert [n for n, _ in plan] == [r["name"] for r in spec["runs"]] and all(r["why"].strip() for r in spec["runs"])
    names = [n for n, _ in plan]
    order = ["imaml-s0", "maml-s1", "fomaml-s1", "imaml_release_algo-s0", "reptile_ref-s0", "imaml_hf-s0", "imaml-s1"]
    positions = [names.index(f"omniglot_5w1s/{n}") for n in order]
    assert positions == sorted(positions) and len(set(names)) == len(names)
    for name, overrides in plan:
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
        campaign.load_plan(bad)
