"""The one training loop every algorithm shares.

sample a meta-batch → ``meta_gradient_batch`` (loop or vmap) → outer step → log →
periodic validation and checkpoints → final test on the fixed test tasks → summary.json.
The loop never knows which estimator it runs. Failures are outcomes: a non-finite loss or
meta-gradient ends the run as ``diverged``, CUDA out-of-memory as ``oom``, SIGINT/SIGTERM
as ``interrupted`` (after a checkpoint, so ``resume=true`` continues bit-identically).
"""
from __future__ import annotations

import hashlib
import json
import math
import signal
import statistics
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

import datasets
import models
from algorithms import InnerConfig, meta_gradient_batch, resolve_cg_tol

from .config import ConfigError, eval_prox_lam, inner_config, model_options, outer_options, resolve_device
from .evaluate import evaluate, fingerprint, has_split
from .loggers import make_logger
from .meters import AllocationMeter, Timer, rss_peak_bytes
from .records import (
    append_jsonl,
    atomic_torch_save,
    atomic_write_json,
    device_name,
    load_checkpoint,
    read_jsonl,
    versions,
)

DTYPES = {"float32": torch.float32, "float64": torch.float64}


class _Stop:
    """Turns SIGINT/SIGTERM/SIGUSR2 into a flag the loop checks between iterations."""

    def __init__(self):
        self.signal = None

    def __enter__(self):
        # SIGUSR2: SLURM's warning before its time limit (submitit asks for it).
        sigs = [signal.SIGINT, signal.SIGTERM] + ([signal.SIGUSR2] if hasattr(signal, "SIGUSR2") else [])
        self.old = {s: signal.signal(s, self._handle) for s in sigs}
        return self

    def _handle(self, signum, frame):
        self.signal = signal.Signals(signum).name

    def __exit__(self, *exc):
        for s, h in self.old.items():
            signal.signal(s, h)
        return False


def _config_key(cfg) -> str:
    """What must not change across a resume: the resolved config minus the resume flag."""
    c = OmegaConf.to_container(cfg, resolve=True)
    c.pop("resume", None)
    c.pop("max_train_minutes", None)  # a time-budgeted run may be continued with a larger budget
    return hashlib.sha256(json.dumps(c, sort_keys=True, default=str).encode()).hexdigest()


def _eval_source(cfg):
    if cfg.eval.shots is None and cfg.eval.query_shots is None:
        return None
    ecfg = OmegaConf.merge(cfg, {"shots": cfg.eval.shots or cfg.shots,
                                 "query_shots": cfg.eval.query_shots or cfg.query_shots})
    return datasets.build(ecfg)


def _batching(cfg, model_name: str) -> str:
    """loop | vmap | compile. ``auto``: vmap for the MLP (≈ 10× the loop on CPU) and the
    Omniglot conv4 (1.35–1.55× at meta-batch 32), a per-task loop for the mini-ImageNet conv4
    (vmap 0.94–0.97× of the loop) — measured by ``make bench``, see reports/BENCHMARKS.md.
    ``compile`` is never automatic: its one-off compile time pays off only in long runs."""
    if cfg.batching == "auto":
        return "vmap" if model_name in ("mlp", "conv4_omniglot") else "loop"
    return cfg.batching


def _setup(cfg):
    device = resolve_device(cfg)
    dtype = DTYPES[cfg.dtype]
    source = datasets.build(cfg)
    params, forward = models.build(source.model, ways=cfg.ways, seed=cfg.seed, dtype=dtype, **model_options(cfg),
                                   image_size=getattr(source, "image_size", 28))
    params = {k: v.to(device) for k, v in params.items()}
    if source.metric == "mse":
        loss_fn, metric_fn = models.mse_loss(forward), None
    else:
        loss_fn, metric_fn = models.cross_entropy_loss(forward), models.accuracy_metric(forward)
    return device, dtype, source, params, forward, loss_fn, metric_fn


