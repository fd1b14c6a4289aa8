"""A fair comparison: the budget clock, schedules under a time budget, baselines, selection on
validation tasks only, honest budget labels, resumes across code changes."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from trainer import ConfigError, compose, train, validate

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["experiment=smoke", "ckpt_every=0", "eval.val_every=0"]


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_diagnostics_and_memory_run_off_the_budget_clock_and_do_not_change_training(tmp_path):
    """The instrumentation is a second call on the same tasks and θ: the trained θ (and so every
    test task's metric) is the same with it on or off, and its cost is recorded apart."""
    on = train(compose([*SMOKE, "algorithm=reptile", "diagnostics=5", "mem_every=4"]), tmp_path / "on")
    off = train(compose([*SMOKE, "algorithm=reptile", "diagnostics=0", "mem_every=1000"]), tmp_path / "off")
    assert on["test"]["per_task"] == off["test"]["per_task"]
    assert on["timing"]["offclock_wall_s"] > off["timing"]["offclock_wall_s"] > 0  # iteration 1 is profiled
    r = rows(tmp_path / "on")
    assert [x["iter"] for x in r if "alloc_peak_bytes" in x] == [1, 4, 8, 12, 16, 20]
    assert [x["iter"] for x in r if "inner_grad_norm" in x] == [1, 5, 10, 15, 20]
    assert on["memory"]["alloc_peak_bytes"] > 0 and off["memory"]["alloc_peak_bytes"] > 0


def test_a_long_iteration_still_gets_its_first_memory_sample(tmp_path):
    s = train(compose([*SMOKE, "algorithm=imaml_hf", "meta_iterations=3", "mem_max_iter_s=0"]), tmp_path)
    assert [x["iter"] for x in rows(tmp_path) if "alloc_peak_bytes" in x] == [1]
    assert s["memory"]["alloc_peak_bytes"] > 0


def test_annealing_reaches_zero_when_the_time_budget_ends_the_run(tmp_path):
    """Reptile's outer step anneals linearly to 0 over the run; when max_train_minutes ends it
    before meta_iterations, the schedule follows the budget: the last step is within one
    iteration's share of the budget of 0."""
    budget_s = 1.5
    s = train(compose([*SMOKE, "algorithm=reptile", "algorithm.outer.anneal=true", "meta_iterations=100000",
                       f"max_train_minutes={budget_s / 60}"]), tmp_path)
    assert s["stopped_by"] == "max_train_minutes"
    r = rows(tmp_path)
    lrs = [x["lr"] for x in r]
    assert lrs == sorted(lrs, reverse=True) and lrs[0] == pytest.approx(float(s["outer"]["lr"]))
    last = r[-1]
    assert last["lr"] <= float(s["outer"]["lr"]) * (last["iter_s"] + last["sample_s"]) / budget_s + 1e-12
    assert s["budget"] == f"capped at {budget_s / 60:g} min: {len(r):,} of 100,000 iterations"


def test_sinusoid_records_the_zero_predictor_on_the_same_test_tasks(tmp_path):
    from trainer.evaluate import sample_fixed
    from trainer.loop import _Run
    cfg = compose([*SMOKE, "meta_iterations=1"])
    s = train(cfg, tmp_path)
    z = s["test"]["zero_predictor"]
    spec = _Run(cfg, tmp_path / "again").spec
    yq = sample_fixed(spec.source, "test", cfg.eval.test_seed, 0, cfg.eval.num_tasks, spec.device)[3]
    by_hand = [float((y.double() ** 2).mean()) for y in yq]
    assert z["per_task"] == pytest.approx(by_hand, rel=1e-12) and z["mean"] == pytest.approx(sum(by_hand) / len(by_hand))


def test_the_pretrained_baseline_has_no_inner_loop():
    validate(compose(["experiment=sinusoid_pretrained"]))
    cfg = compose(["experiment=sinusoid_pretrained"])
    assert cfg.inner_steps == 0 and cfg.test_inner_steps == 10 and cfg.algorithm.name == "pretrained"
    with pytest.raises(ConfigError, match="plain-regression baseline: it needs algorithm.estimator=fomaml and inner_steps=0"):
        validate(compose(["experiment=sinusoid_pretrained", "inner_steps=1"]))


def test_a_selection_candidate_is_scored_on_validation_tasks_and_never_tested(tmp_path):
    s = train(compose([*SMOKE, "algorithm=imaml", "eval.final=val", "eval.val_tasks=7"]), tmp_path / "sel")
    t = train(compose([*SMOKE, "algorithm=imaml"]), tmp_path / "test")
    assert s["kind"] == "selection" and s["test"] is None and s["val"]["n"] == 7
    assert s["val"]["fingerprint"] != t["test"]["fingerprint"]
    with pytest.raises(ConfigError, match="eval.final='x' is invalid"):
        validate(compose(["eval.final=x"]))


SELECTION = yaml.safe_load((ROOT / "configs" / "selection.yaml").read_text())
TUNED = [(setting, algo, a) for setting, spec in SELECTION.items() for algo, a in spec["algorithms"].items()]


@pytest.mark.parametrize("setting,algo,spec", TUNED, ids=[f"{s}-{a}" for s, a, _ in TUNED])
def test_every_tuned_experiment_runs_its_validation_winner(setting, algo, spec):
    """No choice rests on test tasks: the experiment's values are the winner of its committed
    selection record, every candidate was scored on validation tasks whose fingerprint differs
    from the test tasks', and every tuned algorithm of the setting had as many candidates."""
    path = ROOT / "reports" / "records" / "selection-cpu" / setting / algo / "selection.json"
    rec = json.loads(path.read_text())
    cfg = compose([f"experiment={spec['experiment']}"])
    assert rec["grid"] == spec["grid"] and rec["experiment"] == spec["experiment"]
    for key, value in rec["winner"].items():
        assert OmegaConf.select(cfg, key) == value, (key, OmegaConf.select(cfg, key), value)
    assert f"records/selection-cpu/{setting}/{algo}" in cfg.protocol
    assert (cfg.source.kind, cfg.source.record) == ("selected", f"records/selection-cpu/{setting}/{algo}")
    counts = {a: len(json.loads((path.parent.parent / a / "selection.json").read_text())["candidates"])
              for a in SELECTION[setting]["algorithms"]}
    assert len(set(counts.values())) == 1, counts
    for c in rec["candidates"]:
        s = json.loads((path.parent / c["candidate"] / "summary.json").read_text())
        assert s["config"]["eval"]["final"] == "val" and s["test"] is None  # never tested
        if s["status"] == "completed":
            assert s["kind"] == "selection" and s["val"]["fingerprint"] == c["val_fingerprint"] != rec["test_fingerprint"]
        else:
            assert c["val_metric"] is None and c["candidate"] != rec["winner_name"]


def test_resume_across_an_added_config_key_but_never_a_changed_value(tmp_path):
    base = [*SMOKE, "algorithm=fomaml", "meta_iterations=4", "ckpt_every=2"]
    train(compose([*base, "max_train_minutes=0.0000001"]), tmp_path)
    ckpt = tmp_path / "ckpt.pt"
    ck = torch.load(ckpt)
    ck["config"]["old_key_gone"] = 1  # the checkpoint's code had a key the current code has not
    ck["config_key"] = "older"
    torch.save(ck, ckpt)
    s = train(compose([*base, "resume=true"]), tmp_path)
    assert s["iterations_done"] == 4 and s["resumed_across_keys"] == ["old_key_gone"]
    ck = torch.load(ckpt)
    ck["config"]["seed"], ck["config_key"] = 99, "older"
    torch.save(ck, ckpt)
    with pytest.raises(ConfigError, match=r"different config \(seed\)"):
        train(compose([*base, "resume=true"]), tmp_path)


def test_fidelity_along_training_compares_with_the_exact_gradient_of_the_same_objective(tmp_path):
    """MAML is its own exact reference (cosine 1); FOMAML is not; iMAML also gets its own system
    solved further, which the release's damped system matches far better than the paper's."""
    cols = {}
    for name, over in {"maml": ["algorithm=maml"], "fomaml": ["algorithm=fomaml"],
                       "imaml": ["experiment=sinusoid_imaml"]}.items():
        train(compose([*SMOKE, *over, "meta_iterations=4", "fidelity_every=2", "eval.num_tasks=5"]), tmp_path / name)
        r = rows(tmp_path / name)
        assert [x["iter"] for x in r if "fid_cos_exact" in x] == [1, 2, 4]
        cols[name] = r[0]
    assert cols["maml"]["fid_cos_exact"] == pytest.approx(1.0, abs=1e-12) and cols["maml"]["fid_rel_exact"] < 1e-10
    assert cols["fomaml"]["fid_cos_exact"] < 0.9999
    assert {"fid_cos_solved", "fid_rel_solved", "fid_cg_residual_solved"} <= set(cols["imaml"])
    assert "fid_cos_solved" not in cols["maml"]


def test_the_declared_plateau_rule():
    """From the 9th validation on: the last third's mean must beat the third before it by more
    than that third's mean CI half-width, in the metric's direction."""
    from trainer.evaluate import plateau_gain, plateaued
    rising = [(0.5 + 0.05 * i, 0.01) for i in range(12)]
    assert not plateaued(rising, lower_is_better=False)
    # thirds of 4: validations 8-11 against 4-7, 4 × 0.05 apart; the earlier third's mean CI
    assert plateau_gain(rising, False) == pytest.approx((0.2, 0.01)) and plateau_gain(rising[:8], False) is None
    assert plateaued(rising[:1] * 12, lower_is_better=False)
    assert not plateaued(rising[:1] * 8, lower_is_better=False)  # too few validations
    falling = [(v, ci) for v, ci in reversed(rising)]
    assert plateaued(falling, lower_is_better=False) and not plateaued(falling, lower_is_better=True)
    # a gain of 0.03 per third: a plateau with CIs of 0.05, not with CIs of 0.02
    assert plateaued([(0.01 * i, 0.05) for i in range(9)], False)
    assert not plateaued([(0.01 * i, 0.02) for i in range(9)], False)


def test_a_run_that_plateaus_stops_by_the_declared_rule_and_says_so(tmp_path):
    """An outer learning rate of ~0 keeps θ, so validation is flat: the run stops at the 9th
    validation, is tested like any other, and its record names the rule."""
    from reporting.common import budget_kind
    s = train(compose(["experiment=smoke", "ckpt_every=0", "meta_iterations=40", "eval.val_every=2",
                       "eval.val_tasks=200", "eval.early_stop=plateau", "algorithm.outer.lr=1e-30"]), tmp_path)
    assert s["status"] == "completed" and s["stopped_by"] == "converged" and s["iterations_done"] == 18
    assert s["budget"].startswith("converged at 18 of 40 iterations") and s["early_stop"]["validations"] == 9
    assert s["test"]["n"] > 0
    row = {"profile": "paper", "status": "completed", "iterations_done": 18, "meta_iterations": 40,
           "stopped_by": "converged"}
    assert budget_kind(row) == "converged" and budget_kind(dict(row, stopped_by="max_train_minutes")) is None
    with pytest.raises(ConfigError, match="eval.early_stop=plateau needs eval.val_every > 0 and eval.val_tasks >= 200"):
        validate(compose(["eval.early_stop=plateau", "eval.val_tasks=30"]))
    with pytest.raises(ConfigError, match="eval.early_stop='soon' is invalid"):
        validate(compose(["eval.early_stop=soon"]))


def test_an_estimator_declares_what_its_records_state():
    """λ and the CG settings come from the estimator's own signature, not from probing hparams."""
    import algorithms
    rec = algorithms.record("imaml", {"lam": 10, "cg_steps": 3}, {"prox_mode": "final_step"})
    assert rec == {"lam": 10.0, "cg_steps": 3, "cg_damping": 0.0, "lam_damping": 0.0, "cg_tol": 1e-10,
                   "hvp_mode": "revrev"}
    assert algorithms.record("imaml", {}, None)["cg_tol"] == 0.0
    assert all(algorithms.record(n, {}, None) is None for n in ("maml", "fomaml", "reptile"))
    assert algorithms.proximal_weight("imaml", {}) == 2.0 and algorithms.proximal_weight("maml", {}) == 0.0


def test_stop_at_ends_training_early_on_the_planned_schedule(tmp_path):
    """A selection candidate stops at ``stop_at`` iterations of the experiment's planned run: Reptile's
    outer step follows the planned schedule (at iteration 4 of 12 it is 1 − 3/12 of its start), and an
    algorithm without a schedule over the run trains exactly as with meta_iterations=stop_at."""
    s = train(compose([*SMOKE, "algorithm=reptile", "algorithm.outer.anneal=true", "meta_iterations=12",
                       "stop_at=4"]), tmp_path / "reptile")
    lrs = [x["lr"] for x in rows(tmp_path / "reptile")]
    lr0 = float(s["outer"]["lr"])
    assert lrs == pytest.approx([lr0 * (1 - k / 12) for k in range(4)])
    assert (s["iterations_done"], s["stopped_by"]) == (4, "stop_at")
    assert s["budget"] == "stopped at 4 of 12 iterations (stop_at; the schedule runs over all 12)"
    a = train(compose([*SMOKE, "algorithm=imaml", "meta_iterations=12", "stop_at=4"]), tmp_path / "a")
    b = train(compose([*SMOKE, "algorithm=imaml", "meta_iterations=4"]), tmp_path / "b")
    assert a["test"]["per_task"] == b["test"]["per_task"] and a["stopped_by"] == "stop_at"
