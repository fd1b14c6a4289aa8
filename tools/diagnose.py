"""Diagnose a committed diverged run: rerun it to its failure, dissect it, check it two other ways.

    python tools/diagnose.py RECORD_FOLDER... [--out DIR] [--at ITERATION] [--from CKPT]
    python tools/diagnose.py RECORD_FOLDER --unlearned CKPT | --worst-test CKPT

(a record folder holds a run's summary.json; by default the diagnoses go beside the records, under
``diagnoses/`` in the same tree.)

The run's own recorded config is rebuilt and trained again (deterministic: the same seeds, the same
code path) until its first non-finite iteration; the trainer then dissects that meta-batch
(``trainer.anatomy``: the stage, the task and what defines it, the last finite values). On the
failing θ and task, two independent computations say whether the failure belongs to the method
or to the suite's code:

- **MAML's inner loop**: the same inner optimizer, steps and step size from the same θ on the same
  support set, without the proximal term (what MAML would run there).
- **The implicit meta-gradient in float64, dense, and by a library**: φ from the same inner problem in float64, the
  full Hessian of the support loss at φ (``torch.func.hessian``), and (I·(1 + damping) + H/(λ + λ_damping)) x
  = ∇L_query(φ) solved by ``torch.linalg.solve`` — against the suite's CG result on the same φ.
  The smallest eigenvalue of I + H/λ says whether the system CG was given is positive definite.
  torchopt's implicit differentiation (``custom_root``; optional: ``pip install torchopt graphviz``)
  computes the paper's system at the same φ through a library's code.

The result is one JSON per run (``<out>/<setting>/<run>.json``), written atomically; the report's
failure table reads them. A run that does not fail again within its recorded iterations says so.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

import algorithms  # noqa: E402
from algorithms.linalg import tree_norm  # noqa: E402
from atomic import atomic_write_json  # noqa: E402
from trainer.loop import _Run  # noqa: E402
from trainer.records import versions  # noqa: E402

RECORDS = ROOT / "reports" / "records"
OUT = RECORDS / "diagnoses"


def _flat(p: dict) -> torch.Tensor:
    return torch.cat([v.reshape(-1) for v in p.values()])


def _finite(p: dict) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in p.values())


def maml_inner(run: _Run, theta: dict, task) -> dict:
    """The same inner optimizer from θ on the task's support set, without the proximal term."""
    cfg = replace(run.inner, prox_lam=0.0, prox_mode="every_step")
    if cfg.optimizer == "hf":  # MAML's own inner loop: gradient steps of the training step size
        cfg = replace(cfg, optimizer="sgd", lr=float(run.cfg.inner_lr), steps=max(1, int(run.cfg.inner_steps)))
    trace: list[dict] = []
    phi = algorithms.solve_inner(getattr(run.loss_fn, "fused", run.loss_fn), theta, (task[0], task[1]), cfg,
                                 detach=True, autograd=True, trace=trace)
    return {"optimizer": cfg.optimizer, "steps": cfg.steps, "lr": cfg.lr, "finite": _finite(phi),
            "inner_losses": [e["loss"] for e in trace], "inner_grad_norms": [e["grad_norm"] for e in trace],
            "query_loss": float(run.loss_fn(phi, task[2], task[3])) if _finite(phi) else None}


