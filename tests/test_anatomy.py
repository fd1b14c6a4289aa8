"""A failed run says where it failed: a non-finite value injected at one stage (an inner step of
one task, a CG iteration, the outer step, test-time adaptation) is named in the record, with the
task and what defines it, and the last finite values before it."""
import importlib
import json
import math

import pytest
import torch

from trainer import compose, train
from trainer.loop import _Run

QUIET = ["diagnostics=false", "mem_every=0", "eval.val_every=0", "eval.num_tasks=5", "meta_iterations=3",
         "meta_batch_size=4"]


def _run(tmp_path, *overrides) -> _Run:
    run = _Run(compose([*QUIET, *overrides]), tmp_path)
    run.restore()
    return run


def test_a_nan_in_one_task_names_its_inner_step_and_the_task(tmp_path):
    run = _run(tmp_path, "algorithm=maml", "inner_steps=3")
    sample = run.source.sample

    def poisoned(split, n, gen):
        xs, ys, xq, yq = sample(split, n, gen)
        ys = ys.clone()
        ys[2, 0] = float("nan")  # task 2 of the meta-batch: its support loss is NaN from the first step
        return xs, ys, xq, yq

    run.source.sample = poisoned
    assert run.step(1) is None
    a = run.failure(1, "x")["anatomy"]
    assert a["stage"] == "inner step 1" and a["task"] == 2
    d = a["task_definition"]
    assert 0.1 <= d["amplitude"] <= 5.0 and 0 <= d["phase"] <= math.pi
    assert math.isfinite(a["theta_norm"]) and math.isnan(a["failing"]["loss"])
    # the definition is the task's own: the amplitude and phase that generate its query targets
    gen = torch.Generator().manual_seed(run.cfg.seed * 7919 + 1)
    xs, ys, xq, yq = sample("train", 4, gen)
    assert torch.allclose(yq[2], d["amplitude"] * torch.sin(xq[2].double() - d["phase"]).to(yq.dtype), atol=1e-5)


def test_an_inner_step_that_overflows_is_named_with_the_steps_before_it(tmp_path):
    run = _run(tmp_path, "algorithm=fomaml", "inner_steps=5", "inner_lr=1e30")
    assert run.step(1) is None
    a = run.anatomy
    assert a["stage"].startswith("inner step ") and a["task"] == 0
    k = int(a["stage"].split()[-1])
    assert k >= 2 and [e["step"] for e in a["last_finite"]] == list(range(1, k))
    assert all(math.isfinite(e["loss"]) and math.isfinite(e["grad_norm"]) for e in a["last_finite"])


def test_a_cg_iteration_is_named(tmp_path, monkeypatch):
    mod = importlib.import_module("algorithms.imaml")  # the package exports a function of the same name
    real = mod.vjp

    def vjp(*args, **kwargs):
        out, pullback = real(*args, **kwargs)
        calls = []

        def poisoned(v):
            calls.append(1)
            hv = pullback(v)
            return tuple({k: t * float("nan") for k, t in h.items()} for h in hv) if len(calls) == 3 else hv
        return out, poisoned

    monkeypatch.setattr(mod, "vjp", vjp)
    run = _run(tmp_path, "algorithm=imaml", "inner_steps=2", "algorithm.hparams.cg_steps=5")
    assert run.step(1) is None
    a = run.anatomy
    assert a["stage"] == "CG iteration 3" and a["task"] == 0
    assert [e["iteration"] for e in a["last_finite"] if e["stage"] == "cg"] == [1, 2]
    assert all(math.isfinite(e["pAp"]) for e in a["last_finite"] if e["stage"] == "cg")
    assert any(e["stage"] == "query" for e in a["last_finite"])


