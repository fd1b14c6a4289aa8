"""Config composition and validation, before any work and before any output folder exists.

Every check raises :class:`ConfigError` with one line naming the key, the value and what is
allowed; ``train.py`` prints it and exits with status 2.
"""
from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

import algorithms
import catalog
import checks

from . import schema
from .evaluate import PLATEAU_MIN_TASKS

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
# The names a config may use, each from its one home: the algorithm families (catalog.py), the inner
# optimizers of algorithms/; the algorithms and datasets are the configs Hydra finds.
FAMILIES = catalog.FAMILIES
OPTIMIZERS = algorithms.OPTIMIZERS


class ConfigError(ValueError):
    pass


def compose(overrides: list[str] | None = None, config_name: str = "train",
            return_hydra_config: bool = False) -> DictConfig:
    """The resolved config ``python train.py <overrides>`` (``config_name="study"``: ``python
    study.py``) would run, by Hydra's compose API. Inside a Hydra app (``study.py`` composing
    its training runs) Hydra is already initialised on the same ``configs/`` folder and is
    used in place: re-initialising it would reset the app's global state."""
    from hydra import compose as hcompose

    kw = {"config_name": config_name, "overrides": [*_searchpath(), *(str(o) for o in overrides or [])],
          "return_hydra_config": return_hydra_config}
    return _in_hydra(lambda: hcompose(**kw))


def _searchpath() -> list[str]:
    """The running app's ``hydra.searchpath`` as an override: Hydra applies a search path per load,
    so a config composed inside the app (a study's training runs, the algorithms it lists) needs it again."""
    from hydra.core.hydra_config import HydraConfig

    paths = list(HydraConfig.get().searchpath) if HydraConfig.initialized() else []
    return [f"hydra.searchpath=[{','.join(paths)}]"] if paths else []


