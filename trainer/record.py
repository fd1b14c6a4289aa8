"""The run record, ``summary.json``: one typed model that the trainer writes through and the report
reads through; ``SCHEMA.md`` beside the report is generated from it (``python tools/schema_doc.py``).

A field's ``column`` is its name in the report's table of runs (:meth:`Record.row`); a sub-record
marked ``flatten`` gives its columns to that table too. Sub-records whose keys other modules own
(the inner optimizer's settings, an estimator's hyperparameters, a dataset's split) accept keys
beyond the ones declared; every other one refuses an unknown key, so a renamed key fails loudly.
"""
from __future__ import annotations

import math
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from atomic import atomic_write_json

SCHEMA_VERSION = 2
Status = Literal["completed", "diverged", "oom", "interrupted", "running"]
Role = Literal["method", "baseline"]
SourceKind = Literal["published", "selected", "stated"]
BudgetKind = Literal["iterations", "minutes", "both"]
Phase = Literal["training", "test", "validation"]


def entry(description: str, default: Any = ..., *, column: str | None = None, flatten: bool = False,
          alias: str | None = None) -> Any:
    """A field with its meaning; ``column``: its name in the table of runs; ``flatten``: a sub-record
    whose columns join that table."""
    extra = {k: v for k, v in (("column", column), ("flatten", flatten or None)) if v is not None}
    return Field(default, description=description, json_schema_extra=extra or None, alias=alias)


def derived(column: str, blank: Any = None):
    """A property that is a column of the table of runs, computed from the record; ``blank``: its
    value where the sub-record is absent."""
    def wrap(fn):
        fn.column, fn.blank = column, blank
        return property(fn)
    return wrap


class Closed(BaseModel):
    """A sub-record with a fixed set of keys, each of its declared type (no string for a number)."""
    model_config = ConfigDict(strict=True, extra="forbid", populate_by_name=True)


class Open(Closed):
    """A sub-record whose keys another module owns: the declared ones are checked, others are kept."""
    model_config = ConfigDict(strict=True, extra="allow", populate_by_name=True)


class Source(Closed):
    """Where the run's protocol comes from (the experiment config's ``source``)."""
    kind: SourceKind = entry("`published`: a paper's or a reference code's protocol; `selected`: choices made on "
                             "validation tasks, by the selection record `record`; `stated`: choices stated "
                             "without either (the experiment's `protocol` says which)", column="source")
    reference: str | None = entry("the paper or code the protocol follows, where it follows one", None,
                                  column="source_reference")
    record: str | None = entry("`selected`: the selection record, relative to `reports/` "
                               "(`records/selection-cpu/<setting>/<algorithm>`)", None, column="source_record")

    @model_validator(mode="after")
    def _record_of_a_selection(self):
        if self.kind == "selected" and not self.record:
            raise ValueError("source.kind is selected but source.record names no selection record")
        return self


class Inner(Open):
    """The inner loop (``algorithms.InnerConfig``), plus the inner optimizer's own settings."""
    optimizer: str = entry("`sgd` | `momentum` | `adam` | `hf`", column="inner_optimizer")
    steps: int = entry("inner steps in training", column="inner_steps")
    test_steps: int = entry("inner steps at test", column="test_steps")
    lr: float = entry("inner step size (`hf`: the line search's first step)", column="inner_lr")
    prox_lam: float | None = entry("λ of the proximal term in training (0 without one)", None, column="prox_lam")
    prox_mode: str | None = entry("`every_step` (the paper) | `final_step` (the iMAML release) | `none`", None)
    test_prox_lam: float | None = entry("the proximal weight at test", None)
    state: str = entry("`fresh` | `carried`: the inner optimizer state carried across tasks (Reptile's reference "
                       "code); records without it ran `fresh`", "fresh", column="inner_state")
    test_state: str = entry("`fresh` | `training`: test tasks adapted from the carried training state",
                            "fresh", column="test_inner_state")
    batch: int | None = entry("samples per inner step (null: the whole support set)", None)


