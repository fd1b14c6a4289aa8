"""Config composition and validation, before any work and before any output folder exists.

Every check raises :class:`ConfigError` with one line naming the key, the value and what is
allowed; ``train.py`` prints it and exits with status 2.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

import algorithms
from datasets import DATASETS, DTYPES

from .evaluate import PLATEAU_MIN_TASKS

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
# The names a config may use, each from its one home: the algorithm configs (estimators and
# variants such as imaml_hf, in the estimators' registry order), the inner optimizers and
# batching modes of algorithms/, the datasets and dtypes of datasets/.
ALGORITHMS = tuple(sorted((p.stem for p in (CONFIG_DIR / "algorithm").glob("*.yaml")),
                          key=lambda n: (list(algorithms.ESTIMATORS).index(n.split("_")[0]), n)))
OPTIMIZERS = algorithms.OPTIMIZERS
BATCHING = ("auto", *algorithms.BATCHING)
OUTER = ("adam", "sgd")
MODELS = {"sinusoid": "mlp", "omniglot": "conv4_omniglot", "miniimagenet": "conv4_miniimagenet"}
BASELINES = ("pretrained",)  # trained by an estimator with no inner loop (experiment=sinusoid_pretrained)


class ConfigError(ValueError):
    pass


def compose(overrides: list[str] | None = None, config_name: str = "train",
            return_hydra_config: bool = False) -> DictConfig:
    """The resolved config ``python train.py <overrides>`` (``config_name="study"``: ``python
    study.py``) would run, by Hydra's compose API. Inside a Hydra app (``study.py`` composing
    its training runs) Hydra is already initialised on the same ``configs/`` folder and is
    used in place: re-initialising it would reset the app's global state."""
    from hydra import compose as hcompose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    kw = {"config_name": config_name, "overrides": [str(o) for o in overrides or []],
          "return_hydra_config": return_hydra_config}
    if GlobalHydra.instance().is_initialized():
        return hcompose(**kw)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return hcompose(**kw)


def _num(cfg, key):
    try:
        v = OmegaConf.select(cfg, key, throw_on_missing=True)
    except Exception as e:
        raise ConfigError(f"{key}: cannot be resolved ({e})") from None
    return v


def _int(cfg, key, lo, what):
    v = _num(cfg, key)
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ConfigError(f"{key}={v!r} is invalid: {what}")
    return v