def dense_implicit(run: _Run, theta: dict, task) -> dict | None:
    """iMAML's meta-gradient of one task, float64, with a dense solve; against the suite's (CG) estimate
    computed in float64 on the same φ. None for an estimator without an implicit system."""
    if run.cfg.algorithm.estimator != "imaml":
        return None
    hp = {**algorithms.defaults("imaml"), **run.hparams}
    lam, damping, lam_damping = float(hp["lam"]), float(hp["cg_damping"]), float(hp["lam_damping"])
    loss_fn = getattr(run.loss_fn, "fused", run.loss_fn)
    th = {k: v.detach().double() for k, v in theta.items()}
    xs, ys, xq, yq = (t.double() if t.is_floating_point() else t for t in task)
    inner = replace(run.inner, prox_lam=lam)
    phi = algorithms.solve_inner(loss_fn, th, (xs, ys), inner, detach=True, autograd=True)
    out: dict = {"lam": lam, "cg_damping": damping, "lam_damping": lam_damping, "phi_finite": _finite(phi)}
    if not out["phi_finite"]:
        return out | {"note": "the float64 inner loop is not finite either"}
    keys, shapes = list(phi), [phi[k].shape for k in phi]
    sizes = [v.numel() for v in phi.values()]

    def unflat(v):
        return {k: t.view(s) for k, t, s in zip(keys, torch.split(v, sizes), shapes)}

    flat_phi = _flat(phi)
    h = torch.func.hessian(lambda v: loss_fn(unflat(v), xs, ys))(flat_phi)
    gq = torch.func.grad(lambda v: loss_fn(unflat(v), xq, yq))(flat_phi)
    a = (1.0 + damping) * torch.eye(h.shape[0], dtype=h.dtype) + h / (lam + lam_damping)
    if not (bool(torch.isfinite(h).all()) and bool(torch.isfinite(gq).all())):
        return out | {"note": "the float64 Hessian or query gradient at φ is not finite",
                      "query_grad_norm": float(gq.norm())}
    try:
        eig = torch.linalg.eigvalsh((h + h.T) / 2)
        x = torch.linalg.solve(a, gq)
    except RuntimeError as e:  # LAPACK gives up on a Hessian of huge entries: that is the evidence
        return out | {"note": f"dense eigen/solve failed: {str(e).splitlines()[0]}",
                      "hessian_abs_max": float(h.abs().max()), "query_grad_norm": float(gq.norm())}
    suite, info = algorithms.meta_gradient("imaml", loss_fn, th, (xs, ys), (xq, yq), inner=run.inner, **run.hparams)
    s = _flat(suite)
    out["torchopt"] = library_implicit(loss_fn, unflat, flat_phi, _flat(th), lam, (xs, ys), (xq, yq), x, damping,
                                       lam_damping)
    return out | {
        "hessian_eig_min": float(eig[0]), "hessian_eig_max": float(eig[-1]),
        "system_eig_min": float((1.0 + damping) + eig[0] / (lam + lam_damping)),
        "positive_definite": bool((1.0 + damping) + eig[0] / (lam + lam_damping) > 0),
        "dense_norm": float(x.norm()), "query_grad_norm": float(gq.norm()),
        "suite_norm": float(s.norm()), "suite_cg_residual": info.get("cg_residual"),
        "cosine_suite_dense": float(s @ x / (s.norm() * x.norm())) if float(s.norm() * x.norm()) > 0 else None,
        "rel_error_suite_dense": float((s - x).norm() / x.norm()) if float(x.norm()) > 0 else None}


def library_implicit(loss_fn, unflat, phi, theta, lam, support, query, dense, damping, lam_damping) -> dict:
    """torchopt's implicit differentiation (``custom_root`` on the inner problem's stationarity
    condition ∇L_support(φ) + λ(φ − θ) = 0, its linear system solved by normal-equation CG) at the same
    φ: the paper's (I + H/λ)⁻¹∇L_query(φ), a library's code path rather than the suite's."""
    try:
        import torchopt
        from torchopt.diff.implicit import custom_root
    except ImportError as e:
        return {"error": f"torchopt unavailable ({e}); pip install torchopt graphviz"}

    def stationary(p, t):
        return (torch.func.grad(lambda v: loss_fn(unflat(v), *support))(p[0]) + lam * (p[0] - t[0]),)

    @custom_root(stationary, argnums=1, solve=torchopt.linear_solve.solve_normal_cg(maxiter=500, atol=0.0))
    def at_phi(p, t):
        return tuple(v.detach() for v in p)

    t = (theta.clone().requires_grad_(True),)
    loss_fn(unflat(at_phi((phi,), t)[0]), *query).backward()
    g = t[0].grad
    same = damping == 0 and lam_damping == 0  # the run's own system is the paper's: comparable with the dense solve
    return {"version": torchopt.__version__, "norm": float(g.norm()), "system": "paper (I + H/λ)",
            "cosine_dense": float(g @ dense / (g.norm() * dense.norm())) if same and float(g.norm() * dense.norm()) > 0
            else None,
            "rel_error_dense": float((g - dense).norm() / dense.norm()) if same and float(dense.norm()) > 0 else None}


