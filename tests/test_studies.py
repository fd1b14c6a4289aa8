"""The reviewer studies at a tiny scale: their CSVs have the documented columns and
their numbers agree with independent oracles (finite differences, dense eigendecompositions,
MAML differentiated through the unroll)."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
from torch.func import jacfwd, jacrev

import models
import studies
from algorithms import InnerConfig, solve_inner
from algorithms.linalg import tree_flatten, tree_unflatten
from datasets.sinusoid import Sinusoid
from studies import assumptions, cost, cost_point, failures, fidelity
from trainer import compose

ROOT = Path(__file__).resolve().parent.parent
# The columns reports/ relies on (the study-CSV schema); a study may append more.
DOCUMENTED = {
    "fidelity.csv": ["theta_source", "task", "method", "inner_steps", "cg_steps", "cosine", "rel_error", "hvps",
                     "grad_evals"],
    "precision.csv": ["inner_steps", "task", "rel_diff", "norm32", "norm64", "nonfinite32", "nonfinite64"],
    "precision_train.csv": ["dtype", "metric", "mean", "ci95", "n", "verdict"],
    "assumptions.csv": ["checkpoint", "task", "lam", "eig_min", "eig_max", "strongly_convex", "hess_lipschitz",
                        "inner_grad_norm", "cg_residual", "query_grad_norm"],
    "cost.csv": ["algorithm", "inner_optimizer", "inner_steps", "median_iter_s", "cpu_time_s", "alloc_peak_bytes",
                 "rss_peak_bytes", "gpu_peak_bytes", "device", "status"],
    "failures.csv": ["algorithm", "lam", "inner_steps", "cg_steps", "inner_lr", "final_metric", "metric", "status"],
    "rescaling.csv": ["scale", "inner_steps", "task", "rel_diff", "norm32", "norm64", "nonfinite32", "nonfinite64"],
    "rescaling_train.csv": ["scale", "seed", "experiment", "status", "iterations_done", "meta_iterations",
                            "failure_stage", "test_mse_scaled", "test_mse", "test_ci95", "run_dir"],
}


def run_study(tmp_path: Path, name: str, *overrides: str) -> dict[str, list[dict]]:
    """Run a study in-process; check study.json and each CSV's header; return the CSV rows."""
    cfg = compose([f"study={name}", "device=cpu", *overrides], config_name="study")
    out = studies.run(cfg, tmp_path / name)
    record = json.loads((out / "study.json").read_text())
    assert record["kind"] == "study" and record["study"] == name and record["status"] == "completed"
    assert set(record["versions"]) >= {"python", "torch", "learn2learn", "git_commit"}
    assert record["config"]["study"]["name"] == name and record["device"] == "cpu"
    tables = {}
    for fname in record["csvs"]:
        with open(out / fname, newline="") as f:
            reader = csv.DictReader(f)
            assert reader.fieldnames[:len(DOCUMENTED[fname])] == DOCUMENTED[fname], fname
            tables[fname] = list(reader)
        assert tables[fname], f"{fname} is empty"
    assert sorted(tables) == sorted(k for k in DOCUMENTED if k.split(".")[0].startswith(name))
    return tables


# ---------------------------------------------------------------- fidelity
def test_fidelity_imaml_reaches_exact_gradient_fomaml_does_not(tmp_path):
    rows = run_study(tmp_path, "fidelity", "study.tasks=3", "study.theta_sources=[init]",
                     "study.inner_steps=[1,400]", "study.cg_steps=[1,30]")["fidelity.csv"]
    assert all(r["ref_converged"] == "True" and float(r["ref_grad_norm"]) <= 1e-10 for r in rows)

    def cos(method, K, c=""):
        vals = [float(r["cosine"]) for r in rows if r["method"] == method and r["inner_steps"] == str(K)
                and r["cg_steps"] == c]
        assert len(vals) == 3
        return vals

    assert min(cos("imaml", 400, "30")) >= 0.999
    # MAML differentiated through 400 unrolled proximal steps reaches the same exact gradient:
    # an independent route (autograd through the unroll vs the implicit-function formula).
    assert min(cos("maml_prox", 400)) >= 0.999
    assert max(cos("fomaml", 400)) < 0.99  # no second-order term: measurably off
    assert sum(cos("imaml", 1, "1")) < sum(cos("imaml", 400, "30"))
    # one CG step from 0 returns a multiple of ∇L_query(φ_K): FOMAML's direction exactly
    assert cos("imaml", 400, "1") == pytest.approx(cos("fomaml", 400), abs=1e-9)
    big = [r for r in rows if r["inner_steps"] == "400" and r["method"] in ("imaml", "maml_prox")
           and r["cg_steps"] in ("30", "")]
    assert len(big) == 6
    for r in big:  # magnitude too, within the inner solve's accuracy (Rajeswaran et al. Thm. 1: δ + δ')
        assert float(r["rel_error"]) < 1e-2 and float(r["inner_grad_norm"]) < 1e-2
    assert all(r["hvps"] == "30" and r["grad_evals"] == "401" for r in big if r["method"] == "imaml")
    assert all(r["rel_error"] == "" for r in rows if r["method"] == "reptile")


