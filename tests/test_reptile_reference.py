"""Reptile's reference protocol (openai/supervised-reptile): one inner Adam whose state carries over
from task to task and across meta-iterations; test tasks adapted from that state, which they leave
unchanged. Checked against a hand-written sequential loop on torch.optim.Adam, in float64."""
import math

import pytest
import torch

import algorithms
from trainer import compose, train
from trainer.config import ConfigError, validate
from trainer.evaluate import evaluate
from trainer.loop import _Run
from trainer.problem import build_problem

BASE = ["algorithm=reptile", "inner_optim=adam", "inner_optim.betas=[0.0,0.999]", "inner_lr=0.01", "inner_steps=4",
        "inner_state=carried", "dtype=float64", "meta_iterations=3", "meta_batch_size=2", "eval.num_tasks=4",
        "eval.val_every=0", "diagnostics=false", "ckpt_every=1", "eval.steps_list=[]", "mem_every=0"]


def reference_reptile(cfg):
    """Nichol et al. 2018's ``Reptile.train_step``, written out: one torch.optim.Adam over the
    parameters for the whole run; per task, the parameters are reset to θ (its state is not), K
    steps on the support loss; θ ← θ + ε·mean(φ − θ) with ε annealed linearly to 0."""
    problem = build_problem(cfg)
    theta = {k: v.detach().clone() for k, v in problem.params.items()}
    live = {k: v.clone().requires_grad_(True) for k, v in theta.items()}
    opt = torch.optim.Adam(live.values(), lr=cfg.inner_lr, betas=tuple(cfg.inner_optim.betas), eps=cfg.inner_optim.eps)
    gen = torch.Generator().manual_seed(cfg.seed * 7919 + 1)  # the trainer's task stream
    for it in range(1, cfg.meta_iterations + 1):
        xs, ys, _, _ = problem.source.sample("train", cfg.meta_batch_size, gen)
        phis = []
        for i in range(xs.shape[0]):
            with torch.no_grad():
                for k in live:
                    live[k].copy_(theta[k])
            for _ in range(cfg.inner_steps):
                opt.zero_grad()
                problem.loss_fn(live, xs[i], ys[i]).backward()
                opt.step()
            phis.append({k: v.detach().clone() for k, v in live.items()})
        eps = cfg.algorithm.outer.lr * (1 - (it - 1) / cfg.meta_iterations)
        theta = {k: theta[k] + eps * (sum(p[k] for p in phis) / len(phis) - theta[k]) for k in theta}
    state = {k: opt.state[live[k]] for k in live}
    return theta, state


def test_carried_state_matches_a_sequential_reference_loop_in_float64(tmp_path):
    cfg = compose(BASE)
    train(cfg, tmp_path)
    ck = torch.load(tmp_path / "ckpt.pt", weights_only=False)
    theta, ref = reference_reptile(cfg)
    st = ck["inner_state"]
    assert st["t"] == 3 * 2 * 4  # 3 meta-iterations × 2 tasks × 4 steps: the step count never restarts
    for k in theta:
        assert torch.allclose(ck["params"][k], theta[k], atol=1e-10, rtol=0), k
        assert int(ref[k]["step"]) == st["t"]
        assert torch.allclose(st["m"][k], ref[k]["exp_avg"], atol=1e-10, rtol=0), k
        assert torch.allclose(st["v"][k], ref[k]["exp_avg_sq"], atol=1e-10, rtol=0), k
    # and the fresh protocol is measurably another algorithm on the same tasks
    fresh = compose([*BASE, "inner_state=fresh"])
    train(fresh, tmp_path / "fresh")
    other = torch.load(tmp_path / "fresh" / "ckpt.pt", weights_only=False)
    assert other["inner_state"] is None
    assert max((other["params"][k] - theta[k]).abs().max().item() for k in theta) > 1e-6


def test_evaluation_starts_from_the_training_state_and_leaves_it_unchanged(tmp_path):
    cfg = compose([*BASE, "eval.inner_state=training"])
    run = _Run(cfg, tmp_path)
    run.restore()
    for it in (1, 2):
        assert run.step(it) is not None
    before = {k: v if k == "t" else {n: t.clone() for n, t in v.items()} for k, v in run.inner_state.items()}
    spec = run.spec
    a = evaluate(spec, run.params, "test", 7, 4, inner_state=run.inner_state)
    b = evaluate(spec, run.params, "test", 7, 4, inner_state=run.inner_state)
    fresh = evaluate(spec, run.params, "test", 7, 4)
    assert run.inner_state["t"] == before["t"] == 2 * 2 * 4
    for name in ("m", "v"):
        for k, t in run.inner_state[name].items():
            assert torch.equal(t, before[name][k])
    assert a["per_task"] == b["per_task"]  # every task starts from the same state
    assert a["per_task"] != fresh["per_task"]  # and that state is not a fresh one
    # each task's result is the one it gets alone: tasks do not pass the state on
    one = evaluate(spec, run.params, "test", 7, 1, inner_state=run.inner_state)
    assert one["per_task"][0] == pytest.approx(a["per_task"][0], abs=1e-12)


def test_off_clock_calls_and_validation_do_not_advance_the_carried_state(tmp_path):
    """Diagnostics, the memory profile and fidelity repeat the step's meta-gradient on the same
    tasks; validation adapts from the state. None of them may move it: the state after a step is
    the same with all of them on as with all of them off."""
    quiet = compose(BASE)
    busy = compose([*BASE, "diagnostics=1", "mem_every=1", "fidelity_every=1", "eval.val_every=1", "eval.val_tasks=3",
                    "eval.inner_state=training"])
    states = []
    for i, cfg in enumerate((quiet, busy)):
        run = _Run(cfg, tmp_path / str(i))
        run.restore()
        for it in (1, 2):
            row = run.step(it)
            run.validate(it, row)
        states.append(run.inner_state)
        if i:
            assert "val_metric" in row and "fid_cos_exact" in row
    assert states[0]["t"] == states[1]["t"]
    for name in ("m", "v"):
        for k in states[0][name]:
            assert torch.equal(states[0][name][k], states[1][name][k])