def degradation(run: _Run, it: int) -> dict:
    """Iteration ``it``'s meta-batch, not applied: each task's CG relative residual, and the worst
    task's traced stages (its inner steps, query gradient and CG iterations)."""
    tasks = tuple(t.to(run.device) for t in run.source.sample("train", run.cfg.meta_batch_size, torch.Generator().set_state(
        run.gen.get_state())))
    fn = algorithms.ESTIMATORS[algorithms.resolve(run.cfg.algorithm.estimator)]
    loss_fn = getattr(run.loss_fn, "fused", run.loss_fn)
    traces, residuals = [], []
    for i in range(tasks[0].shape[0]):
        trace: list[dict] = []
        _, info = fn(loss_fn, run.params, (tasks[0][i], tasks[1][i]), (tasks[2][i], tasks[3][i]), run.inner,
                     autograd=True, diagnostics_full=False, trace=trace, **run.hparams)
        traces.append(trace)
        residuals.append(float(info.get("cg_residual", float("nan"))))
    # the worst task: the largest CG residual, or for an estimator without CG the largest inner loss
    score = [r if r == r else max((e.get("loss", -1.0) for e in t), default=-1.0) for r, t in zip(residuals, traces)]
    worst = max(range(len(score)), key=lambda i: score[i] if score[i] == score[i] else float("inf"))
    describe = getattr(run.source, "describe", None)
    return {"iteration": it, "task": worst, "cg_residuals": residuals, "theta_norm": float(tree_norm({k: v.detach().double() for k, v in run.params.items()})),
            "task_definition": describe("train", len(residuals), torch.Generator().set_state(run.gen.get_state()))[worst]
            if describe else None, "trace": traces[worst], "tasks": tasks}


def control(cfg, work: Path) -> dict:
    """The run again with the exact gradient of its own procedure in place of iMAML's estimate: MAML
    through the same K proximal inner steps (``algorithms.maml:maml_prox``, the same λ, seed, tasks,
    outer optimizer and iterations). If it learns where iMAML did not, the estimate is what failed."""
    from trainer import train

    c = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    c.algorithm.estimator, c.algorithm.name = "algorithms.maml:maml_prox", "maml_prox"
    c.algorithm.label, c.algorithm.family = "MAML (proximal inner loop)", "exact"
    c.algorithm.hparams = {"lam": float(cfg.algorithm.hparams.lam)}
    c.resume, c.logger.name = False, "csv"
    s = train(c, work)
    pick = {k: s.get(k) for k in ("status", "iterations_done", "val", "test")}
    return {k: ({m: v[m] for m in ("metric", "mean", "ci95", "n") if m in v} if isinstance(v, dict) else v)
            for k, v in pick.items()}