def test_exact_reference_matches_finite_differences():
    """g* from the implicit formula equals the derivative of θ ↦ L_query(φ*(θ)) by central
    differences, with φ*(θ ± εv) solved by the test's own Newton iteration to ||∇G|| < 1e-11."""
    params = models.init_mlp(torch.Generator().manual_seed(0), torch.float64, hidden=(16, 16))
    loss = models.mse_loss(partial(models.mlp, activation="tanh"))
    xs, ys, xq, yq = Sinusoid(dtype=torch.float64).sample("train", 1, torch.Generator().manual_seed(3))
    sup, qry = (xs[0], ys[0]), (xq[0], yq[0])
    warm = InnerConfig.make({"steps": 100, "lr": 0.03, "prox_lam": 2.0})

    ref, info = fidelity.exact_reference(loss, params, sup, qry, 2.0, warm, tol=1e-12)
    assert info["converged"]
    v = torch.randn(ref.numel(), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    eps = 1e-5

    th = tree_flatten(params)
    losses = []
    for sign in (1, -1):
        theta = tree_unflatten(th + sign * eps * v, params)
        phi = _polished(loss, theta, sup, warm)
        losses.append(loss(phi, *qry).item())
    fd = (losses[0] - losses[1]) / (2 * eps)
    assert fd == pytest.approx(float(ref @ v), rel=1e-6)


def test_cg_reference_equals_dense_reference():
    """The Hessian-free reference (Newton-CG + CG, used for conv4) agrees with the dense one."""
    params = models.init_mlp(torch.Generator().manual_seed(0), torch.float64, hidden=(8, 8))
    loss = models.mse_loss(partial(models.mlp, activation="tanh"))
    xs, ys, xq, yq = Sinusoid(dtype=torch.float64).sample("train", 1, torch.Generator().manual_seed(3))
    warm = InnerConfig.make({"steps": 20, "lr": 0.03, "prox_lam": 2.0})
    args = (loss, params, (xs[0], ys[0]), (xq[0], yq[0]), 2.0, warm)
    dense, i1 = fidelity.exact_reference(*args, solver="dense")
    cg, i2 = fidelity.exact_reference(*args, solver="cg", newton_cg_steps=100, cg_max_steps=150)
    assert i1["converged"] and i2["converged"]
    assert ((dense - cg).norm() / dense.norm()).item() < 1e-8


def _polished(loss, theta, sup, warm):
    """φ*(θ) by the warm start + plain Newton steps on the dense Hessian (tests' own solver)."""
    x, y = sup
    phi = solve_inner(loss, theta, sup, warm)
    u, th = tree_flatten(phi), tree_flatten(theta)

    def G(w):
        return loss(tree_unflatten(w, theta), x, y) + 1.0 * ((w - th) ** 2).sum()  # λ/2 = 1

    for _ in range(30):
        g = jacrev(G)(u)
        if g.norm() < 1e-12:
            break
        u = u - torch.linalg.solve(jacfwd(jacrev(G))(u), g)
    assert g.norm() < 1e-11
    return tree_unflatten(u, theta)


# ---------------------------------------------------------------- precision
def test_precision_float32_vs_float64(tmp_path):
    t = run_study(tmp_path, "precision", "study.tasks=2", "study.inner_steps=[1,5]", "study.train.meta_iterations=4",
                  "study.train.eval_tasks=8")
    rows = t["precision.csv"]
    assert {r["theta_source"] for r in rows} == {"init", "trained"} and len(rows) == 2 * 2 * 2
    for r in rows:
        assert r["nonfinite32"] == "False" and r["nonfinite64"] == "False"
        # both precisions really ran (not the same numbers), and agree to float32 accuracy here
        assert 0 < float(r["rel_diff"]) < 1e-4
        assert float(r["norm32"]) == pytest.approx(float(r["norm64"]), rel=1e-4)
    train = t["precision_train.csv"]
    assert [(r["dtype"], r["role"]) for r in train] == [("float32", "paired"), ("float64", "paired"),
                                                         ("float32", "control")]
    assert all(r["status"] == "completed" and r["n"] == "8" and r["metric"] == "mse" for r in train)
    assert len({r["fingerprint"] for r in train}) == 1  # the same test tasks in both precisions
    assert train[0]["verdict"].split(":")[0] in ("no", "possibly", "yes", "inconclusive")


# ---------------------------------------------------------------- assumptions
def test_lanczos_matches_dense_eigendecomposition():
    g = torch.Generator().manual_seed(0)
    small = models.init_mlp(g, torch.float64, hidden=(8, 8))  # 97 parameters
    full, _ = models.build("mlp", dtype=torch.float64)  # 1761 parameters, the study's model
    loss = models.mse_loss(models.mlp)
    xs, ys, _, _ = Sinusoid(dtype=torch.float64).sample("train", 1, torch.Generator().manual_seed(1))
    sup = (xs[0], ys[0])
    for params, steps, tol in ((small, 97, 1e-8), (full, 40, 1e-3)):
        phi = solve_inner(loss, params, sup, InnerConfig.make({"steps": 10, "lr": 0.02, "prox_lam": 2.0}))
        u = tree_flatten(phi)
        H = jacfwd(jacrev(lambda w: loss(tree_unflatten(w, phi), *sup)))(u)
        dense = torch.linalg.eigvalsh(H)
        lo, hi = assumptions.support_hessian_eigs(loss, phi, sup, steps, torch.Generator().manual_seed(2))
        scale = dense.abs().max().item()
        assert dense[0].item() < 0 < dense[-1].item()  # an indefinite Hessian: a meaningful check
        assert lo == pytest.approx(dense[0].item(), abs=tol * scale)
        assert hi == pytest.approx(dense[-1].item(), abs=tol * scale)


def test_assumptions_study(tmp_path):
    rows = run_study(tmp_path, "assumptions", "study.tasks=2", "study.checkpoints=[0,3]", "study.lams=[0.5,5.0]",
                     "study.lanczos_steps=10", "study.lipschitz_probes=1", "study.train.eval_tasks=4")["assumptions.csv"]
    assert len(rows) == 2 * 2 * 2
    assert {r["checkpoint"] for r in rows} == {"0", "3"}
    for r in rows:
        lo, hi, lam = float(r["eig_min"]), float(r["eig_max"]), float(r["lam"])
        assert lo <= hi
        assert r["strongly_convex"] == str(lo + lam > 0)
        assert float(r["hess_lipschitz"]) > 0 and float(r["query_grad_norm"]) > 0
        assert float(r["inner_grad_norm"]) >= 0 and float(r["cg_residual"]) >= 0


# ---------------------------------------------------------------- cost
def test_cost_cli_maml_memory_grows_with_steps_imaml_flat(tmp_path):
    """Through the real CLI; every point in its own fresh process."""
    out = tmp_path / "cost_cli"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KINETO_LOG_LEVEL": "4", "KINETO_USE_DAEMON": "0"}
    p = subprocess.run([sys.executable, "study.py", "study=cost", "device=cpu", "study.inner_steps=[1,16]",
                        "study.optimizers=[sgd]", "study.warmup=0", "study.iterations=1", f"hydra.run.dir={out}"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "study.json" in p.stdout
    record = json.loads((out / "study.json").read_text())
    assert record["status"] == "completed" and record["csv"] == "cost.csv"
    with open(out / "cost.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames[:10] == DOCUMENTED["cost.csv"]
        mem = {(r["algorithm"], int(r["inner_steps"])): int(r["alloc_peak_bytes"]) for r in reader
               if r["status"] == "completed"}
    assert mem[("maml", 16)] > 3 * mem[("maml", 1)]  # every inner step stays on the graph
    assert mem[("imaml", 16)] <= 1.2 * mem[("imaml", 1)]  # implicit gradient: flat in K


def test_cost_point_over_cap_is_oom_not_crash():
    out = cost_point.measure({"overrides": ["dataset=sinusoid", "device=cpu", "algorithm=maml", "inner_steps=3",
                                            "meta_batch_size=2"], "warmup": 0, "iterations": 1, "mem_cap_bytes": 1000})
    assert out["status"] == "oom" and "mem_cap_bytes" in out["note"] and out["alloc_peak_bytes"] > 1000
    done = [{"inner_steps": 1, "status": "completed", "alloc_peak_bytes": 100},
            {"inner_steps": 5, "status": "completed", "alloc_peak_bytes": 500}]
    assert cost.predicted_peak(done, 20) == pytest.approx(2000)


# ---------------------------------------------------------------- failures
def test_failures_grid_and_statuses(tmp_path):
    rows = run_study(tmp_path, "failures", "study.meta_iterations=3", "study.meta_batch_size=2", "study.eval_tasks=5",
                     "study.axes.lam=[2.0]", "study.axes.inner_steps=[5]", "study.axes.cg_steps=[5]",
                     "study.axes.inner_lr=[0.01,1.0]")["failures.csv"]
    by = {(r["algorithm"], r["inner_lr"]): r for r in rows}
    assert sorted(by) == [("imaml", "0.01"), ("imaml", "1.0"), ("maml", "0.01"), ("maml", "1.0")]
    assert by[("maml", "1.0")]["status"] == "non-finite"  # inner lr far too large: the unroll explodes
    assert by[("maml", "0.01")]["status"] == "completed"
    assert by[("maml", "0.01")]["lam"] == "" and by[("imaml", "0.01")]["lam"] == "2.0"
    allowed = {"completed", "diverged", "non-finite", "cg_not_converged"}
    assert {r["status"] for r in rows} <= allowed


def test_failures_axes_grid_skips_imaml_knobs_for_maml():
    cfg = compose(["study=failures"], config_name="study")
    pts = failures.grid(cfg.study, "maml")
    assert all(p["lam"] is None and p["cg_steps"] is None for p in pts)
    assert len(pts) == len({tuple(p.values()) for p in pts})  # the base point appears once
    assert len(failures.grid(cfg.study, "imaml")) > len(pts)


# ---------------------------------------------------------------- rescaling (R2.2)
def test_target_scale_multiplies_the_same_tasks_and_keeps_the_protocol_fingerprint():
    a = Sinusoid(shots=5, query_shots=5).sample("test", 4, torch.Generator().manual_seed(3))
    b = Sinusoid(shots=5, query_shots=5, target_scale=0.2).sample("test", 4, torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[2], b[2])  # the same inputs
    torch.testing.assert_close(b[1], 0.2 * a[1]) and torch.testing.assert_close(b[3], 0.2 * a[3])
    assert "target_scale" not in Sinusoid().fingerprint_fields()
    assert Sinusoid(target_scale=0.2).fingerprint_fields()["target_scale"] == 0.2


def test_rescaling_study_reports_mse_in_the_original_units(tmp_path):
    t = run_study(tmp_path, "rescaling", "study.scales=[0.5,1.0]", "study.tasks=2", "study.inner_steps=[1,3]",
                  "study.train.meta_iterations=3", "study.train.seeds=[0]", "study.train.eval_tasks=8")
    grads = t["rescaling.csv"]
    assert {(r["scale"], r["inner_steps"]) for r in grads} == {(s, k) for s in ("0.5", "1.0") for k in ("1", "3")}
    assert all(float(r["rel_diff"]) < 1e-4 for r in grads)  # float32 agrees with float64 at θ0
    rows = {r["scale"]: r for r in t["rescaling_train.csv"]}
    for scale, r in rows.items():
        assert r["status"] == "completed" and r["iterations_done"] == "3"
        assert float(r["test_mse"]) == pytest.approx(float(r["test_mse_scaled"]) / float(scale) ** 2)


def test_rescaling_needs_a_dataset_that_declares_target_scale():
    from studies.rescaling import validate
    with pytest.raises(ValueError, match="declares no target_scale"):
        validate(compose(["study=rescaling", "dataset=omniglot"], config_name="study"))
    with pytest.raises(ValueError, match="study.train.experiment's dataset='omniglot'"):
        validate(compose(["study=rescaling", "study.train.experiment=omniglot_5w_maml"], config_name="study"))


def test_bad_target_scale_is_one_clear_error():
    import trainer
    with pytest.raises(ValueError, match=r"dataset\.target_scale"):
        trainer.validate(compose(["dataset.target_scale=0"]))


# ---------------------------------------------------------------- configuration errors
@pytest.mark.parametrize("override, key", [("study.lam=-1", "study.lam"), ("study.methods=[sgd]", "study.methods"),
                                           ("study.inner_steps=[0]", "study.inner_steps")])
def test_bad_study_config_is_one_clear_error(override, key):
    cfg = compose(["study=fidelity", override], config_name="study")
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        studies.check(cfg)


def test_cost_study_batches_as_the_trainer_does():
    """The cost study follows the trainer's batching rule: vmap for the MLP and the Omniglot conv4,
    a per-task loop for the mini-ImageNet conv4."""
    from studies.cost_point import eager_batching
    from trainer.problem import batching

    cfg = compose([])
    modes = {m: eager_batching(batching(cfg.batching, m)) for m in ("mlp", "conv4_omniglot", "conv4_miniimagenet")}
    assert modes == {"mlp": "vmap", "conv4_omniglot": "vmap", "conv4_miniimagenet": "loop"}
    assert eager_batching("compile") == "loop" and eager_batching("vmap") == "vmap"


def test_studies_take_the_data_root_like_train():
    """``python study.py ... data.root=/path`` reaches the study's training runs (as train.py's key does)."""
    from studies.common import base_overrides

    cfg = compose(["study=precision", "data.root=/some/data"], config_name="study")
    assert "data.root=/some/data" in base_overrides(cfg)