def _pos(cfg, key, what="must be a finite number > 0"):
    v = _num(cfg, key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise ConfigError(f"{key}={v!r} is invalid: {what}")
    return v


def validate(cfg: DictConfig) -> None:
    """Check the resolved config; raise ConfigError on the first problem."""
    algo = _num(cfg, "algorithm.name")
    if algo not in ALGORITHMS + BASELINES:
        raise ConfigError(f"algorithm={algo!r} is unknown; choose one of {list(ALGORITHMS)}")
    if algo in BASELINES and (cfg.inner_steps != 0 or cfg.algorithm.estimator != "fomaml"):
        raise ConfigError(f"algorithm.name={algo!r} is the plain-regression baseline: it needs "
                          "algorithm.estimator=fomaml and inner_steps=0 (see experiment=sinusoid_pretrained)")
    ds = _num(cfg, "dataset.name")
    if ds not in DATASETS:
        raise ConfigError(f"dataset={ds!r} is unknown; choose one of {list(DATASETS)}")
    opt = _num(cfg, "inner_optim.name")
    if opt not in OPTIMIZERS:
        raise ConfigError(f"inner_optim={opt!r} is unknown; choose one of {list(OPTIMIZERS)}")
    if opt == "hf" and cfg.algorithm.estimator != "imaml":
        raise ConfigError(f"inner_optim=hf is only for iMAML (algorithm=imaml or imaml_hf), not algorithm={algo}")
    if cfg.algorithm.outer.optimizer not in OUTER:
        raise ConfigError(f"algorithm.outer.optimizer={cfg.algorithm.outer.optimizer!r}; choose one of {list(OUTER)}")
    _pos(cfg, "algorithm.outer.lr")
    if cfg.algorithm.outer.optimizer == "adam" and cfg.algorithm.outer.get("eps") is not None:
        _pos(cfg, "algorithm.outer.eps", "must be a finite number > 0 (Adam's eps; torch's default 1e-8)")
    mode = cfg.get("prox_mode", "every_step")
    if mode not in algorithms.PROX_MODES:
        raise ConfigError(f"prox_mode={mode!r} is invalid; choose every_step (the paper), final_step "
                          "(the official iMAML release) or none (hypertorch's example)")
    _int(cfg, "inner_steps", 0, "must be an integer >= 0")
    _int(cfg, "test_inner_steps", 0, "must be an integer >= 0")
    _pos(cfg, "inner_lr")
    if cfg.get("inner_batch") is not None:
        _int(cfg, "inner_batch", 1, "must be an integer >= 1 (or null: the whole support set in every inner step)")
    hparams = OmegaConf.to_container(cfg.algorithm.hparams, resolve=True) or {}
    try:
        algorithms.validate(cfg.algorithm.estimator, inner_config(cfg), hparams)
    except ValueError as e:  # "inner.…" names an inner_optim setting; the rest are algorithm.hparams
        raise ConfigError(f"{'inner_optim' if str(e).startswith('inner') else 'algorithm.hparams'}: {e}") from None
    _int(cfg, "meta_batch_size", 1, "must be an integer >= 1")
    _int(cfg, "meta_iterations", 0, "must be an integer >= 0")
    m = cfg.get("max_train_minutes")
    if m is not None and (isinstance(m, bool) or not isinstance(m, (int, float)) or not m > 0):
        raise ConfigError(f"max_train_minutes={m!r} must be a number > 0 (or null: no time limit)")
    if ds != "sinusoid":
        _int(cfg, "ways", 2, "must be an integer >= 2 (N-way classification)")
    _int(cfg, "shots", 1, "must be an integer >= 1")
    _int(cfg, "query_shots", 1, "must be an integer >= 1")
    _int(cfg, "seed", 0, "must be an integer >= 0")
    _int(cfg, "fidelity_every", 0, "must be an integer >= 0 (0: never)")
    if not isinstance(cfg.diagnostics, (bool, int)) or cfg.diagnostics < 0:
        raise ConfigError(f"diagnostics={cfg.diagnostics!r} is invalid: every N-th iteration (an integer >= 0) or true/false")
    if cfg.dtype not in DTYPES:
        raise ConfigError(f"dtype={cfg.dtype!r} is invalid; choose one of {list(DTYPES)}")
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device={cfg.device!r} is invalid; choose auto, cpu or cuda")
    resolve_device(cfg.device)
    if cfg.batching not in BATCHING:
        raise ConfigError(f"batching={cfg.batching!r} is invalid; choose one of {list(BATCHING)}")
    if cfg.batching == "compile":
        try:
            algorithms.check_batching("compile", hparams)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    import models
    try:
        models.check_options(MODELS[ds], **model_options(cfg))
    except ValueError as e:
        raise ConfigError(f"dataset: {e}") from None
    _validate_eval(cfg)
    if cfg.logger.name not in ("csv", "wandb"):
        raise ConfigError(f"logger={cfg.logger.name!r} is unknown; choose csv or wandb")
    if ds != "sinusoid":
        _validate_data(cfg, ds)


def _validate_eval(cfg: DictConfig) -> None:
    """How a run validates and tests: test-time λ, step counts, task counts, protocols."""
    lam = cfg.eval.get("prox_lam")
    if lam is not None and (isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam)
                            or lam < 0):
        raise ConfigError(f"eval.prox_lam={lam!r} is invalid: a finite number >= 0, or null for the training λ")
    for k in cfg.eval.steps_list or []:
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ConfigError(f"eval.steps_list contains {k!r}: step counts must be integers >= 0")
    vm = cfg.eval.get("val_every_minutes")
    if vm is not None and (isinstance(vm, bool) or not isinstance(vm, (int, float)) or not vm > 0):
        raise ConfigError(f"eval.val_every_minutes={vm!r} must be a number > 0 (or null: by iterations only)")
    _int(cfg, "eval.num_tasks", 1, "must be an integer >= 1")
    if cfg.eval.bn_mode not in ("transductive", "per_example"):
        raise ConfigError(f"eval.bn_mode={cfg.eval.bn_mode!r} is invalid; choose transductive or per_example")
    stop = cfg.eval.get("early_stop")
    if stop not in (None, "plateau"):
        raise ConfigError(f"eval.early_stop={stop!r} is invalid; choose null (the full budget) or plateau")
    if stop and not (cfg.eval.val_every and cfg.eval.val_tasks >= PLATEAU_MIN_TASKS):
        raise ConfigError(f"eval.early_stop=plateau needs eval.val_every > 0 and eval.val_tasks >= {PLATEAU_MIN_TASKS} "
                          f"(got {cfg.eval.val_every}, {cfg.eval.val_tasks}): the declared rule")
    if cfg.eval.final not in ("test", "val"):
        raise ConfigError(f"eval.final={cfg.eval.final!r} is invalid; choose test (the fixed test tasks) or val "
                          "(validation tasks only, for selection)")


