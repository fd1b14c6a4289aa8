"""The train config's schema: every key a run reads, its type and its allowed values.

OmegaConf checks the types against these dataclasses (an integer key refuses ``'abc'``, ``True``
and ``1.5``); each field's :func:`rule` states its bounds or choices, checked by
:func:`check_fields`. The rules that span several keys are :func:`trainer.config.validate`'s.
The schema checks a composed config; it is not part of the composition, so a run records the
config exactly as composed (a resumed run compares against that record).
"""
import math
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, get_args

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

import algorithms
import checks
from datasets import DTYPES

# The last word of OmegaConf's "could not be converted to …" error → what the key must be.
TYPE_WORDS = {"Integer": "an integer", "Float": "a number", "Boolean": "true or false", "String": "a string"}


def rule(*, lo: float | None = None, strict: bool = False, choices: tuple | dict | None = None, what: str = "",
         note: str = "") -> Any:
    """A field's bounds (``lo``, exclusive when ``strict``) or ``choices`` (a dict: choice → what it
    is); ``what`` replaces the generated "must be …", ``note`` ends the line. No default: a key the
    config lacks stays missing and is not checked."""
    return field(default=MISSING, metadata={"lo": lo, "strict": strict, "choices": choices, "what": what,
                                            "note": note})


def positive(note: str = "") -> Any:
    return rule(lo=0, strict=True, note=note)


def invalid(key: str, value: Any, what: str) -> ValueError:
    """The config error line: ``key=value is invalid: what``."""
    return ValueError(f"{key}={value!r} is invalid: {what}")


def choice(key: str, value: Any, allowed: tuple | dict, note: str = "") -> None:
    """``value`` is one of ``allowed`` (with a dict, each choice is shown with what it is)."""
    if value not in allowed:
        shown = [f"{checks.words([k])} ({v})" for k, v in allowed.items()] if isinstance(allowed, dict) else allowed
        raise ValueError(f"{key}={value!r} is invalid; choose {checks.words(shown)}{note}")


@dataclass
class Outer:
    optimizer: str = rule(choices=("adam", "sgd"))
    lr: float = positive()
    eps: float | None = positive(" (Adam's eps; torch's default 1e-8)")
    clip: float | None = positive(" (or null: no clipping)")
    anneal: bool = MISSING


@dataclass
class Algorithm:
    name: str = MISSING                  # the algorithm config's name (Hydra finds the config, or names the choices)
    estimator: str = MISSING             # a built-in estimator or package.module:function (algorithms.resolve)
    label: str = MISSING
    hparams: dict[str, Any] = field(default_factory=dict)  # the estimator checks its own (algorithms.validate)
    outer: Outer = field(default_factory=Outer)


@dataclass
class Dataset:
    """The fields every dataset config declares for the rest of the suite (documented in
    ``configs/dataset/*.yaml``); a dataset's own options are its module's to check (``validate(cfg)``)."""
    name: str = MISSING
    module: str = MISSING                # the module with build(cfg) (datasets.build imports it)
    label: str = MISSING
    model: str = MISSING
    batching: str = rule(choices=algorithms.BATCHING)
    metric: str = rule(choices={"mse": "regression, lower is better", "accuracy": "N-way classification"})
    lower_is_better: bool = MISSING
    baseline: str = rule(choices={"zero_predictor": "the MSE of predicting 0", "chance": "1/ways"})
    data_files: bool = MISSING
    describe: list[str] = field(default_factory=list)


REQUIRED = {"dataset": ("module", "label", "model", "batching", "metric", "data_files")}  # what the trainer reads


@dataclass
class Eval:
    num_tasks: int = rule(lo=1)
    test_seed: int = rule(lo=0)
    val_seed: int = rule(lo=0)
    val_every: int = rule(lo=0, note=" (0: never)")
    val_every_minutes: float | None = positive(" (or null: by iterations only)")
    val_tasks: int = rule(lo=1)
    shots: int | None = rule(lo=1, note=" (or null: shots)")
    query_shots: int | None = rule(lo=1, note=" (or null: query_shots)")
    steps_list: list[int] | None = rule(lo=0)
    bn_mode: str = rule(choices=("transductive", "per_example"))
    inner_state: str = rule(choices={"fresh": "a zero inner optimizer state per task",
                                     "training": "the carried training state, left unchanged; needs inner_state=carried"})
    prox_lam: float | None = rule(lo=0, what="a finite number >= 0, or null for the training λ")
    chunk: int = rule(lo=1)
    final: str = rule(choices={"test": "the fixed test tasks", "val": "validation tasks only, for selection"})
    early_stop: str | None = rule(choices={None: "the full budget", "plateau": "the declared rule, docs/campaign.md"})


@dataclass
class Source:
    kind: str = rule(choices={"published": "a paper's or reference code's protocol",
                              "selected": "chosen on validation tasks: name its selection record",
                              "stated": "choices stated without either"})
    reference: str | None = None
    record: str | None = None