def test_resume_restores_the_carried_state_bit_identically(tmp_path):
    cfg = compose([*BASE, "meta_iterations=4"])
    whole = train(cfg, tmp_path / "whole")
    train(compose([*BASE, "meta_iterations=4", "max_train_minutes=0.000001"]), tmp_path / "seg")
    seg = train(compose([*BASE, "meta_iterations=4", "resume=true"]), tmp_path / "seg")
    assert seg["iterations_done"] == whole["iterations_done"] == 4
    a = torch.load(tmp_path / "whole" / "ckpt.pt", weights_only=False)
    b = torch.load(tmp_path / "seg" / "ckpt.pt", weights_only=False)
    assert a["inner_state"]["t"] == b["inner_state"]["t"]
    for k in a["params"]:
        assert torch.equal(a["params"][k], b["params"][k])
        assert torch.equal(a["inner_state"]["v"][k], b["inner_state"]["v"][k])
    assert whole["test"]["per_task"] == seg["test"]["per_task"]
    assert whole["inner"]["state"] == "carried" and whole["inner"]["test_state"] == "fresh"


@pytest.mark.parametrize("overrides, words", [
    (["algorithm=maml", "inner_state=carried"], "not available for algorithm.estimator='maml'"),
    (["algorithm=reptile", "inner_state=carried", "batching=vmap"], "batching='vmap' cannot"),
    (["algorithm=reptile", "eval.inner_state=training"], "needs inner_state=carried"),
    (["algorithm=reptile", "inner_state=sticky"], "inner_state='sticky' is invalid"),
])
def test_bad_inner_state_configs_are_refused_in_one_line(overrides, words):
    with pytest.raises(ConfigError, match=None) as e:
        validate(compose(overrides))
    assert words in str(e.value) and "\n" not in str(e.value)


def test_the_reptile_experiments_run_the_reference_protocol_and_the_fresh_one_stays_named():
    ref = compose(["experiment=omniglot_5w_reptile"])
    assert ref.inner_state == "carried" and ref.eval.inner_state == "training" and ref.dataset.head == "flatten"
    old = compose(["experiment=omniglot_5w_reptile_fresh"])
    assert old.inner_state == "fresh" and old.eval.inner_state == "fresh" and old.dataset.head == "mean"
    openai = compose(["experiment=omniglot_5w_reptile_openai"])
    assert openai.dataset.rotate_splits == ["train"] and openai.dataset.invert is False
    for exp in ("omniglot_20w_reptile", "miniimagenet_reptile"):
        assert compose([f"experiment={exp}"]).inner_state == "carried"
    for exp in ("omniglot_5w_maml", "omniglot_5w_fomaml", "omniglot_5w_imaml", "sinusoid_reptile"):
        c = compose([f"experiment={exp}"])
        assert c.inner_state == "fresh" and c.eval.inner_state == "fresh"


def test_meta_gradient_carried_repeats_itself_and_refuses_estimators_without_state():
    problem = build_problem(compose(["dtype=float64"]))
    tasks = problem.source.sample("train", 3, torch.Generator().manual_seed(0))
    inner = algorithms.InnerConfig.make({"steps": 3, "lr": 0.01, "optimizer": "adam", "betas": (0.0, 0.999)})
    state = algorithms.fresh_inner_state(problem.params, inner)
    g1, _, s1 = algorithms.meta_gradient_carried("reptile", problem.loss_fn, problem.params, tasks, state, inner)
    g2, _, s2 = algorithms.meta_gradient_carried("reptile", problem.loss_fn, problem.params, tasks, state, inner)
    assert state["t"] == 0 and s1["t"] == s2["t"] == 9
    assert all(torch.equal(g1[k], g2[k]) for k in g1)
    # from a fresh state, the first task is the ordinary (fresh) Reptile
    one = tuple(t[:1] for t in tasks)
    g_c, _, _ = algorithms.meta_gradient_carried("reptile", problem.loss_fn, problem.params, one, state, inner)
    g_f, _ = algorithms.meta_gradient_batch("reptile", problem.loss_fn, problem.params, one, inner)
    assert all(torch.allclose(g_c[k], g_f[k], atol=1e-14) for k in g_c)
    with pytest.raises(ValueError, match="carries no inner optimizer state"):
        algorithms.meta_gradient_carried("fomaml", problem.loss_fn, problem.params, tasks, state, inner)
    assert math.isfinite(float(sum(v.abs().sum() for v in g1.values())))


def test_the_ladder_pools_paired_gains_over_seeds_and_says_when_unpaired():
    import pandas as pd

    from reporting.deviations import gain

    def rung(tasks, fingerprint="x", seeds=(0, 1)):  # a rung's completed seeds, one row each
        return pd.DataFrame({"seed": list(seeds), "fingerprint": fingerprint, "tasks": tasks})

    a = rung([[0.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    b = rung([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 0.0]])
    m, lo, hi, kind = gain(a, b)
    # per task, b − a averaged over the seeds: [0.5, 0, 0.5, 0] → mean 0.25, sd 0.25, n 4
    assert kind == "paired" and m == pytest.approx(0.25) and hi - m == pytest.approx(1.96 * 0.25 / 2)
    assert gain(a, rung(list(b["tasks"]), fingerprint="y"))[3] == "unpaired"
    assert gain(a, rung(list(b["tasks"]), seeds=(0, 2))) is None