def _validate_data(cfg: DictConfig, ds: str) -> None:
    """A real dataset's root exists and holds what its protocol needs (``datasets.validate``)."""
    from datasets.store import data_root

    root = data_root(cfg.data.root)
    if not root.exists():
        raise ConfigError(f"data.root={str(root)!r} does not exist; point data.root (or $METAGRAD_DATA) "
                          f"at the folder holding the {ds} data (see README: Data)")
    import datasets
    check = getattr(datasets, "validate", None)
    if check is not None:
        try:
            check(cfg)
        except ValueError as e:
            raise ConfigError(str(e)) from None


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when available, else the CPU; ``cuda`` is refused where there is none."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but CUDA is not available here; use device=cpu or device=auto")
    return torch.device(name)


def inner_config(cfg, steps: int | None = None) -> dict:
    """The :class:`algorithms.InnerConfig` fields this run uses."""
    o = cfg.inner_optim
    d = {"steps": cfg.inner_steps if steps is None else steps, "optimizer": o.name, "lr": float(cfg.inner_lr),
         "prox_mode": cfg.get("prox_mode", "every_step")}
    if cfg.get("inner_batch") is not None:
        d["batch"] = cfg.inner_batch
    if o.name == "momentum":
        d.update(momentum=float(o.momentum), nesterov=bool(o.nesterov))
    elif o.name == "adam":
        d.update(betas=tuple(float(b) for b in o.betas), eps=float(o.eps))
    elif o.name == "hf":
        d.update(hf_cg_steps=int(o.hf_cg_steps), hf_ls_steps=int(o.hf_ls_steps), lr=float(o.ls_init_step))
    return d


def eval_prox_lam(cfg) -> float:
    """The proximal weight of test-time adaptation: ``eval.prox_lam``, or null → the training
    one: the algorithm's ``lam`` hyperparameter (iMAML's λ, Rajeswaran et al. 2019 Eq. 3), 0 for
    an algorithm without one. The iMAML release tests with 0 (``examples/measure_accuracy.py --lam 0.0``)."""
    lam = cfg.eval.get("prox_lam")
    if lam is not None:
        return float(lam)
    return algorithms.proximal_weight(cfg.algorithm.estimator, cfg.algorithm.hparams)


def outer_options(cfg) -> dict:
    """Keyword arguments of the outer optimizer: ``lr``, and Adam's ``eps`` (torch's 1e-8 by
    default; the iMAML release's ``torch.optim.Adam(..., eps=1e-3)``)."""
    o = cfg.algorithm.outer
    if o.optimizer == "adam":
        return {"lr": float(o.lr), "eps": float(o.get("eps", 1e-8))}
    return {"lr": float(o.lr)}


def model_options(cfg) -> dict:
    """``head`` / ``init`` / ``arch`` for :func:`models.build`, from the dataset config."""
    d = cfg.dataset
    return {"head": d.get("head", "mean"), "init": d.get("init", "maml"), "arch": d.get("arch", "maml")}