class Implicit(Open):
    """An implicit estimator's hyperparameters (one that declares λ, ``lam``), as ``algorithms.record`` states them."""
    lam: float = entry("λ of Rajeswaran et al. 2019 Eq. 3", column="lam")
    cg_steps: int | None = entry("CG iterations of the implicit solve", None, column="cg_steps")
    cg_damping: float | None = entry("CG system damping (0: the paper's)", None)
    lam_damping: float | None = entry("λ damping in the CG system (0: the paper's)", None)
    cg_tol: float | None = entry("CG stopping tolerance, as resolved", None)


class Outer(Closed):
    optimizer: str = entry("`adam` | `sgd`", column="outer_optimizer")
    lr: float = entry("outer learning rate", column="outer_lr")
    eps: float | None = entry("Adam's eps", None)
    clip: float | None = entry("meta-gradient value clip (null: none)", None, column="outer_clip")
    anneal: bool = entry("outer step annealed linearly to 0 over the run", column="outer_anneal")


class ModelOptions(Closed):
    head: str = entry("conv4 head")
    init: str = entry("initialisation")
    arch: str = entry("architecture variant")


class Seeds(Closed):
    init: int = entry("parameter initialisation")
    train_tasks: int = entry("training task stream")
    val_tasks: int | None = entry("validation tasks", None)
    test_tasks: int = entry("test tasks")


class Machine(Closed):
    device_name: str | None = entry("the device (null: from a checkpoint made before machines were recorded)")
    from_: int = entry("first iteration of the stretch", alias="from")
    to: int = entry("last iteration of the stretch")
    train_wall_s: float = entry("training seconds of the stretch")


class CodePath(Closed):
    batching: str = entry("`loop` | `vmap` | `compile`")
    autodiff: str = entry("`torch.autograd` | `torch.func`")
    loss: str = entry("`fused` | `plain`")


class EarlyStop(Closed):
    rule: str = entry("the declared plateau rule")
    validations: int = entry("validations when it fired")


class ZeroPredictor(Closed):
    """The MSE of predicting 0 on the same test tasks (the regression baseline)."""
    mean: float = entry("mean over the test tasks", column="zero_mean")
    ci95: float | None = entry("95% CI half-width", None, column="zero_ci95")
    per_task: list[float] | None = entry("per test task, in test-task order", None, column="zero_per_task")


class Evaluation(Closed):
    """A final evaluation on fixed tasks (``test``; a selection candidate's ``val``)."""
    metric: Literal["accuracy", "mse"] = entry("`accuracy` (fraction in [0, 1]) | `mse`", column="metric")
    mean: float = entry("over the tasks", column="mean")
    std: float | None = entry("over the tasks", None, column="std")
    ci95: float = entry("1.96·std/√n", column="ci95")
    n: int = entry("tasks", column="n")
    per_task: list[float] | None = entry("the metric of each task, in task order (the same for every run with the "
                                         "same fingerprint); length `n`", None, column="per_task")
    fingerprint: str | None = entry("sha256 of the task definition (dataset, split, shapes, seed, n, data)", None,
                                    column="fingerprint")
    steps: int | None = entry("inner steps used", None, column="test_steps_used")
    by_steps: dict[str, float] = entry('sinusoid: `{"1": mse, "5": mse, "10": mse}` after k steps; else `{}`',
                                       {})
    by_steps_ci95: dict[str, float] | None = entry("95% CI of each `by_steps` mean", None)
    shots: int | None = entry("support shots of the tasks", None)
    query_shots: int | None = entry("query shots of the tasks", None)
    zero_predictor: ZeroPredictor | None = entry("regression: the zero predictor on the same tasks", None,
                                                 flatten=True)

    @derived("by_steps", blank={})
    def by_steps_int(self) -> dict[int, float]:
        """``by_steps`` with integer step counts as keys (``{}`` without a test)."""
        return {int(k): v for k, v in self.by_steps.items()}


class Failure(Closed):
    iteration: int | None = entry("the iteration that failed (test: the iterations done)", column="failure_iteration")
    reason: str = entry("what happened", column="failure_reason")
    phase: Phase = entry("`training` | `test` (the trained run's test-time adaptation diverged) | `validation` "
                         "(a selection candidate's final score did)", column="failure_phase")
    stage: str | None = entry("for a non-finite value, where it first appeared (`inner step k`, `CG iteration j`, "
                              "`outer step`, `test-time adaptation, …`)", None, column="failure_stage")
    anatomy: dict[str, Any] | None = entry("the failing task traced stage by stage (`trainer/anatomy.py`)", None)
    last_metrics: dict[str, Any] = entry("the last logged metrics row", {})