def test_the_outer_step_is_named_in_the_record(tmp_path):
    run = _run(tmp_path, "algorithm=fomaml")
    step = run.opt.step

    def overflowing():
        step()
        next(iter(run.params.values())).data.fill_(float("inf"))  # what an overflowing update leaves

    run.opt.step = overflowing
    assert run.step(1) is None
    s = run.finish("diverged", 0, run.failure(1, "non-finite"))
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert s["failure"]["stage"] == on_disk["failure"]["stage"] == "outer step"
    assert on_disk["failure"]["anatomy"]["mean_grad_norm"] > 0


def test_test_time_adaptation_is_dissected(tmp_path):
    s = train(compose([*QUIET, "algorithm=maml", "meta_iterations=0", "inner_lr=1e20", "test_inner_steps=4",
                       "eval.steps_list=[]"]), tmp_path)
    assert s["status"] == "diverged"
    a = s["failure"]["anatomy"]
    assert a["stage"].startswith("test-time adaptation, inner step ") and a["split"] == "test"
    assert a["task"] == next(i for i, v in enumerate(s["test"]["per_task"]) if not math.isfinite(v))
    assert set(a["task_definition"]) == {"amplitude", "phase"}


def test_a_healthy_run_records_no_failure_and_its_gradual_milestones(tmp_path):
    s = train(compose([*QUIET, "algorithm=maml", "meta_iterations=40", "eval.val_every=10", "eval.val_tasks=20"]),
              tmp_path)
    assert s["status"] == "completed" and s["failure"] is None
    g = s["gradual"]
    assert g["beat_baseline"]["baseline"] == "zero predictor" and g["beat_baseline"]["iteration"] % 10 == 0


