"""The one training loop every algorithm shares.

sample a meta-batch → ``meta_gradient_batch`` (loop or vmap) → outer step → log →
periodic validation and checkpoints → final test on the fixed test tasks → summary.json.
The loop never knows which estimator it runs. Failures are outcomes: a non-finite loss or
meta-gradient ends the run as ``diverged``, CUDA out-of-memory as ``oom``, SIGINT/SIGTERM
as ``interrupted`` (after a checkpoint, so ``resume=true`` continues bit-identically).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import signal
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from omegaconf import OmegaConf

import algorithms
import datasets
from algorithms import CODE_PATHS, InnerConfig, fresh_inner_state
from algorithms import estimate_batch as meta_gradient_batch  # unchecked: trainer.config.validate checked the config
from algorithms import estimate_carried as meta_gradient_carried
from atomic import atomic_torch_save, atomic_write_text

from . import record
from .anatomy import adaptation_anatomy, train_anatomy
from .config import ConfigError, eval_prox_lam, inner_config, model_options, outer_options
from .evaluate import (
    PLATEAU_RULE,
    EvalSpec,
    evaluate,
    fingerprint,
    has_split,
    plateaued,
    sample_fixed,
    task_generator,
    zero_predictor,
)
from .fidelity import fidelity
from .loggers import make_logger
from .meters import AllocationMeter, Timer, rss_peak_bytes
from .problem import Problem, batching, build_problem
from .records import append_jsonl, device_name, load_checkpoint, machines, machines_text, read_jsonl, versions


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


def _resume_config(cfg) -> dict:
    """What must not change across a resume: the resolved config minus the resume flag and the
    time budget (a time-budgeted run may be continued with a larger budget)."""
    c = OmegaConf.to_container(cfg, resolve=True)
    c.pop("resume", None)
    c.pop("max_train_minutes", None)
    return c


def _config_key(cfg) -> str:
    return hashlib.sha256(json.dumps(_resume_config(cfg), sort_keys=True, default=str).encode()).hexdigest()


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def config_changes(old: dict, new: dict) -> tuple[list[str], list[str]]:
    """(keys whose values differ, keys only one of the two configs has). A run may resume across
    a code change that added or removed keys (a long campaign spans sessions), never across a
    changed value."""
    a, b = _flat(old), _flat(new)
    changed = sorted(k for k in a.keys() & b.keys() if json.dumps(a[k], default=str) != json.dumps(b[k], default=str))
    return changed, sorted(a.keys() ^ b.keys())


def eval_spec(cfg, problem: Problem) -> EvalSpec:
    """How this run validates and tests: ``eval.shots`` / ``eval.query_shots`` tasks when set (else
    the training shapes), adapted with ``test_inner_steps``, ``eval.prox_lam`` and ``eval.bn_mode``,
    under vmap unless the per-task loop was asked for."""
    source = problem.source
    if cfg.eval.shots is not None or cfg.eval.query_shots is not None:
        source = datasets.build(OmegaConf.merge(cfg, {"shots": cfg.eval.shots or cfg.shots,
                                                      "query_shots": cfg.eval.query_shots or cfg.query_shots}))
    return EvalSpec(source, problem.forward, problem.loss_fn, problem.device, source.metric,
                    InnerConfig.make(inner_config(cfg, cfg.test_inner_steps)), eval_prox_lam(cfg),
                    cfg.eval.bn_mode, batching(cfg.batching, problem.model) != "loop", cfg.eval.chunk)


def test_inner_state(cfg, inner_state):
    """The inner optimizer state test and validation tasks start from: the carried training state
    with ``eval.inner_state=training``, else None (a fresh one per task)."""
    return inner_state if cfg.eval.get("inner_state", "fresh") == "training" else None


def run_test(cfg, spec: EvalSpec, params, inner_state=None) -> dict:
    """The final test: ``eval.num_tasks`` fixed tasks of the test split, adapted from ``params`` (and
    from ``inner_state``, the carried training state, where ``eval.inner_state=training``) with the
    test-time settings, with the test-task fingerprint and shots (also used to test a trained run
    again: ``trainer.retest``)."""
    seed, n = cfg.eval.test_seed, cfg.eval.num_tasks
    test = evaluate(spec, params, "test", seed, n, steps_list=cfg.eval.steps_list or (),
                    inner_state=test_inner_state(cfg, inner_state))
    test["fingerprint"] = fingerprint(spec.source, "test", seed, n)
    test["shots"], test["query_shots"] = spec.source.shots, spec.source.query_shots
    if spec.metric == "mse":
        test["zero_predictor"] = zero_predictor(spec, "test", seed, n)
    return test


def run_val(cfg, spec: EvalSpec, params, inner_state=None) -> dict:
    """The final score of a selection candidate: ``eval.val_tasks`` fixed tasks of the validation
    split (its own seed; Omniglot and mini-ImageNet: the validation classes), with its fingerprint."""
    seed, n = cfg.eval.val_seed, cfg.eval.val_tasks
    val = evaluate(spec, params, "val", seed, n, steps_list=cfg.eval.steps_list or (),
                   inner_state=test_inner_state(cfg, inner_state))
    val["fingerprint"] = fingerprint(spec.source, "val", seed, n)
    return val


def _relative(path: Path) -> str:
    """A run folder as its summary names it: relative to the working directory when inside it,
    else as given (collecting records makes every run folder relative to the records folder)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _summary_base(cfg, run_dir, problem: Problem, seeds, inner: dict, hparams: dict | None, spec: EvalSpec) -> dict:
    """The summary's fields known before training. ``hparams``: the estimator's own hyperparameters as
    :func:`algorithms.record` states them; an implicit one's (it declares λ, ``lam``) also under ``imaml``."""
    implicit = hparams if hparams and "lam" in hparams else None
    a, source, device = cfg.algorithm, problem.source, problem.device
    planned = OmegaConf.select(cfg, "profile_budget.meta_iterations", default=None)
    return {
        "schema_version": record.SCHEMA_VERSION, "kind": "train", "status": "running", "run_dir": _relative(run_dir),
        "algorithm": a.estimator, "variant": a.name, "label": a.label, "family": a.get("family"),
        "role": record.role(a.get("family"), "running", 0), "dataset": source.name,
        "ways": cfg.ways, "shots": cfg.shots, "query_shots": cfg.query_shots,
        "profile": cfg.get("profile", "custom"), "experiment": cfg.get("experiment_name"),
        "protocol": cfg.get("protocol"), "source": protocol_source(cfg),
        "meta_iterations": cfg.meta_iterations, "max_train_minutes": cfg.get("max_train_minutes"),
        "budget_kind": record.budget_kind(cfg.meta_iterations, cfg.get("max_train_minutes"), planned),
        "iterations_done": 0, "stopped_by": None, "meta_batch_size": cfg.meta_batch_size,
        "inner": {**inner, "steps": cfg.inner_steps, "test_steps": cfg.test_inner_steps,
                  "prox_lam": algorithms.proximal_weight(cfg.algorithm.estimator, hparams or {}),
                  "test_prox_lam": spec.prox_lam,
                  "state": cfg.get("inner_state", "fresh"), "test_state": cfg.eval.get("inner_state", "fresh")},
        "imaml": implicit, **({"hparams": hparams} if hparams and not implicit else {}),
        "outer": {"optimizer": a.outer.optimizer, **outer_options(cfg), "clip": a.outer.clip,
                  "anneal": bool(a.outer.anneal)},
        "model": model_options(cfg) if source.model != "mlp" else None,
        "bn_mode": None if source.metric == "mse" else cfg.eval.bn_mode,
        "seed": cfg.seed, "seeds": seeds, "dtype": cfg.dtype, "device": device.type,
        "device_name": device_name(device), "test": None, "timing": None, "memory": None,
        "versions": versions(), "data": datasets.record(source), "failure": None,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }


def protocol_source(cfg) -> dict:
    """The config's ``source`` (where the experiment's protocol comes from); a run without one states
    its own choices."""
    src = OmegaConf.to_container(cfg.source, resolve=True) if cfg.get("source") is not None else {}
    return {"kind": "stated", "reference": None, "record": None, **src}


def budget_label(summary: dict, it: int) -> str:
    """What a run ran, in words: a time-capped run never reads as the paper's budget."""
    planned = f"{it:,} of {summary['meta_iterations']:,} iterations"
    if summary["stopped_by"] == "max_train_minutes":
        return f"capped at {summary['max_train_minutes']:g} min: {planned}"
    if summary["stopped_by"] == "stop_at":
        return f"stopped at {planned} (stop_at; the schedule runs over all {summary['meta_iterations']:,})"
    if summary["stopped_by"] == "converged":
        return f"converged at {planned} (declared rule {PLATEAU_RULE.split(':')[0]})"
    return f"{planned} ({summary['profile']} profile)"


def state_on(state, device):
    """A carried inner state (``{"t": int, name: {param: tensor}}``, or None) on ``device``."""
    if state is None:
        return None
    return {k: v if k == "t" else {n: t.detach().to(device) for n, t in v.items()} for k, v in state.items()}


class _Run:
    """One training run's state (parameters, outer optimizer, task stream, clocks, peaks) and the
    named steps :func:`train` tells its story with."""

    def __init__(self, cfg, run_dir: Path):
        self.cfg, self.run_dir = cfg, run_dir
        torch.manual_seed(cfg.seed)  # nothing should draw from the global RNG; pin it anyway
        p = build_problem(cfg)
        self.device, self.source, self.params, self.loss_fn, self.metric_fn = (
            p.device, p.source, p.params, p.loss_fn, p.metric_fn)
        self.spec = eval_spec(cfg, p)
        if cfg.eval.final == "val" and not has_split(self.spec.source, "val"):
            raise ConfigError("eval.final=val needs a validation split; this dataset config has none "
                              "(dataset.split.val=0)")
        seeds = {"init": cfg.seed, "train_tasks": cfg.seed * 7919 + 1, "val_tasks": cfg.eval.val_seed,
                 "test_tasks": cfg.eval.test_seed}
        a = cfg.algorithm
        fields = inner_config(cfg)
        self.inner = InnerConfig.make(fields)
        self.hparams = dict(OmegaConf.to_container(a.hparams, resolve=True))
        implicit = algorithms.record(cfg.algorithm.estimator, self.hparams, self.inner)
        self.summary = _summary_base(cfg, run_dir, p, seeds, fields, implicit, self.spec)
        if cfg.eval.final == "val":
            self.summary["kind"] = "selection"
        # inner_state=carried (Reptile's reference): the tasks of a meta-batch run in sequence, each
        # from the inner optimizer state the previous one left; the state is checkpointed.
        self.carried = cfg.get("inner_state", "fresh") == "carried"
        self.inner_state = fresh_inner_state(self.params, self.inner) if self.carried else None
        self.batching = "loop" if self.carried else batching(cfg.batching, p.model)
        self.summary["code_path"] = {"batching": self.batching, **CODE_PATHS[self.batching]}
        opt_cls = torch.optim.Adam if a.outer.optimizer == "adam" else torch.optim.SGD
        self.leaves = list(self.params.values())
        self.opt = opt_cls(self.leaves, **outer_options(cfg))
        self.gen = torch.Generator().manual_seed(seeds["train_tasks"])
        self.start, self.train_wall, self.iter_times, self.alloc_peak, self.gpu_peak = 0, 0.0, [], 0, 0
        self.offclock_wall = 0.0  # diagnostics and memory profiling: recorded, not charged to the budget
        self.ckpt_path = run_dir / "ckpt.pt"
        self.budget_s = 60.0 * cfg.max_train_minutes if cfg.get("max_train_minutes") else math.inf
        # Validation every ``val_every`` iterations and/or every ``val_every_minutes`` of training
        # wall-clock (a learning curve on the time axis: runs of very different speeds get points
        # at the same training times). With the time rule, the first iteration is validated too.
        self.val_period_s = 60.0 * cfg.eval.val_every_minutes if cfg.eval.get("val_every_minutes") else None
        self.last: dict = {}
        self.val_history: list[tuple[float, float]] = []  # (mean, ci95) of the val_every validations
        self.converged = False
        self.anatomy: dict | None = None  # where a failed iteration first went non-finite (trainer.anatomy)
        self.failed_batch = None  # its tasks (tools/diagnose.py checks them independently)
        # Gradual failure, first occurrences: CG's relative residual above 1 on a task (the solve made the
        # residual worse than none), validation worse than the no-learning baseline after having beaten it.
        self.gradual: dict = {}
        self.val_baseline: tuple[str, float] | None = None
        self.machines: list[dict] = []  # where the iterations before this process ran (from the checkpoint)
        self.wall_at_start = 0.0
        self.device_name = device_name(self.device)

    # ------------------------------------------------------------------ restore
    def restore(self) -> None:
        """Continue from the run folder's checkpoint (``resume=true``) and truncate the metrics to it."""
        cfg = self.cfg
        if cfg.resume:
            ck = load_checkpoint(self.ckpt_path)
            if ck is not None and ck.get("config_key") != _config_key(cfg):
                changed, keys = config_changes(ck["config"], _resume_config(cfg)) if "config" in ck else (["?"], [])
                if changed:
                    raise ConfigError(f"resume=true: the checkpoint in {self.run_dir} was made with a different "
                                      f"config ({', '.join(changed[:3])}); resume with the run's own overrides (see "
                                      "its .hydra/overrides.yaml) or use a new run folder")
                self.summary["resumed_across_keys"] = sorted(set(ck.get("resumed_across_keys", [])) | set(keys))
            if ck is not None:
                for k in self.params:
                    self.params[k].copy_(ck["params"][k].to(self.device))
                self.opt.load_state_dict(ck["opt"])
                if self.carried:
                    self.inner_state = state_on(ck["inner_state"], self.device)
                self.gen.set_state(ck["gen"])
                self.start, self.train_wall, self.iter_times = ck["iteration"], ck["train_wall_s"], ck["iter_times"]
                self.alloc_peak, self.gpu_peak = ck["alloc_peak"], ck["gpu_peak"]
                self.offclock_wall = ck.get("offclock_wall_s", 0.0)
                self.machines = ck.get("machines") or ([  # a checkpoint from before machines were recorded
                    {"device_name": None, "from": 0, "to": self.start, "train_wall_s": self.train_wall}]
                    if self.start else [])
                self.wall_at_start = self.train_wall
        rows = read_jsonl(self.run_dir / "metrics.jsonl", max_iter=self.start) if self.start else []
        self.val_history = [(r["val_metric"], r["val_ci95"]) for r in rows if "val_ci95" in r]
        atomic_write_text(self.run_dir / "metrics.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
        record.write(self.run_dir / "summary.json", self.summary)
        self.logger = make_logger(cfg, self.run_dir)
        self.next_val_s = self._next_val(self.train_wall)

    # ------------------------------------------------------------------ step
    def out_of_time(self) -> bool:
        return self.train_wall >= self.budget_s

    def _meta_gradient(self, tasks, full: bool = False, meter=None):
        """The meta-gradient (and the carried inner state after it, else None). Every call starts from
        the same state, so the step's off-clock calls repeat its first and change nothing."""
        a = self.cfg.algorithm
        with meter or contextlib.nullcontext():
            if self.carried:
                return meta_gradient_carried(a.estimator, self.loss_fn, self.params, tasks, self.inner_state,
                                             self.inner, metric_fn=self.metric_fn, diagnostics_full=full,
                                             **self.hparams)
            return (*meta_gradient_batch(a.estimator, self.loss_fn, self.params, tasks, self.inner,
                                         batching=self.batching, metric_fn=self.metric_fn,
                                         diagnostics_full=full, **self.hparams), None)

    def step(self, it: int) -> dict | None:
        """One meta-iteration: sample, meta-gradient, outer step. Returns the log row, or None when
        the loss or meta-gradient is not finite (nothing is applied then)."""
        cfg, a, device = self.cfg, self.cfg.algorithm, self.device
        t0 = time.perf_counter()
        drawn_from = self.gen.get_state()  # to say, should this iteration fail, what defined its tasks
        tasks = tuple(t.to(device) for t in self.source.sample("train", cfg.meta_batch_size, self.gen))
        sample_s = time.perf_counter() - t0
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

        def grad(full: bool = False, meter=None):
            return self._meta_gradient(tasks, full, meter)

        with Timer(device) as timer:
            grads, info, state_after = grad()
        # Off the budget clock (it counts only what every algorithm must do: sampling, the
        # meta-gradient, the outer step): the extra per-task diagnostics on the first and every N-th
        # iteration, and the CPU allocation profile, each a second call on the same tasks and θ.
        # The profiler keeps one event per op, so after the run's first profiled iteration long
        # iterations (millions of ops: iMAML-HF's Newton solves) are not profiled again.
        t_off = time.perf_counter()
        every = int(cfg.diagnostics)
        if every and (it == self.start + 1 or it % every == 0):
            info = {**info, **{k: v for k, v in grad(full=True)[1].items() if k not in info}}
        if device.type == "cpu" and cfg.mem_every and (it == self.start + 1 or (
                it % cfg.mem_every == 0 and timer.seconds <= cfg.mem_max_iter_s)):
            meter = AllocationMeter()
            grad(meter=meter)
        else:
            meter = None
        fid = {}
        if cfg.fidelity_every and (it == self.start + 1 or it % cfg.fidelity_every == 0):
            fid = fidelity(a.estimator, self.loss_fn, self.params, tasks, self.inner, self.hparams, self.batching,
                           self.inner_state)
        self.offclock_wall += time.perf_counter() - t_off
        row = {"iter": it, "train_loss": info["query_loss_after"].mean().item(), "sample_s": sample_s, **fid}
        if "query_metric_after" in info:
            row["train_metric"] = info["query_metric_after"].mean().item()
        for k in ("query_loss_before", "inner_grad_norm", "cg_residual"):
            if k in info:
                row[k] = info[k].mean().item()
        self._watch_cg(it, info)
        if not (math.isfinite(row["train_loss"]) and all(bool(torch.isfinite(g).all()) for g in grads.values())):
            self.dissect(tasks, drawn_from)
            return None
        if self.carried:
            self.inner_state = state_after
        with Timer(device) as step_timer:
            if a.outer.anneal:  # linear to 0 over the run: its iterations, or its time budget if that ends it first
                done = max((it - 1) / max(1, cfg.meta_iterations), self.train_wall / self.budget_s)
                for gr in self.opt.param_groups:
                    gr["lr"] = float(a.outer.lr) * max(0.0, 1 - done)
            for k, p in self.params.items():
                p.grad = grads[k].to(p.dtype)
            if a.outer.clip:
                torch.nn.utils.clip_grad_value_(self.leaves, float(a.outer.clip))
            self.opt.step()
        if not all(bool(torch.isfinite(p).all()) for p in self.params.values()):
            self._outer_step_failed(grads)
            return None
        iter_s = timer.seconds + step_timer.seconds
        self.iter_times.append(iter_s)
        self.train_wall += iter_s + sample_s
        row.update(iter_s=iter_s, train_wall_s=self.train_wall, lr=self.opt.param_groups[0]["lr"])
        if meter is not None:
            row["alloc_peak_bytes"] = meter.peak
            self.alloc_peak = max(self.alloc_peak, meter.peak)
        if device.type == "cuda":
            row["gpu_peak_bytes"] = torch.cuda.max_memory_allocated(device)
            self.gpu_peak = max(self.gpu_peak, row["gpu_peak_bytes"])
        return row

    # ------------------------------------------------------------------ validate
    def _next_val(self, wall: float) -> float:
        return (math.floor(wall / self.val_period_s) + 1) * self.val_period_s if self.val_period_s else math.inf

    def validate(self, it: int, row: dict) -> None:
        cfg = self.cfg
        due = bool(cfg.eval.val_every and it % cfg.eval.val_every == 0) or (
            self.val_period_s is not None and (it == 1 or self.train_wall >= self.next_val_s))
        if due and has_split(self.spec.source, "val"):
            v = evaluate(self.spec, self.params, "val", cfg.eval.val_seed, cfg.eval.val_tasks,
                         inner_state=test_inner_state(cfg, self.inner_state))
            row["val_metric"] = v["mean"]
            self._watch_baseline(it, v["mean"])
            self.next_val_s = self._next_val(self.train_wall)
            if cfg.eval.val_every and it % cfg.eval.val_every == 0:
                row["val_ci95"] = v["ci95"]
                self.val_history.append((v["mean"], v["ci95"]))
                self.converged = (cfg.eval.get("early_stop") == "plateau"
                                  and plateaued(self.val_history, self.spec.metric == "mse"))

    # ------------------------------------------------------------------ log
    def log(self, it: int, row: dict, bar) -> None:
        append_jsonl(self.run_dir / "metrics.jsonl", row)
        self.logger.log(row)
        self.last = row
        metric = row.get("train_metric", row["train_loss"])
        if bar:
            bar.update(1)
            bar.set_postfix(loss=f"{row['train_loss']:.3f}", metric=f"{metric:.3f}")
        elif it % max(1, self.cfg.meta_iterations // 10) == 0 or it == self.cfg.meta_iterations:
            print(f"[{self.cfg.algorithm.label} {self.source.name}] iter {it}/{self.cfg.meta_iterations} "
                  f"loss {row['train_loss']:.4f} metric {metric:.4f} {1 / max(row['iter_s'], 1e-9):.1f} it/s",
                  flush=True)

    def progress_bar(self):
        if not sys.stdout.isatty() or self.cfg.meta_iterations <= self.start:
            return contextlib.nullcontext()
        from tqdm import tqdm
        return tqdm(total=self.cfg.meta_iterations, initial=self.start, dynamic_ncols=True,
                    desc=f"{self.cfg.algorithm.label} {self.source.name}")

    # ------------------------------------------------------------------ checkpoint
    def checkpoint(self, it: int) -> None:
        atomic_torch_save(self.ckpt_path, {
            "params": {k: v.detach().cpu() for k, v in self.params.items()}, "opt": self.opt.state_dict(),
            "gen": self.gen.get_state(), "iteration": it, "train_wall_s": self.train_wall,
            "inner_state": state_on(self.inner_state, "cpu"),
            "offclock_wall_s": self.offclock_wall,
            "iter_times": self.iter_times, "alloc_peak": self.alloc_peak, "gpu_peak": self.gpu_peak,
            "config_key": _config_key(self.cfg), "config": _resume_config(self.cfg),
            "resumed_across_keys": self.summary.get("resumed_across_keys", []), "machines": self._machines(it)})

    def _machines(self, it: int) -> list[dict]:
        return machines(self.machines, self.device_name, self.start, it, self.train_wall - self.wall_at_start)

    # ------------------------------------------------------------------ finish
    def failure(self, it: int, reason: str, phase: str = "training") -> dict:
        """Why the run ended early; ``phase``: ``training``, or the final ``test`` / ``validation``."""
        out = {"iteration": it, "reason": reason, "phase": phase, "last_metrics": self.last}
        if self.anatomy is not None:
            out["anatomy"] = self.anatomy
            out["stage"] = self.anatomy["stage"]
        return out

    def _describe(self, split: str, n: int, generator: torch.Generator):
        """``i → what defines task i`` of the ``n`` tasks ``generator`` draws, where the source can say."""
        describe = getattr(self.source, "describe", None)
        return None if describe is None else (lambda i: describe(split, n, generator)[i])

    def dissect(self, tasks, drawn_from: torch.Tensor) -> None:
        """The failed meta-batch again, task by task with every stage traced, off the budget clock."""
        t0 = time.perf_counter()
        self.failed_batch = tasks
        gen = torch.Generator().set_state(drawn_from)
        try:
            self.anatomy = train_anatomy(self.cfg.algorithm.estimator, self.loss_fn, self.params, tasks, self.inner,
                                         self.hparams, inner_state=self.inner_state,
                                         describe=self._describe("train", tasks[0].shape[0], gen))
        except Exception as e:  # the evidence is a bonus; the failure is recorded either way
            self.anatomy = {"stage": "unknown", "error": f"{type(e).__name__}: {e}"}
        self.offclock_wall += time.perf_counter() - t0

    def _watch_cg(self, it: int, info: dict) -> None:
        """The first iteration where a task's CG relative residual exceeds 1 (the solve made it worse than none)."""
        if "cg_residual" in info and "cg_residual_above_1" not in self.gradual:
            worst = info["cg_residual"].max().item()
            if worst > 1:
                self.gradual["cg_residual_above_1"] = {"iteration": it, "max": worst,
                                                       "mean": info["cg_residual"].mean().item()}

    def _outer_step_failed(self, grads: dict) -> None:
        norm = float(torch.cat([g.flatten().double() for g in grads.values()]).norm())
        self.anatomy = {"stage": "outer step", "task": None, "task_definition": None, "failing": None,
                        "last_finite": [], "mean_grad_norm": norm, "outer_lr": self.opt.param_groups[0]["lr"],
                        "note": "finite meta-gradient; the parameters after the outer optimizer's step are not"}

    def _watch_baseline(self, it: int, value: float) -> None:
        """First validation better than the no-learning baseline (chance; the zero predictor on the same
        validation tasks for regression), and the first worse than it after that."""
        if self.val_baseline is None:
            cfg, spec = self.cfg, self.spec
            self.val_baseline = (("zero predictor", zero_predictor(spec, "val", cfg.eval.val_seed, cfg.eval.val_tasks)["mean"])
                                 if spec.metric == "mse" else ("chance", 1.0 / cfg.ways))
        name, base = self.val_baseline
        better = value < base if self.spec.metric == "mse" else value > base
        if better and "beat_baseline" not in self.gradual:
            self.gradual["beat_baseline"] = {"iteration": it, "val": value, "baseline": name, "baseline_value": base}
        elif (not better or not math.isfinite(value)) and "beat_baseline" in self.gradual \
                and "worse_than_baseline" not in self.gradual:
            self.gradual["worse_than_baseline"] = {"iteration": it, "val": value, "baseline": name,
                                                   "baseline_value": base}

    def dissect_test(self, split: str, seed: int, per_task: list[float], index: int | None = None) -> None:
        """Test-time adaptation of task ``index`` (default: the first whose metric is not finite), traced."""
        index = next(i for i, v in enumerate(per_task) if not math.isfinite(v)) if index is None else index
        task = sample_fixed(self.spec.source, split, seed, index, index + 1, self.device)
        try:
            inner = replace(self.spec.inner, prox_lam=self.spec.prox_lam)
            describe = getattr(self.spec.source, "describe", None)
            self.anatomy = adaptation_anatomy(
                self.spec.loss_fn, self.params, tuple(t[0] for t in task), inner,
                inner_state=test_inner_state(self.cfg, self.inner_state), index=index,
                describe=None if describe is None else (lambda _: describe(split, 1, task_generator(seed, index))[0]))
        except Exception as e:
            self.anatomy = {"stage": "test-time adaptation (unknown step)", "error": f"{type(e).__name__}: {e}"}

    def finish(self, status: str, it: int, failure=None, test=None, eval_s: float = 0.0) -> dict:
        s = self.summary
        s.update(status=status, iterations_done=it, failure=failure, test=test, machines=self._machines(it),
                 gradual=self.gradual, role=record.role(s["family"], status, it))
        s["device_name"] = machines_text(s["machines"])
        s["timing"] = {"median_iter_s": statistics.median(self.iter_times) if self.iter_times else None,
                       "train_wall_s": self.train_wall, "eval_wall_s": eval_s,
                       "offclock_wall_s": self.offclock_wall,
                       "total_wall_s": self.train_wall + eval_s}
        s["memory"] = {"gpu_peak_bytes": self.gpu_peak if self.device.type == "cuda" else None,
                       "alloc_peak_bytes": self.alloc_peak or None, "rss_peak_bytes": rss_peak_bytes()}
        s = record.write(self.run_dir / "summary.json", s)
        self.logger.finish(s)
        return s

    def test_and_finish(self, it: int) -> dict:
        """The final test on the fixed test tasks; a non-finite result is a divergence, said so."""
        cfg = self.cfg
        self.summary["stopped_by"] = ("converged" if self.converged else "meta_iterations" if it >= cfg.meta_iterations
                                      else "stop_at" if it == cfg.get("stop_at") else "max_train_minutes")
        if self.converged:
            self.summary["early_stop"] = {"rule": PLATEAU_RULE, "validations": len(self.val_history)}
        self.summary["budget"] = budget_label(self.summary, it)
        t0 = time.perf_counter()
        if cfg.eval.final == "val":  # a selection candidate: scored on validation tasks, never tested
            test = self.summary["val"] = run_val(cfg, self.spec, self.params, self.inner_state)
        else:
            test = run_test(cfg, self.spec, self.params, self.inner_state)
        eval_s = time.perf_counter() - t0
        if not math.isfinite(test["mean"]):  # the adapted models blew up on some test tasks
            bad = sum(not math.isfinite(v) for v in test["per_task"])
            final = "val" if cfg.eval.final == "val" else "test"
            self.dissect_test(final, cfg.eval.val_seed if final == "val" else cfg.eval.test_seed, test["per_task"])
            phase = "validation" if final == "val" else "test"
            return self.finish("diverged", it, self.failure(it, f"test-time adaptation diverged: non-finite metric "
                                                                f"on {bad} of {test['n']} {phase} tasks", phase),
                               test=test, eval_s=eval_s)
        return self.finish("completed", it, test=None if cfg.eval.final == "val" else test, eval_s=eval_s)


def train(cfg, run_dir: str | Path) -> dict:
    """Train and evaluate one configuration into ``run_dir``; returns the summary dict."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    run = _Run(cfg, run_dir)
    run.restore()
    it = run.start
    with _Stop() as stop, run.logger.guard(run.summary), run.progress_bar() as bar:
        try:
            for it in range(run.start + 1, min(cfg.meta_iterations, cfg.get("stop_at") or cfg.meta_iterations) + 1):
                if run.out_of_time():
                    it -= 1
                    break
                row = run.step(it)
                if row is None:
                    where = (run.anatomy or {}).get("stage", "unknown")
                    return run.finish("diverged", it - 1, run.failure(it, f"non-finite loss, meta-gradient or "
                                                                          f"parameters (first at: {where})"))
                run.validate(it, row)
                run.log(it, row, bar)
                if cfg.ckpt_every and it % cfg.ckpt_every == 0:
                    run.checkpoint(it)
                if stop.signal:
                    run.checkpoint(it)
                    return run.finish("interrupted", it, run.failure(it, f"received {stop.signal}"))
                if run.converged:
                    break
        except torch.cuda.OutOfMemoryError as e:
            return run.finish("oom", it - 1, run.failure(it, str(e).splitlines()[0]))
        run.checkpoint(it)
        return run.test_and_finish(it)