def _in_hydra(fn):
    """``fn()`` with Hydra initialised: the running app's (its search path included), else on ``configs/``."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return fn()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return fn()


def algorithm_names() -> list[str]:
    """Every algorithm config Hydra finds: the checkout's and those a search path adds
    (``hydra.searchpath=[file://…]``), by family (:data:`FAMILIES`), then name."""
    from hydra.core.global_hydra import GlobalHydra

    names = _in_hydra(lambda: GlobalHydra.instance().config_loader().get_group_options(
        "algorithm", config_name="train", overrides=_searchpath()))
    fams = {n: algorithm_config(n).get("family") for n in names}
    return sorted(names, key=lambda n: (FAMILIES.index(fams[n]) if fams[n] in FAMILIES else len(FAMILIES), n))


def algorithm_config(name: str) -> DictConfig:
    """The composed ``algorithm`` node of ``algorithm=NAME`` (a variant's inherited fields included)."""
    return compose([f"algorithm={name}"]).algorithm


def inner_optimizers(algo: DictConfig) -> tuple[str, ...]:
    """The inner optimizers an algorithm config accepts (``inner_optimizers``; default: the gradient ones)."""
    return tuple(algo.get("inner_optimizers") or algorithms.GRADIENT_OPTIMIZERS)


def _checked(fn, *args, prefix: str = "", **kwargs) -> None:
    """``fn(*args, **kwargs)``, its ValueError as one ConfigError line (``prefix``: the config part it names)."""
    try:
        fn(*args, **kwargs)
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(f"{prefix}{e}") from None


def validate(cfg: DictConfig) -> None:
    """Check the resolved config: every key's type and rule (:mod:`trainer.schema`), then the
    rules that span keys; raise ConfigError on the first problem."""
    algo, ds = cfg.algorithm.get("name"), cfg.dataset.get("name")
    _checked(schema.choice, "inner_optim", cfg.inner_optim.get("name"), OPTIMIZERS)
    _checked(schema.check, cfg)
    _checked(schema.choice, "algorithm.family", cfg.algorithm.get("family"), FAMILIES)
    if cfg.algorithm.get("family") == "baseline" and (cfg.inner_steps != 0 or cfg.algorithm.estimator != "fomaml"):
        raise ConfigError(f"algorithm.name={algo!r} is the plain-regression baseline: it needs "
                          "algorithm.estimator=fomaml and inner_steps=0 (see experiment=sinusoid_pretrained)")
    opt = cfg.inner_optim.name
    if opt not in inner_optimizers(cfg.algorithm):
        able = [n for n in catalog.algorithms() if opt in (catalog.algorithm(n)["inner_optimizers"] or ())]
        raise ConfigError(f"inner_optim={opt} is only for {checks.words(catalog.algorithm(n)['label'] for n in able)} "
                          f"(algorithm={' or '.join(able)}), not algorithm={algo}; its inner optimizers: "
                          f"{list(inner_optimizers(cfg.algorithm))} (algorithm.inner_optimizers)")
    if cfg.dataset.metric == "accuracy" and (cfg.ways is None or cfg.ways < 2):
        raise ConfigError(str(schema.invalid("ways", cfg.ways, "must be an integer >= 2 (N-way classification)")))
    d = cfg.diagnostics
    if not isinstance(d, bool) and not (isinstance(d, int) and d >= 0):
        raise ConfigError(str(schema.invalid("diagnostics", d, "every N-th iteration (an integer >= 0) or true/false")))
    hparams = OmegaConf.to_container(cfg.algorithm.hparams, resolve=True) or {}
    # "inner.…" names an inner_optim setting; the rest are algorithm.hparams
    try:
        algorithms.validate(cfg.algorithm.estimator, inner_config(cfg), hparams)
    except ValueError as e:
        where = ("" if str(e).startswith("algorithm") else "inner_optim: " if str(e).startswith("inner")
                 else "algorithm.hparams: ")
        raise ConfigError(f"{where}{e}") from None
    src = cfg.get("source") or {}
    if src.get("kind") == "selected" and not src.get("record"):
        raise ConfigError("source.kind=selected names no selection record: set source.record "
                          "(records/selection-cpu/<setting>/<algorithm>) or another source.kind")
    _validate_inner_state(cfg)
    resolve_device(cfg.device)
    if cfg.batching == "compile":
        _checked(algorithms.check_batching, "compile", hparams)
    import models
    _checked(models.check_options, cfg.dataset.model, prefix="dataset: ", **model_options(cfg))
    stop = cfg.eval.get("early_stop")
    if stop and not (cfg.eval.val_every and cfg.eval.val_tasks >= PLATEAU_MIN_TASKS):
        raise ConfigError(f"eval.early_stop=plateau needs eval.val_every > 0 and eval.val_tasks >= {PLATEAU_MIN_TASKS} "
                          f"(got {cfg.eval.val_every}, {cfg.eval.val_tasks}): the declared rule")
    _checked(schema.choice, "logger", cfg.logger.get("name"), ("csv", "wandb"))
    if cfg.dataset.data_files:
        _validate_data(cfg, ds)
    import datasets
    _checked(datasets.validate, cfg)  # the dataset's own options (after its root: some look at the data)


def _validate_inner_state(cfg: DictConfig) -> None:
    """``inner_state=carried`` runs the tasks of a meta-batch one after another from the state the
    previous one left: an estimator that takes a carried state, a gradient inner optimizer, the
    per-task loop; ``eval.inner_state=training`` needs that carried state."""
    carried, est = cfg.get("inner_state", "fresh") == "carried", cfg.algorithm.estimator
    if carried and not algorithms.carries_state(est):
        able = [n for n in algorithms.ESTIMATORS if algorithms.carries_state(n)]
        raise ConfigError(f"inner_state=carried is not available for algorithm.estimator={est!r} (only {able}); "
                          "use inner_state=fresh")
    if carried and cfg.batching in ("vmap", "compile"):
        raise ConfigError(f"inner_state=carried runs the tasks of a meta-batch in sequence: batching={cfg.batching!r} "
                          "cannot; use batching=loop or auto")
    if cfg.eval.get("inner_state", "fresh") == "training" and not carried:
        raise ConfigError("eval.inner_state=training adapts test tasks from the carried training state: it needs "
                          "inner_state=carried (or set eval.inner_state=fresh)")


def _validate_data(cfg: DictConfig, ds: str) -> None:
    """A real dataset's data root exists."""
    from datasets.store import data_root

    root = data_root(cfg.data.root)
    if not root.exists():
        raise ConfigError(f"data.root={str(root)!r} does not exist; point data.root (or $METAGRAD_DATA) "
                          f"at the folder holding the {ds} data (see README: Data)")


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