@dataclass
class Train:
    algorithm: Algorithm = field(default_factory=Algorithm)
    source: Source = field(default_factory=Source)             # the protocol's origin (trainer/record.py Source)
    dataset: Dataset = field(default_factory=Dataset)          # its own options: its module's validate(cfg)
    inner_optim: dict[str, Any] = field(default_factory=dict)  # checked as the InnerConfig it becomes
    ways: int | None = MISSING                                # >= 2 for classification: validate()
    shots: int = rule(lo=1)
    query_shots: int = rule(lo=1)
    inner_steps: int = rule(lo=0)
    test_inner_steps: int = rule(lo=0)
    inner_lr: float = positive()
    inner_batch: int | None = rule(lo=1, note=" (or null: the whole support set in every inner step)")
    prox_mode: str = rule(choices=algorithms.PROX_MODES)
    inner_state: str = rule(choices={"fresh": "a zero inner optimizer state per task",
                                     "carried": "the state the previous task left, Reptile's reference code"})
    meta_batch_size: int = rule(lo=1)
    meta_iterations: int = rule(lo=0)
    stop_at: int | None = rule(lo=1, note=" (or null: train to meta_iterations)")
    max_train_minutes: float | None = positive(" (or null: no time limit)")
    seed: int = rule(lo=0)
    dtype: str = rule(choices=tuple(DTYPES))
    device: str = rule(choices=("auto", "cpu", "cuda"))
    batching: str = rule(choices=("auto", *algorithms.BATCHING))
    diagnostics: Any = MISSING             # true/false or every N-th iteration: validate()
    fidelity_every: int = rule(lo=0, note=" (0: never)")
    resume: bool = MISSING
    log_every: int = rule(lo=1)
    ckpt_every: int = rule(lo=0, note=" (0: never)")
    mem_every: int = rule(lo=0, note=" (0: never)")
    mem_max_iter_s: float = positive()
    eval: Eval = field(default_factory=Eval)


def _is_int(t) -> bool:
    """``int``, ``Optional[int]``, ``list[int]``, ``Optional[list[int]]``."""
    return t is int or any(_is_int(a) for a in get_args(t))


def _picked(schema, cfg: DictConfig, prefix: str = "") -> dict:
    """The keys of ``cfg`` the schema declares, resolved (a key that cannot be resolved is named)."""
    out = {}
    for f in fields(schema):
        if f.name not in cfg:
            continue
        try:
            v = OmegaConf.select(cfg, f.name, throw_on_missing=True)
        except OmegaConfBaseException as e:
            raise ValueError(f"{prefix}{f.name}: cannot be resolved ({str(e).splitlines()[0]})") from None
        if is_dataclass(f.type) and isinstance(v, DictConfig):
            v = _picked(f.type, v, f"{prefix}{f.name}.")
        elif isinstance(v, DictConfig) or OmegaConf.is_list(v):
            v = OmegaConf.to_container(v, resolve=True)
        out[f.name] = v
    return out


def typed(cfg: DictConfig) -> DictConfig:
    """``cfg``'s declared keys in the schema's types; ValueError naming the first key of a wrong type."""
    try:
        return OmegaConf.merge(OmegaConf.structured(Train), _picked(Train, cfg))
    except OmegaConfBaseException as e:
        line = str(e).splitlines()[0]
        want = TYPE_WORDS.get(line.rsplit(" ", 1)[-1], "of another type")
        raise invalid(e.full_key, getattr(e, "value", None), f"must be {want}") from None


def check_fields(node: DictConfig, raw: dict, schema=Train, prefix: str = "") -> None:
    """Every declared field's rule, in declaration order (the first problem is raised); ``node``
    is :func:`typed`'s, ``raw`` the values as written (which the error line shows)."""
    for f in fields(schema):
        if OmegaConf.is_missing(node, f.name):
            continue
        v, key, m, written = node[f.name], prefix + f.name, f.metadata, raw.get(f.name)
        if is_dataclass(f.type):
            check_fields(v, written, f.type, key + ".")
        elif m.get("choices") is not None:
            choice(key, written, m["choices"], m["note"])
        elif m.get("lo") is not None and v is not None:
            lo, many = m["lo"], OmegaConf.is_list(v)
            if not all(math.isfinite(x) and (x > lo if m["strict"] else x >= lo) for x in (v if many else [v])):
                what = "a list of integers" if many else "an integer" if _is_int(f.type) else "a finite number"
                raise invalid(key, written, m["what"] or f"must be {what} {'>' if m['strict'] else '>='} {lo:g}{m['note']}")


def check(cfg: DictConfig) -> None:
    """The keys the suite reads are present (:data:`REQUIRED`), then types and per-key rules of ``cfg``;
    ValueError on the first problem."""
    for part, keys in REQUIRED.items():
        missing = [k for k in keys if cfg[part].get(k) is None]
        if missing:
            raise ValueError(f"{part} config {cfg[part].get('name')!r} lacks {missing}: every {part} config "
                             f"declares them (see configs/{part}/sinusoid.yaml)")
    check_fields(typed(cfg), _picked(Train, cfg))