class Timing(Closed):
    median_iter_s: float | None = entry("median seconds per meta-iteration", None, column="median_iter_s")
    train_wall_s: float = entry("training wall-clock (compute + sampling) in seconds", column="train_wall_s")
    eval_wall_s: float | None = entry("final evaluation seconds", None)
    offclock_wall_s: float | None = entry("diagnostics and profiling seconds, not charged to the budget", None)
    total_wall_s: float = entry("training + evaluation seconds", column="total_wall_s")


class Memory(Closed):
    gpu_peak_bytes: int | None = entry("CUDA peak allocated (null on CPU)", None, column="gpu_peak_bytes")
    alloc_peak_bytes: int | None = entry("CPU allocation peak of a meta-iteration (profiler)", None,
                                         column="alloc_peak_bytes")
    rss_peak_bytes: int | None = entry("process peak resident memory", None, column="rss_peak_bytes")


class Versions(Closed):
    python: str | None = entry("Python version", None)
    torch: str | None = entry("torch version", None)
    learn2learn: str | None = entry("learn2learn version (null without it)", None)
    git_commit: str | None = entry("the checkout's commit (`-dirty` with local changes)", None, column="git_commit")


class Data(Open):
    archive_sha256: dict[str, str] = entry("sha256 of each archive file", {})
    split_seed: int | None = entry("Omniglot: class split seed", None)
    split_sizes: dict[str, int] | None = entry("Omniglot: classes per split", None)
    test_split: str | None = entry("Omniglot: `standard` | `release_leaky`", None)
    test_train_overlap: int | None = entry("Omniglot: test characters that are also training characters", None)