def unlearned(record_dir: Path, checkpoint: Path, tasks: int = 50, out_root: Path = OUT,
              records_root: Path = RECORDS, with_control: bool = True) -> dict:
    """Why a completed iMAML run did not learn: at its final θ (``checkpoint``: the run folder's
    ``ckpt.pt``) on ``tasks`` validation tasks, is the meta-gradient it followed the gradient of the
    adaptation it runs? Over the tasks: the cosine of their mean with the mean of the procedure's
    gradients, and how much the largest task dominates the sum of norms. Per task: how far the K inner steps left the inner problem from solved
    (||∇G(φ_K)|| / ||∇G(θ)||, G the proximal inner objective), and the cosine of the suite's implicit
    meta-gradient with (a) the exact gradient of the query loss through those same K proximal steps
    (MAML differentiated through the unroll: the procedure actually run) and (b) the float64 dense
    solve of the same implicit system at the same φ_K (is CG the problem?). ``with_control``: also
    :func:`control`, the same run trained on the exact gradient of that procedure."""
    summary = json.loads((record_dir / "summary.json").read_text())
    cfg = OmegaConf.create(summary["config"])
    if cfg.algorithm.estimator != "imaml":
        raise SystemExit(f"diagnose: --unlearned dissects an iMAML run; {record_dir} ran {cfg.algorithm.estimator}")
    cfg.resume, cfg.diagnostics, cfg.mem_every, cfg.fidelity_every = False, 0, 0, 0
    name = record_dir.relative_to(records_root)
    run = _Run(cfg, ROOT / "runs" / "diagnose" / name)
    ck = torch.load(checkpoint, map_location="cpu", weights_only=False)
    theta = {k: v.detach().clone() for k, v in ck["params"].items()}
    batch = run.source.sample("val", tasks, torch.Generator().manual_seed(int(cfg.eval.val_seed)))
    loss_fn = getattr(run.loss_fn, "fused", run.loss_fn)
    lam = float(run.hparams["lam"])
    prox = replace(run.inner, prox_lam=lam)
    rows, sums = [], [0.0, 0.0]
    for i in range(tasks):
        task = tuple(t[i] for t in batch)
        g, _ = algorithms.meta_gradient("imaml", loss_fn, theta, task[:2], task[2:], run.inner, **run.hparams)
        proc, _ = algorithms.meta_gradient("maml", loss_fn, theta, task[:2], task[2:], prox)
        phi = algorithms.solve_inner(loss_fn, theta, task[:2], prox, detach=True)

        def G(p):
            return loss_fn(p, *task[:2]) + 0.5 * lam * sum(((p[k] - theta[k]) ** 2).sum() for k in p)
        g0, gK = torch.func.grad(G)(theta), torch.func.grad(G)(phi)
        dense = dense_implicit(run, theta, task) or {}
        f, fp = _flat(g).double(), _flat(proc).double()
        sums = [sums[0] + f, sums[1] + fp]
        rows.append({"task": i, "norm": float(f.norm()), "norm_procedure": float(fp.norm()),
                     "inner_residual_rel": float(_flat(gK).norm() / _flat(g0).norm()),
                     "cos_procedure": float(f @ fp / (f.norm() * fp.norm())),
                     "cos_dense": dense.get("cosine_suite_dense"), "cg_residual": dense.get("suite_cg_residual"),
                     "system_eig_min": dense.get("system_eig_min")})
    med = {k: float(torch.tensor([r[k] for r in rows if r[k] is not None], dtype=torch.float64).median())
           for k in ("inner_residual_rel", "cos_procedure", "cos_dense")}
    norms = sorted(r["norm"] for r in rows)
    batch_cos = float(sums[0] @ sums[1] / (sums[0].norm() * sums[1].norm()))
    result = {"record": name.as_posix(), "recorded_status": summary["status"], "kind": "unlearned",
              "cos_procedure_of_mean": batch_cos, "largest_task_share": norms[-1] / sum(norms),
              "norm_max_over_median": norms[-1] / norms[len(norms) // 2],
              "checkpoint_iteration": ck.get("iteration"), "val_tasks": tasks, "medians": med, "tasks": rows,
              "versions": versions(), "device_name": run.device_name}
    if with_control and cfg.inner_optim.name == "hf":  # a Newton-CG line search is no unroll to differentiate
        result["control"] = None
    elif with_control:
        result["control"] = control(OmegaConf.create(summary["config"]), ROOT / "runs" / "diagnose" / name / "control")
    out = out_root / name / "diagnosis.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, result)
    return result


def _resumed(cfg, checkpoint: Path, work: Path) -> _Run:
    """The run at its checkpoint (θ, optimizer and task stream), under its own unchanged config so that
    the checkpoint loads; the checkpoint is copied into ``work``, which the run then owns."""
    cfg.resume = True
    work.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(checkpoint, work / "ckpt.pt")
    run = _Run(cfg, work)
    run.restore()
    return run


def diagnose(record_dir: Path, out_root: Path = OUT, max_iterations: int | None = None,
             records_root: Path = RECORDS, at: int | None = None, checkpoint: Path | None = None) -> dict:
    """Rerun the record in ``record_dir`` (a folder under ``records_root``) to its failure — or, with
    ``at``, to iteration ``at`` of a run that degraded without failing, whose meta-batch is then
    dissected (:func:`degradation`) — and write ``out_root/<its path under records_root>/diagnosis.json``."""
    summary = json.loads((record_dir / "summary.json").read_text())
    cfg = OmegaConf.create(summary["config"])
    fail_at = (summary.get("failure") or {}).get("iteration") or summary["iterations_done"]
    last = int(at - 1 if at else max_iterations or fail_at)  # meta_iterations stays: it sets the schedules
    name = record_dir.relative_to(records_root)
    work = ROOT / "runs" / "diagnose" / name
    if checkpoint is None:  # from the start, without the run's instrumentation and validation
        cfg.max_train_minutes, cfg.resume, cfg.diagnostics, cfg.mem_every, cfg.fidelity_every = None, False, 0, 0, 0
        cfg.eval.val_every, cfg.eval.early_stop = 0, None
        run = _Run(cfg, work)
        run.restore()
    else:
        run = _resumed(cfg, checkpoint, work)
    start = run.start
    if start >= last:
        raise SystemExit(f"diagnose: the checkpoint is at iteration {start:,}, not before {last + 1:,}")
    it, row = start, {}
    for it in range(start + 1, last + 1):
        row = run.step(it)
        if row is None:
            break
    result = {"record": name.as_posix(), "recorded_failure": summary.get("failure"),
              "recorded_status": summary["status"], "rerun_iterations": it, "rerun_from": start,
              "versions": versions(),
              "device_name": run.device_name, "code_path": summary.get("code_path")}
    if at and row is not None:
        d = degradation(run, at)
        tasks = tuple(t[d["task"]] for t in d.pop("tasks"))
        theta = {k: v.detach().clone() for k, v in run.params.items()}
        result |= {"failed_again": False, "degradation": d, "gradual": run.gradual,
                   "maml_inner_loop": maml_inner(run, theta, tasks), "dense_implicit": dense_implicit(run, theta, tasks)}
    elif row is not None and str((summary.get("failure") or {}).get("reason", "")).startswith("test-time"):
        s = run.test_and_finish(it)  # the run's own final test, on its fixed test tasks
        a = run.anatomy or {}
        result |= {"failed_again": s["status"] == "diverged", "failure_iteration": it, "anatomy": a,
                   "failure": s.get("failure"), "gradual": run.gradual}
    elif row is not None:
        result |= {"failed_again": False, "note": f"no non-finite value in {it} iterations of the rerun"}
    else:
        a = run.anatomy or {}
        result |= {"failed_again": True, "failure_iteration": it, "anatomy": a, "gradual": run.gradual}
        if a.get("task") is not None and run.failed_batch is not None:
            tasks = tuple(t[a["task"]] for t in run.failed_batch)
            theta = {k: v.detach().clone() for k, v in run.params.items()}
            result["maml_inner_loop"] = maml_inner(run, theta, tasks)
            result["dense_implicit"] = dense_implicit(run, theta, tasks)
    out = out_root / name / "diagnosis.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, result)
    return result


def worst_test(record_dir: Path, checkpoint: Path, out_root: Path = OUT, records_root: Path = RECORDS) -> dict:
    """A completed run whose test mean is dominated by a few tasks: the test-time adaptation of its worst
    test task, traced from the run's final θ (``checkpoint``), with what the other tasks reached."""
    summary = json.loads((record_dir / "summary.json").read_text())
    test = summary.get("test") or {}
    per = test.get("per_task")
    if summary["status"] != "completed" or not per:
        raise SystemExit(f"diagnose: --worst-test needs a completed run with per-task test metrics; {record_dir} has none")
    name = record_dir.relative_to(records_root)
    run = _resumed(OmegaConf.create(summary["config"]), checkpoint, ROOT / "runs" / "diagnose" / name / "worst-test")
    lower = test.get("metric") == "mse"
    index = (max if lower else min)(range(len(per)), key=lambda i: per[i])
    run.dissect_test("test", int(run.cfg.eval.test_seed), per, index)
    rest = [v for i, v in enumerate(per) if i != index]
    result = {"record": name.as_posix(), "recorded_status": summary["status"], "kind": "worst_test",
              "checkpoint_iteration": run.start, "task": index, "metric": test.get("metric"),
              "task_value": per[index], "mean": test["mean"], "median": statistics.median(per),
              "mean_without_task": statistics.fmean(rest), "anatomy": run.anatomy,
              "versions": versions(), "device_name": run.device_name}
    out = out_root / name / "diagnosis.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, result)
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("records", nargs="+", type=Path, help="record folders of diverged runs (with summary.json)")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--at", type=int, default=None, help="dissect this iteration's meta-batch (a run that degraded)")
    ap.add_argument("--from", dest="checkpoint", type=Path, default=None, metavar="CKPT",
                    help="rerun from the run's own checkpoint (ckpt.pt) before the failure, not from the start")
    ap.add_argument("--unlearned", type=Path, default=None, metavar="CKPT",
                    help="a completed iMAML run that did not learn: its final checkpoint (ckpt.pt) to dissect")
    ap.add_argument("--worst-test", type=Path, default=None, metavar="CKPT",
                    help="a completed run whose test mean a few tasks dominate: trace its worst test task's "
                         "adaptation from its final checkpoint (ckpt.pt)")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    if a.worst_test is not None:
        if len(a.records) != 1 or not a.worst_test.is_file():
            print("diagnose: --worst-test CKPT takes one record folder and an existing ckpt.pt", file=sys.stderr)
            return 2
        res = worst_test(a.records[0].resolve(), a.worst_test, out_root=a.out)
        print(f"diagnose: {a.records[0]}: worst test task {res['task']}: {res['task_value']:.4g} "
              f"(mean {res['mean']:.4g}, median {res['median']:.4g}, mean without it {res['mean_without_task']:.4g}); "
              f"{res['anatomy'].get('stage')}")
        return 0
    if a.unlearned is not None:
        if len(a.records) != 1 or not a.unlearned.is_file():
            print("diagnose: --unlearned CKPT takes one record folder and an existing ckpt.pt", file=sys.stderr)
            return 2
        res = unlearned(a.records[0].resolve(), a.unlearned, out_root=a.out)
        print(f"diagnose: {a.records[0]}: medians over {res['val_tasks']} validation tasks: {res['medians']}")
        return 0
    for r in a.records:
        r = r.resolve()
        if not (r / "summary.json").is_file():
            print(f"diagnose: {r} has no summary.json; give a run's record folder", file=sys.stderr)
            return 2
        res = diagnose(r, a.out, at=a.at, checkpoint=a.checkpoint)
        where = res.get("anatomy", {}).get("stage", "-")
        print(f"diagnose: {r.relative_to(ROOT)}: failed again: {res['failed_again']} at iteration "
              f"{res.get('failure_iteration', '-')} ({where})", flush=True)
        for key in ("maml_inner_loop", "dense_implicit"):
            if res.get(key):
                print(f"  {key}: " + json.dumps({k: v for k, v in res[key].items()
                                                 if not isinstance(v, list)}, default=str)[:400], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