def run_test(cfg, eval_source, forward, loss_fn, params, use_vmap: bool, device) -> dict:
    """The final test: ``eval.num_tasks`` fixed tasks of the test split, adapted from ``params`` with
    the test-time settings (``test_inner_steps``, ``eval.prox_lam``, ``eval.bn_mode``), with the
    test-task fingerprint and shots (also used to test a trained run again: ``trainer.retest``)."""
    test = evaluate(eval_source, "test", cfg.eval.test_seed, cfg.eval.num_tasks, eval_source.metric, forward,
                    loss_fn, params, InnerConfig.make(inner_config(cfg, cfg.test_inner_steps)), eval_prox_lam(cfg),
                    cfg.eval.bn_mode, use_vmap, device, cfg.eval.chunk, steps_list=cfg.eval.steps_list or ())
    test["fingerprint"] = fingerprint(eval_source, "test", cfg.eval.test_seed, cfg.eval.num_tasks)
    test["shots"], test["query_shots"] = eval_source.shots, eval_source.query_shots
    return test


def _summary_base(cfg, run_dir, source, device, seeds) -> dict:
    a = cfg.algorithm
    imaml = None
    if a.estimator == "imaml":
        imaml = {"lam": float(a.hparams.lam), "cg_steps": int(a.hparams.cg_steps),
                 "cg_damping": float(a.hparams.get("cg_damping", 0.0)),
                 "lam_damping": float(a.hparams.get("lam_damping", 0.0)),
                 "cg_tol": resolve_cg_tol(a.hparams.get("cg_tol"), InnerConfig.make(inner_config(cfg)))}
    inner = inner_config(cfg)
    return {
        "schema_version": 1, "kind": "train", "status": "running", "run_dir": str(run_dir),
        "algorithm": a.estimator, "variant": a.name, "label": a.label, "dataset": source.name,
        "ways": cfg.ways, "shots": cfg.shots, "query_shots": cfg.query_shots,
        "profile": cfg.get("profile", "custom"), "experiment": cfg.get("experiment_name"),
        "protocol": cfg.get("protocol"),
        "meta_iterations": cfg.meta_iterations, "max_train_minutes": cfg.get("max_train_minutes"),
        "iterations_done": 0, "stopped_by": None, "meta_batch_size": cfg.meta_batch_size,
        "inner": {**inner, "steps": cfg.inner_steps, "test_steps": cfg.test_inner_steps,
                  "prox_lam": imaml["lam"] if imaml else 0.0, "test_prox_lam": eval_prox_lam(cfg)},
        "imaml": imaml,
        "outer": {"optimizer": a.outer.optimizer, **outer_options(cfg), "clip": a.outer.clip,
                  "anneal": bool(a.outer.anneal)},
        "model": model_options(cfg) if source.model != "mlp" else None,
        "bn_mode": None if source.metric == "mse" else cfg.eval.bn_mode,
        "seed": cfg.seed, "seeds": seeds, "dtype": cfg.dtype, "device": device.type,
        "device_name": device_name(device), "test": None, "timing": None, "memory": None,
        "versions": versions(), "data": datasets.record(source), "failure": None,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }


def train(cfg, run_dir: str | Path) -> dict:
    """Train and evaluate one configuration into ``run_dir``; returns the summary dict."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)  # nothing should draw from the global RNG; pin it anyway
    device, dtype, source, params, forward, loss_fn, metric_fn = _setup(cfg)
    eval_source = _eval_source(cfg) or source
    seeds = {"init": cfg.seed, "train_tasks": cfg.seed * 7919 + 1, "val_tasks": cfg.eval.val_seed,
             "test_tasks": cfg.eval.test_seed}
    summary = _summary_base(cfg, run_dir, source, device, seeds)
    a = cfg.algorithm
    inner = InnerConfig.make(inner_config(cfg))
    prox = eval_prox_lam(cfg)  # test-time adaptation's proximal weight (validation and test)
    hparams = {k: v for k, v in OmegaConf.to_container(a.hparams, resolve=True).items()}
    batching = _batching(cfg, source.model)
    use_vmap = batching != "loop"  # evaluation: vmap unless the loop was asked for

    opt_cls = torch.optim.Adam if a.outer.optimizer == "adam" else torch.optim.SGD
    leaves = list(params.values())
    opt = opt_cls(leaves, **outer_options(cfg))
    gen = torch.Generator().manual_seed(seeds["train_tasks"])
    start, train_wall, iter_times, alloc_peak, gpu_peak = 0, 0.0, [], 0, 0

    ckpt_path = run_dir / "ckpt.pt"
    if cfg.resume:
        ck = load_checkpoint(ckpt_path)
        if ck is not None and ck.get("config_key") != _config_key(cfg):
            raise ConfigError(f"resume=true: the checkpoint in {run_dir} was made with a different config; "
                              "resume with the run's own overrides (see its .hydra/overrides.yaml) or use a new run folder")
        if ck is not None:
            for k in params:
                params[k].copy_(ck["params"][k].to(device))
            opt.load_state_dict(ck["opt"])
            gen.set_state(ck["gen"])
            start, train_wall, iter_times = ck["iteration"], ck["train_wall_s"], ck["iter_times"]
            alloc_peak, gpu_peak = ck["alloc_peak"], ck["gpu_peak"]
    rows = read_jsonl(run_dir / "metrics.jsonl", max_iter=start) if start else []
    tmp = run_dir / "metrics.jsonl.tmp"
    tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    tmp.replace(run_dir / "metrics.jsonl")
    atomic_write_json(run_dir / "summary.json", summary)
    logger = make_logger(cfg, run_dir)

    def checkpoint(it):
        atomic_torch_save(ckpt_path, {"params": {k: v.detach().cpu() for k, v in params.items()},
                                      "opt": opt.state_dict(), "gen": gen.get_state(), "iteration": it,
                                      "train_wall_s": train_wall, "iter_times": iter_times,
                                      "alloc_peak": alloc_peak, "gpu_peak": gpu_peak, "config_key": _config_key(cfg)})

    def finish(status, it, failure=None, test=None, eval_s=0.0):
        summary.update(status=status, iterations_done=it, failure=failure, test=test)
        summary["timing"] = {"median_iter_s": statistics.median(iter_times) if iter_times else None,
                             "train_wall_s": train_wall, "eval_wall_s": eval_s,
                             "total_wall_s": train_wall + eval_s}
        summary["memory"] = {"gpu_peak_bytes": gpu_peak if device.type == "cuda" else None,
                             "alloc_peak_bytes": alloc_peak or None, "rss_peak_bytes": rss_peak_bytes()}
        atomic_write_json(run_dir / "summary.json", summary)
        logger.finish(summary)
        return summary

    tty = sys.stdout.isatty()
    bar = None
    if tty and cfg.meta_iterations > start:
        from tqdm import tqdm
        bar = tqdm(total=cfg.meta_iterations, initial=start, desc=f"{a.label} {source.name}", dynamic_ncols=True)
    plain_every = max(1, cfg.meta_iterations // 10)
    last = {}
    it = start
    budget_s = 60.0 * cfg.max_train_minutes if cfg.get("max_train_minutes") else math.inf
    # Validation every ``val_every`` iterations and/or every ``val_every_minutes`` of training
    # wall-clock (a learning curve on the time axis: runs of very different speeds get points
    # at the same training times). With the time rule, the first iteration is validated too.
    val_period_s = 60.0 * cfg.eval.val_every_minutes if cfg.eval.get("val_every_minutes") else None

    def _next_val(wall):
        return (math.floor(wall / val_period_s) + 1) * val_period_s if val_period_s else math.inf

    next_val_s = _next_val(train_wall)

    def val_due(i):
        if cfg.eval.val_every and i % cfg.eval.val_every == 0:
            return True
        return val_period_s is not None and (i == 1 or train_wall >= next_val_s)
    with _Stop() as stop, logger.guard(summary):  # an escaping exception still finishes the logger
        try:
            for it in range(start + 1, cfg.meta_iterations + 1):
                if train_wall >= budget_s:
                    it -= 1
                    break
                t0 = time.perf_counter()
                tasks = tuple(t.to(device) for t in source.sample("train", cfg.meta_batch_size, gen))
                sample_s = time.perf_counter() - t0
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                measure = device.type == "cpu" and (it == start + 2 or it % cfg.mem_every == 0)
                with Timer(device) as timer:
                    meter = AllocationMeter() if measure else None
                    if meter:
                        meter.__enter__()
                    grads, info = meta_gradient_batch(a.estimator, loss_fn, params, tasks, inner,
                                                      batching=batching, metric_fn=metric_fn,
                                                      diagnostics_full=bool(cfg.diagnostics), **hparams)
                    if meter:
                        meter.__exit__(None, None, None)
                row = {"iter": it, "train_loss": info["query_loss_after"].mean().item(), "sample_s": sample_s}
                if "query_metric_after" in info:
                    row["train_metric"] = info["query_metric_after"].mean().item()
                for k in ("query_loss_before", "inner_grad_norm", "cg_residual"):
                    if k in info:
                        row[k] = info[k].mean().item()
                finite = math.isfinite(row["train_loss"]) and all(bool(torch.isfinite(g).all()) for g in grads.values())
                if not finite:
                    return finish("diverged", it - 1, {"iteration": it, "reason": "non-finite loss or meta-gradient",
                                                       "last_metrics": last})
                with Timer(device) as step_timer:
                    if a.outer.anneal:
                        for gr in opt.param_groups:
                            gr["lr"] = float(a.outer.lr) * (1 - (it - 1) / max(1, cfg.meta_iterations))
                    for k, p in params.items():
                        p.grad = grads[k].to(p.dtype)
                    if a.outer.clip:
                        torch.nn.utils.clip_grad_value_(leaves, float(a.outer.clip))
                    opt.step()
                iter_s = timer.seconds + step_timer.seconds
                iter_times.append(iter_s)
                train_wall += iter_s + sample_s
                row.update(iter_s=iter_s, train_wall_s=train_wall, lr=opt.param_groups[0]["lr"])
                if meter:
                    row["alloc_peak_bytes"] = meter.peak
                    alloc_peak = max(alloc_peak, meter.peak)
                if device.type == "cuda":
                    row["gpu_peak_bytes"] = torch.cuda.max_memory_allocated(device)
                    gpu_peak = max(gpu_peak, row["gpu_peak_bytes"])
                if val_due(it) and has_split(eval_source, "val"):
                    v = evaluate(eval_source, "val", cfg.eval.val_seed, cfg.eval.val_tasks, source.metric, forward, loss_fn,
                                 params, InnerConfig.make(inner_config(cfg, cfg.test_inner_steps)), prox,
                                 cfg.eval.bn_mode, use_vmap, device, cfg.eval.chunk)
                    row["val_metric"] = v["mean"]
                    next_val_s = _next_val(train_wall)
                append_jsonl(run_dir / "metrics.jsonl", row)
                logger.log(row)
                last = row
                if bar:
                    bar.update(1)
                    bar.set_postfix(loss=f"{row['train_loss']:.3f}", metric=f"{row.get('train_metric', row['train_loss']):.3f}")
                elif it % plain_every == 0 or it == cfg.meta_iterations:
                    print(f"[{a.label} {source.name}] iter {it}/{cfg.meta_iterations} loss {row['train_loss']:.4f} "
                          f"metric {row.get('train_metric', row['train_loss']):.4f} {1 / max(iter_s, 1e-9):.1f} it/s",
                          flush=True)
                if cfg.ckpt_every and it % cfg.ckpt_every == 0:
                    checkpoint(it)
                if stop.signal:
                    checkpoint(it)
                    return finish("interrupted", it, {"iteration": it, "reason": f"received {stop.signal}",
                                                      "last_metrics": last})
        except torch.cuda.OutOfMemoryError as e:
            return finish("oom", it - 1, {"iteration": it, "reason": str(e).splitlines()[0], "last_metrics": last})
        finally:
            if bar:
                bar.close()
        checkpoint(it)
        summary["stopped_by"] = "max_train_minutes" if it < cfg.meta_iterations else "meta_iterations"
        t0 = time.perf_counter()
        test = run_test(cfg, eval_source, forward, loss_fn, params, use_vmap, device)
        if not math.isfinite(test["mean"]):  # the adapted models blew up on some test tasks: say so
            bad = sum(not math.isfinite(v) for v in test["per_task"])
            return finish("diverged", it, {"iteration": it, "reason": f"test-time adaptation diverged: non-finite "
                                           f"metric on {bad} of {test['n']} test tasks", "last_metrics": last},
                          test=test, eval_s=time.perf_counter() - t0)
        return finish("completed", it, test=test, eval_s=time.perf_counter() - t0)
