"""The deviation-ladder study (``study=deviations``): its plan, its configuration checks, the top
of its ladder against the release experiment, retesting a trained run, and a tiny end-to-end
run on the real Omniglot data that is reused and then extended when run again."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import HAVE_OMNIGLOT, REAL_ROOT, REPO_CACHE
from omegaconf import OmegaConf, open_dict

import studies
from studies import deviations as dv
from studies.common import train_config
from trainer import ConfigError, compose, train
from trainer.retest import retest, training_part

ROOT = Path(__file__).resolve().parent.parent
LABELS = ("experiment_name", "protocol", "source")  # what names a configuration, not what it runs
DOCUMENTED = ["group", "rung", "deviations", "algorithm", "test_split", "accuracy", "ci95", "n", "iterations_done",
              "train_minutes", "median_iter_s", "status", "fingerprint", "run_dir", "vs", "diff_mean", "diff_low",
              "diff_high", "diff_kind"]


def study_cfg(tmp_path: Path, *overrides: str):
    return compose(["study=deviations", "device=cpu", f"data.root={tmp_path}", *overrides], config_name="study")


def resolved(overrides: list[str]) -> dict:
    c = OmegaConf.to_container(train_config(overrides), resolve=True)
    return {k: v for k, v in c.items() if k not in LABELS}


def test_the_last_cumulative_rung_is_the_release_experiment(tmp_path):
    cfg = study_cfg(tmp_path)
    s = cfg.study
    every = [o for ovs in dv.deviations(s).values() for o in ovs]
    data = [f"data.root={tmp_path}"]
    assert resolved([*s.base, *every, *data]) == resolved([s.release, *data])
    # as the study runs it: the top rung's training run (tested with λ = 0 itself), with the study's settings
    top = [p for p in dv.points(s) if p.group == "ladder"][-1]
    plan = dv.resolve(cfg, top, dv.budget(s))
    assert plan.name == "paper+" + "+".join(d for d in s.deviations if d != "test_lam0") and plan.retest is None
    assert resolved(plan.train) == resolved([s.release, *dv.common(cfg, dv.budget(s))])
    assert resolved([s.base[0], *data]) != resolved([s.release, *data])


def test_plan_shares_training_runs_where_only_the_test_changes(tmp_path):
    cfg = study_cfg(tmp_path)
    plan = {(p.group, p.rung): dv.resolve(cfg, p, 3.0) for p in dv.points(cfg.study)}
    names = list(cfg.study.deviations)
    assert [r for g, r in plan if g == "ladder"] == ["paper", *names]
    assert [r for g, r in plan if g == "removed"] == ["release", *names]
    assert [r for g, r in plan if g == "maml"] == ["maml", "network", "data"]
    assert [r for g, r in plan if g == "leaky"] == ["clean", "leaky"]
    # λ = 0 at test trains nothing new: the rung below it, tested again
    lam0, below = plan["ladder", "test_lam0"], plan["ladder", "adam_eps"]
    assert lam0.name == below.name and lam0.train == below.train and below.retest is None
    assert lam0.tests == ["eval.prox_lam=0.0"] and [o for o in lam0.retest if o not in lam0.tests] == below.train
    # the rungs above it are trained with λ = 0 at test and tested by their own final test
    release = plan["ladder", "data"]
    assert release.retest is None and "eval.prox_lam=0.0" in release.train
    assert plan["removed", "release"] == plan["leaky", "clean"] == release
    assert all(plan["removed", d].retest is None and "eval.prox_lam=0.0" in plan["removed", d].train
               for d in names if d != "test_lam0")
    without = plan["removed", "test_lam0"]  # the release's parameters, tested with the paper's λ
    assert without.name == release.name and without.tests == [] and "eval.prox_lam=0.0" not in without.retest
    assert plan["removed", "data"] == plan["ladder", "network"]
    assert plan["leaky", "leaky"].tests == ["eval.prox_lam=0.0", "dataset.test_split=release_leaky"]
    assert plan["maml", "data"].name == "maml+network+data" and plan["maml", "data"].retest is None
    assert not any("prox_lam" in o for o in plan["maml", "data"].train)
    assert len({v.name for v in plan.values()}) == 15  # 7 ladder + 5 removed + 3 MAML training runs
    assert sum(v.retest is not None for v in {(v.name, tuple(v.retest or ())): v for v in plan.values()}.values()) == 3
    assert all("max_train_minutes=3" in v.train and "eval.num_tasks=600" in v.train for v in plan.values())
    long = study_cfg(tmp_path, "study.long_budget_minutes=60")
    assert [(p.group, p.rung) for p in dv.points(long.study)] == [
        ("endpoints", "paper"), ("endpoints", "release"), ("leaky", "clean"), ("leaky", "leaky")]
    assert all("max_train_minutes=60" in dv.resolve(long, p, 60.0).train for p in dv.points(long.study))


@pytest.mark.parametrize("override, message", [
    ('study.deviations.damped_cg=["algorithm.hparams.cg_dampin=1.0"]', "study.deviations.damped_cg="),
    ('study.deviations.init=["dataset.init=kaiming"]', "study.deviations.init=['dataset.init=kaiming']: dataset: "
                                                     "model.init='kaiming'"),
    ('+study.deviations.longer=["max_train_minutes=5"]', "study.deviations.longer: 'max_train_minutes=5' sets a key"),
    ('+study.deviations.paper=["seed=1"]', "study.deviations.paper: a name of letters"),
    ("study.groups=[ladder,sideways]", "study.groups"),
    ("study.maml_deviations=[damped_cg]", "study rung maml/damped_cg"),
    ("study.maml_deviations=[nope]", "study.maml_deviations"),
    ('study.leaky=["dataset.invert=false"]', "study.leaky"),
    ("study.budget_minutes=0", "study.budget_minutes"),
    ("study.long_budget_minutes=-5", "study.long_budget_minutes"),
])
def test_bad_study_config_is_one_line_error(tmp_path, override, message):
    with pytest.raises(ValueError) as err:
        studies.check(study_cfg(tmp_path, override))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_bad_rung_fails_before_any_work_through_the_cli(tmp_path):
    out = tmp_path / "study"
    p = subprocess.run([sys.executable, "study.py", "study=deviations", f"data.root={tmp_path}",
                        'study.deviations.network=["dataset.arch=resnet"]', f"hydra.run.dir={out}"],
                       cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 2, p.stderr[-2000:]
    assert p.stderr.strip().splitlines() == [
        "error: study.deviations.network=['dataset.arch=resnet']: dataset: model.arch='resnet'; "
        "allowed: ['maml', 'imaml_release', 'hypertorch']"]
    assert not out.exists()


def test_retest_changes_only_the_test(tmp_path):
    base = ["algorithm=imaml", "dataset=sinusoid", "meta_iterations=2", "meta_batch_size=2", "eval.num_tasks=4",
            "eval.val_every=0", "inner_steps=2"]
    s = train(compose(base), tmp_path / "run")
    again = retest(compose(base), tmp_path / "run")
    assert again["test"]["per_task"] == s["test"]["per_task"] and again["iteration"] == 2
    other = retest(compose([*base, "eval.prox_lam=0.0", "test_inner_steps=5"]), tmp_path / "run")
    assert other["test"]["fingerprint"] == s["test"]["fingerprint"] and other["test"]["steps"] == 5
    assert other["test"]["per_task"] != s["test"]["per_task"]
    with pytest.raises(ConfigError, match=r"may change only .* differ from the run's config: \['inner_lr'\]"):
        retest(compose([*base, "inner_lr=0.5"]), tmp_path / "run")
    assert training_part({"eval": {"num_tasks": 1}, "dataset": {"test_split": "x", "name": "o"}, "resume": True,
                          "seed": 0}) == {"dataset": {"name": "o"}, "seed": 0}


# ---------------------------------------------------------------- a tiny study on the real data
def tiny(tmp_path: Path, budget: float, meta_iterations: int = 3):
    """Two rungs (the release's CG system, then λ = 0 at test) plus the leaky test, on meta-batches of 2."""
    cfg = compose(["study=deviations", "device=cpu", f"data.root={REAL_ROOT}", f"data.cache_dir={REPO_CACHE}",
                           "study.groups=[ladder,leaky]", f"study.budget_minutes={budget}", "study.eval_tasks=4",
                           f"study.meta_iterations={meta_iterations}", "study.ckpt_every=1",
                           'train_overrides=["meta_batch_size=2","inner_steps=2","test_inner_steps=2"]'], config_name="study")
    with open_dict(cfg):
        cfg.study.deviations = {"damped_cg": ["algorithm.hparams.cg_damping=1.0", "algorithm.hparams.lam_damping=10.0"],
                                "test_lam0": ["eval.prox_lam=0.0"]}
    return cfg


def read_rows(out: Path) -> list[dict]:
    record = json.loads((out / "study.json").read_text())
    assert record["status"] == "completed" and record["csvs"] == ["deviations.csv"]
    with open(out / "deviations.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames[:len(DOCUMENTED)] == DOCUMENTED and reader.fieldnames == dv.COLUMNS
        return list(reader)


@pytest.mark.data
@pytest.mark.skipif(not HAVE_OMNIGLOT, reason=f"real Omniglot zips not under {REAL_ROOT}/omniglot")
def test_tiny_study_end_to_end_reuses_and_extends(tmp_path, capfd):
    out = tmp_path / "study"
    studies.run(tiny(tmp_path, 1e-4), out)  # a budget that stops every run after its first iteration
    rows = {(r["group"], r["rung"]): r for r in read_rows(out)}
    assert list(rows) == [("ladder", "paper"), ("ladder", "damped_cg"), ("ladder", "test_lam0"),
                          ("leaky", "clean"), ("leaky", "leaky")]
    assert sorted(p.name for p in (out / "train").iterdir()) == ["paper", "paper+damped_cg"]
    for r in rows.values():
        assert r["status"] == "completed" and r["n"] == "4" and r["iterations_done"] == "1"
        assert r["stopped_by"] == "max_train_minutes" and r["budget_minutes"] == "0.0001"
        assert r["algorithm"] == "iMAML-GD" and float(r["median_iter_s"]) > 0
    paper, damped, lam0 = rows["ladder", "paper"], rows["ladder", "damped_cg"], rows["ladder", "test_lam0"]
    assert damped["vs"] == "paper" and damped["diff_kind"] == "paired" and damped["fingerprint"] == paper["fingerprint"]
    assert lam0["run_dir"] == damped["run_dir"] == "train/paper+damped_cg" and lam0["deviations"] == "damped_cg+test_lam0"
    assert lam0["evaluation"] == "retest/eval.prox_lam=0.0.json" and damped["evaluation"] == "summary.json"
    assert float(lam0["diff_mean"]) == pytest.approx(float(lam0["accuracy"]) - float(damped["accuracy"]))
    clean, leaky = rows["leaky", "clean"], rows["leaky", "leaky"]
    assert (clean["accuracy"], clean["run_dir"]) == (lam0["accuracy"], lam0["run_dir"])
    assert (clean["test_split"], leaky["test_split"]) == ("standard", "release_leaky")
    # the release's evaluation characters hold 271 of the paper split's training characters (310 of the release's)
    assert (clean["test_train_overlap"], leaky["test_train_overlap"]) == ("0", "271")
    assert leaky["vs"] == "clean" and leaky["diff_kind"] == "unpaired" and leaky["fingerprint"] != clean["fingerprint"]
    assert paper["split_seed"] == "1" and paper["split_sizes"] == "1100/100/423"

    def stamps():
        return {p: p.stat().st_mtime_ns for p in sorted((out / "train").rglob("*.json"))}

    before = stamps()
    capfd.readouterr()
    studies.run(tiny(tmp_path, 1e-4), out)  # the same study again: every run and every retest reused
    assert "reusing" in capfd.readouterr().out and stamps() == before
    assert [r["accuracy"] for r in read_rows(out)] == [r["accuracy"] for r in rows.values()]

    with pytest.raises(ValueError, match="was trained for 0.0001 min, more than this study's 1e-05 min"):
        studies.check(tiny(tmp_path, 1e-5), out)
    other = tiny(tmp_path, 1e-4)
    other.study.eval_tasks = 5
    with pytest.raises(ValueError, match=r"holds a run of another configuration \(eval.num_tasks differ"):
        studies.check(other, out)

    studies.run(tiny(tmp_path, 10.0), out)  # a larger budget: each run continues to its 3 iterations
    again = read_rows(out)
    assert {r["iterations_done"] for r in again} == {"3"} and {r["stopped_by"] for r in again} == {"meta_iterations"}
    summary = json.loads((out / "train" / "paper" / "summary.json").read_text())
    assert summary["max_train_minutes"] == 10.0 and summary["status"] == "completed"
    assert len((out / "train" / "paper" / "metrics.jsonl").read_text().splitlines()) == 3


def test_the_hypertorch_ladder_ends_at_the_hypertorch_experiment(tmp_path):
    """study=deviations_hypertorch: the paper as written plus every difference composes to
    experiment=omniglot_5w_imaml_hypertorch; the ladder and the removed-one rows, nothing else,
    and no rung changes the class split."""
    cfg = compose(["study=deviations_hypertorch", "device=cpu", f"data.root={tmp_path}"], config_name="study")
    s = cfg.study
    dv.validate(cfg)
    every = [o for ovs in dv.deviations(s).values() for o in ovs]
    data = [f"data.root={tmp_path}"]
    ladder_top, hypertorch = resolved([*s.base, *every, *data]), resolved([s.release, *data])
    assert hypertorch["algorithm"].pop("label") == "iMAML-GD (hypertorch)"  # a name, not a setting
    ladder_top["algorithm"].pop("label")
    assert ladder_top == hypertorch
    assert {p.group for p in dv.points(s)} == {"ladder", "removed"}
    assert not any(o.startswith("dataset.split") for o in every)