class Record(Closed):
    """``summary.json``: one training run (``kind`` train) or selection candidate (``kind`` selection)."""
    schema_version: Literal[2] = entry("`2`")
    kind: Literal["train", "selection"] = entry("`train`; `selection`: a candidate scored on validation tasks only "
                                                "(`val`), never tested")
    status: Status = entry("`running` until the run ends", column="status")
    run_dir: str | None = entry("the folder as the trainer saw it (the report uses where it found the file)", None)
    algorithm: str = entry("the estimator, or `package.module:function` of one outside the checkout",
                           column="algorithm")
    variant: str | None = entry("the algorithm config's name (`imaml_hf`, `pretrained`, …)", None, column="variant")
    label: str = entry("display name", column="label")
    family: str | None = entry("the algorithm config's family: `exact` | `first-order` | `implicit` | `baseline`",
                               None, column="family")
    role: Role = entry("`baseline`: a reference the methods are judged against (an algorithm of family `baseline`, "
                       "or an untrained θ₀: completed with no meta-iteration); `method` otherwise", column="role")
    dataset: str = entry("`sinusoid` | `omniglot` | `miniimagenet` | …", column="dataset")
    ways: int = entry("task shape; sinusoid: 1", column="ways")
    shots: int = entry("training support shots (sinusoid: K)", column="shots")
    query_shots: int | None = entry("training query shots", None, column="query_shots")
    profile: str = entry("`cpu` | `paper` | `custom`; only `paper` run to its planned iterations is paper-scale",
                         column="profile")
    experiment: str | None = entry("the named experiment config", None, column="experiment")
    protocol: str | None = entry("the protocol in words (`configs/experiment/*.yaml`)", None, column="protocol")
    source: Source = entry("where the protocol comes from", flatten=True)
    meta_iterations: int = entry("planned meta-iterations", column="meta_iterations")
    max_train_minutes: float | None = entry("training wall-clock limit (null: none)", None, column="max_train_minutes")
    budget_kind: BudgetKind = entry("`iterations`: no time cap; `minutes`: a time cap on the protocol's planned "
                                    "iterations (the cap is the budget); `both`: a time cap on an iteration count "
                                    "chosen for the run (whichever comes first)", column="budget_kind")
    iterations_done: int = entry("meta-iterations trained", column="iterations_done")
    stopped_by: Literal["meta_iterations", "stop_at", "max_train_minutes", "converged"] | None = entry(
        "what ended training of a run that reached its test (null otherwise)", None, column="stopped_by")
    budget: str | None = entry("what the run ran, in words", None, column="budget")
    early_stop: EarlyStop | None = entry("a run ended by the declared plateau rule", None)
    meta_batch_size: int | None = entry("tasks per meta-batch", None, column="meta_batch_size")
    inner: Inner = entry("the inner loop", flatten=True)
    imaml: Implicit | None = entry("an implicit estimator's hyperparameters; null for others", None, flatten=True)
    hparams: dict[str, Any] | None = entry("an estimator's own hyperparameters where it has some and no λ", None)
    outer: Outer = entry("the outer optimizer", flatten=True)
    model: ModelOptions | None = entry("the conv4's options; null for the MLP", None)
    bn_mode: str | None = entry("`transductive` | `per_example`; null for sinusoid", None, column="bn_mode")
    seed: int | None = entry("training seed", None, column="seed")
    seeds: Seeds | None = entry("the seeds derived from it", None)
    dtype: str | None = entry("`float32` | `float64`", None, column="dtype")
    device: str | None = entry("`cpu` | `cuda`", None, column="device")
    device_name: str | None = entry("the device model; a run resumed elsewhere names each with its iterations", None,
                                    column="device_name")
    machines: list[Machine] | None = entry("which iterations trained on which device", None)
    code_path: CodePath | None = entry("the batching mode and what it implies", None)
    resumed_across_keys: list[str] | None = entry("config keys added or removed between a checkpoint and its resume",
                                                  None)
    test: Evaluation | None = entry("the final test; required when a `train` run completed", None)
    val: Evaluation | None = entry("a selection candidate's final validation score", None)
    timing: Timing | None = entry("wall-clock", None, flatten=True)
    memory: Memory | None = entry("memory peaks", None, flatten=True)
    versions: Versions | None = entry("software", None, flatten=True)
    data: Data | None = entry("what the run used of its data", None)
    failure: Failure | None = entry("why the run did not complete", None, flatten=True)
    gradual: dict[str, dict[str, Any]] | None = entry("first occurrences of gradual failure (`cg_residual_above_1`, "
                                                      "`beat_baseline`, `worse_than_baseline`), each with its iteration",
                                                      None)
    config: dict[str, Any] = entry("the full resolved Hydra config", {})

    @model_validator(mode="after")
    def _consistent(self):
        if self.kind == "train" and self.status == "completed":
            if self.test is None:
                raise ValueError("status is completed but the record has no test results")
            if not math.isfinite(self.test.mean):
                raise ValueError("status is completed but test.mean is not finite (a divergence at test)")
        for name in ("test", "val"):
            ev = getattr(self, name)
            if ev is not None and ev.per_task is not None and len(ev.per_task) != ev.n:
                raise ValueError(f"{name}.per_task has {len(ev.per_task)} values but {name}.n is {ev.n}")
            z = ev.zero_predictor if ev is not None else None
            if z is not None and z.per_task is not None and len(z.per_task) != ev.n:
                raise ValueError(f"{name}.zero_predictor.per_task should hold {ev.n} numbers")
        return self

    @derived("test_shots")
    def test_shots(self) -> int:
        """The test's support shots (``test.shots``, else the config's ``eval.shots``, else the training
        shots): the paper's setting is the test one (the MAML sinusoid protocol trains at K=10, tests at K=5)."""
        return self._test_shape("shots")

    @derived("test_query_shots")
    def test_query_shots(self) -> int | None:
        """The test's query shots, by the same rule."""
        return self._test_shape("query_shots")

    def _test_shape(self, key: str):
        from_test = getattr(self.test, key) if self.test is not None else None
        from_config = (self.config.get("eval") or {}).get(key)
        return next((v for v in (from_test, from_config, getattr(self, key)) if v is not None), None)

    @derived("setting")
    def setting(self) -> str:
        """``K=<test shots>`` for sinusoid, else ``<ways>w<test shots>s``."""
        return setting_name(self.dataset, self.ways, self.test_shots)

    @derived("early_stop")
    def declared_early_stop(self) -> str | None:
        """The declared early-stop rule of the config (``eval.early_stop``), whether or not it fired."""
        return (self.config.get("eval") or {}).get("early_stop")

    def row(self) -> dict[str, Any]:
        """The run as one row of the report's table: every column of the record, and those of its test
        (blank unless the run completed: a run that stopped early has no result to compare)."""
        return {**columns(self, Record), **columns(self.test if self.status == "completed" else None, Evaluation)}

    def dump(self) -> dict[str, Any]:
        """The record as ``summary.json`` holds it (NaN stays NaN: a diverged run's metrics are)."""
        return self.model_dump(by_alias=True)