def test_image_tasks_are_described_by_their_classes():
    """The Omniglot fixture is not needed: the sampler's own description replays its draws."""
    from datasets.tasks import TaskSampler

    images = torch.randint(0, 255, (6, 4, 1, 3, 3), dtype=torch.uint8)
    sampler = TaskSampler(images, {"train": [(i, 0) for i in range(6)]}, ways=3, shots=1, query_shots=1,
                          to_float=lambda u: u.float(), sampler="torch", task_rotations=(0, 1, 2, 3),
                          rotate_splits=("train",), class_names=[f"c{i}" for i in range(6)])
    xs, _, _, _ = sampler.sample("train", 2, torch.Generator().manual_seed(3))
    d = sampler.describe("train", 2, torch.Generator().manual_seed(3))
    for t in range(2):
        assert len(d[t]["classes"]) == 3 and all(r in (0, 90, 180, 270) for r in d[t]["rotations"])
        for w, (name, rot) in enumerate(zip(d[t]["classes"], d[t]["rotations"])):
            img = torch.rot90(images[int(name[1:])].float(), rot // 90, dims=(-2, -1))
            assert any(torch.equal(img[j], xs[t, w]) for j in range(4))


def test_diagnose_reruns_a_diverged_record_and_checks_it_independently(tmp_path):
    """tools/diagnose.py on a record of a run that diverged: the rerun fails at the same iteration and
    stage; MAML's inner loop and the float64 dense implicit gradient run on the failing θ and task."""
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("diagnose", root / "tools" / "diagnose.py")
    diagnose = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(diagnose)
    s = train(compose([*QUIET, "algorithm=imaml", "inner_steps=4", "inner_lr=0.4", "meta_iterations=50",
                       "ckpt_every=1"]), tmp_path / "records" / "run")
    assert s["status"] == "diverged" and s["failure"]["iteration"] > 1
    res = diagnose.diagnose(tmp_path / "records" / "run", tmp_path / "out", records_root=tmp_path / "records")
    assert res["failed_again"] and res["failure_iteration"] == s["failure"]["iteration"]
    assert res["anatomy"]["stage"] == s["failure"]["stage"] and res["record"] == "run"
    # from the run's last checkpoint before the failure: the same failure, one iteration of rerun
    again = diagnose.diagnose(tmp_path / "records" / "run", tmp_path / "out2", records_root=tmp_path / "records",
                              checkpoint=tmp_path / "records" / "run" / "ckpt.pt")
    assert again["rerun_from"] == s["failure"]["iteration"] - 1 and again["failed_again"]
    assert (again["failure_iteration"], again["anatomy"]["task"]) == (res["failure_iteration"], res["anatomy"]["task"])
    assert again["anatomy"]["stage"] == res["anatomy"]["stage"]
    assert set(res["maml_inner_loop"]) >= {"finite", "inner_losses", "optimizer"}
    assert "phi_finite" in res["dense_implicit"]
    assert (tmp_path / "out" / "run" / "diagnosis.json").is_file()


def test_unlearned_dissection_agrees_with_the_procedure_once_the_inner_problem_is_solved(tmp_path):
    """diagnose --unlearned: with enough inner steps to (nearly) solve the proximal inner problem, iMAML's
    implicit meta-gradient is the gradient of the procedure run (Rajeswaran et al. 2019, Lemma 1) — cosine ≈ 1
    with MAML differentiated through the same proximal steps; with one step the problem is left mostly
    unsolved and the two part.
    The control trains the same run on that exact gradient, under its own label."""
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("diagnose", root / "tools" / "diagnose.py")
    diagnose = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(diagnose)
    res = {}
    for k in (1, 400):
        run = tmp_path / "records" / f"k{k}"
        s = train(compose([*QUIET, "algorithm=imaml", f"inner_steps={k}", "inner_lr=0.03", "algorithm.hparams.lam=10.0",
                           "algorithm.hparams.cg_steps=30", "dtype=float64", "meta_iterations=2", "eval.final=val",
                           "eval.val_tasks=4"]), run)
        assert s["status"] == "completed"
        res[k] = diagnose.unlearned(run, run / "ckpt.pt", tasks=3, out_root=tmp_path / "out",
                                    records_root=tmp_path / "records", with_control=(k == 1))
    solved, one = res[400], res[1]
    # the ReLU MLP's inner problem has kinks, so gradient descent leaves a residual even when converged
    assert solved["medians"]["inner_residual_rel"] < 0.25 < 0.5 < one["medians"]["inner_residual_rel"]
    assert solved["cos_procedure_of_mean"] > 0.97 and solved["cos_procedure_of_mean"] > one["cos_procedure_of_mean"] + 0.3
    assert min(solved["medians"]["cos_dense"], one["medians"]["cos_dense"]) > 0.999  # 30 CG steps in float64
    ctrl = one["control"]
    assert ctrl["status"] == "completed" and ctrl["iterations_done"] == 2 and ctrl["val"]["n"] == 4
    assert (tmp_path / "out" / "k1" / "diagnosis.json").is_file()


def test_diagnose_worst_test_traces_the_worst_task_from_the_final_checkpoint(tmp_path):
    """diagnose --worst-test: from a completed run's checkpoint, the traced adaptation of its worst test
    task reproduces that task's recorded test MSE (an independent recomputation), step by step."""
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("diagnose", root / "tools" / "diagnose.py")
    diagnose = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(diagnose)
    run = tmp_path / "records" / "run"
    s = train(compose([*QUIET, "algorithm=maml", "test_inner_steps=4", "eval.steps_list=[]"]), run)
    per = s["test"]["per_task"]
    res = diagnose.worst_test(run, run / "ckpt.pt", out_root=tmp_path / "out", records_root=tmp_path / "records")
    assert res["task"] == max(range(len(per)), key=per.__getitem__) and res["task_value"] == per[res["task"]]
    a = res["anatomy"]
    assert a["query_loss"] == pytest.approx(per[res["task"]], rel=1e-5) and len(a["last_finite"]) == 4
    assert res["mean_without_task"] == pytest.approx((sum(per) - per[res["task"]]) / (len(per) - 1))
    assert (tmp_path / "out" / "run" / "diagnosis.json").is_file()