def setting_name(dataset: str, ways: int, shots: int) -> str:
    return f"K={shots}" if dataset == "sinusoid" else f"{ways}w{shots}s"


def _sub_record(annotation) -> type[BaseModel] | None:
    """The model class inside ``X`` or ``X | None``."""
    for t in (annotation, *typing.get_args(annotation)):
        if isinstance(t, type) and issubclass(t, BaseModel):
            return t
    return None


def columns(rec: BaseModel | None, model: type[BaseModel]) -> dict[str, Any]:
    """The columns of ``rec`` (an instance of ``model``, or None: every column blank): its fields with
    a column, its flattened sub-records' and its derived properties."""
    out: dict[str, Any] = {}
    for name, f in model.model_fields.items():
        extra = f.json_schema_extra or {}
        value = getattr(rec, name) if rec is not None else None
        if extra.get("flatten"):
            out.update(columns(value, _sub_record(f.annotation)))
        elif "column" in extra:
            out[extra["column"]] = value if rec is not None else (None if f.is_required() else f.default)
    for attr in vars(model).values():
        if isinstance(attr, property) and hasattr(attr.fget, "column"):
            out[attr.fget.column] = attr.fget(rec) if rec is not None else attr.fget.blank
    return out


def role(family: str | None, status: str, iterations_done: int) -> str:
    """``baseline`` for an algorithm of family ``baseline`` (the pretrained network) or an untrained
    θ₀ (a completed run with no meta-iteration), else ``method``: decided here, once."""
    return "baseline" if family == "baseline" or (status == "completed" and iterations_done == 0) else "method"


def budget_kind(meta_iterations: int, max_train_minutes: float | None, planned: int | None) -> str:
    """``iterations`` without a time cap; with one, ``minutes`` when the iterations are the profile's
    planned ones (``profile_budget.meta_iterations``: the cap is the budget) and ``both`` when the
    run chose its own iteration count (whichever limit comes first)."""
    if max_train_minutes is None:
        return "iterations"
    return "minutes" if meta_iterations == planned else "both"


def reason(e: ValidationError) -> str:
    """The first problem of a record that does not validate, in one line."""
    err = e.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    value, kind = err.get("input"), err["type"]
    if kind == "missing":
        return f"missing field {where!r}"
    if kind == "extra_forbidden":
        return f"unknown field {where!r} (renamed? see reports/SCHEMA.md)"
    if kind == "literal_error":
        return f"{where} {value!r} is not one of {err['ctx']['expected']}"
    if kind == "value_error":
        return str(err["ctx"]["error"])
    want = {"int_type": "int", "float_type": "num", "bool_type": "bool", "string_type": "str", "dict_type": "dict",
            "list_type": "list", "model_type": "dict", "model_attributes_type": "dict"}.get(kind, kind)
    return f"field {where!r} should be {want}, got {type(value).__name__}"


def validate(d: dict) -> Record:
    """``d`` as a :class:`Record`; ValueError with :func:`reason`'s line when it is not one."""
    try:
        return Record.model_validate(d)
    except ValidationError as e:
        raise ValueError(reason(e)) from None


def write(path: Path | str, d: dict) -> dict:
    """Validate ``d`` and write it to ``path`` atomically; returns the record as written."""
    out = validate(d).dump()
    atomic_write_json(path, out)
    return out
