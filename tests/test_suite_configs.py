"""Every config combination composes and validates (lightning-hydra-template style)."""
import itertools
from pathlib import Path

import pytest
from conftest import REAL_ROOT

from trainer import ConfigError, compose, validate

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
ALGOS = sorted(p.stem for p in (CONFIGS / "algorithm").glob("*.yaml"))
DATASETS = sorted(p.stem for p in (CONFIGS / "dataset").glob("*.yaml"))
OPTIMS = sorted(p.stem for p in (CONFIGS / "inner_optim").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))
PROFILES = sorted(p.stem for p in (CONFIGS / "profile").glob("*.yaml"))


def test_groups_exist():
    assert {"maml", "fomaml", "reptile", "imaml", "imaml_hf"} <= set(ALGOS)
    assert {"sinusoid", "omniglot", "miniimagenet"} <= set(DATASETS)
    assert {"sgd", "momentum", "adam"} <= set(OPTIMS)
    assert {"cpu", "paper"} <= set(PROFILES)
    assert "smoke" in EXPERIMENTS


@pytest.mark.parametrize("algo,dataset,profile", list(itertools.product(ALGOS, DATASETS, PROFILES)))
def test_compose_algorithm_dataset_profile(algo, dataset, profile):
    cfg = compose([f"algorithm={algo}", f"dataset={dataset}", f"profile={profile}"])
    assert cfg.algorithm.name == algo and cfg.dataset.name == dataset and cfg.profile == profile
    assert cfg.meta_iterations > 0 and cfg.eval.num_tasks > 0
    if dataset == "sinusoid":
        validate(cfg)  # real-data datasets are validated in their own tests (data root)
    if algo == "imaml_hf":
        assert cfg.inner_optim.name == "hf"


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_compose_and_validate_experiment(experiment):
    overrides = [f"experiment={experiment}"]
    if REAL_ROOT.is_dir():
        overrides.append(f"data.root={REAL_ROOT}")
    cfg = compose(overrides)
    assert cfg.get("experiment_name") == experiment
    if cfg.dataset.name == "sinusoid" or REAL_ROOT.is_dir():
        validate(cfg)  # without the real data, only sinusoid can be validated (the data root is checked)


ALGOS_A = ("maml", "fomaml", "reptile", "imaml", "imaml_hf")


@pytest.mark.parametrize("prefix", ["omniglot_5w", "omniglot_20w", "miniimagenet", "sinusoid"])
def test_published_protocols_share_their_test_tasks(prefix):
    """Comparison a pairs the algorithms task by task: every protocol of one setting must be tested on
    the same tasks (ways, test shots and queries, seed, count), whatever its training protocol."""
    def test_tasks(c):
        return (c.ways, c.eval.shots or c.shots, c.eval.query_shots or c.query_shots, c.eval.test_seed,
                c.eval.num_tasks)
    cfgs = {a: compose([f"experiment={prefix}_{a}"]) for a in ALGOS_A}
    assert {a: c.algorithm.name for a, c in cfgs.items()} == {a: a for a in ALGOS_A}
    assert all(c.get("protocol") for c in cfgs.values()), "every published-protocol experiment names its source"
    assert len({test_tasks(c) for c in cfgs.values()}) == 1, {a: test_tasks(c) for a, c in cfgs.items()}


@pytest.mark.parametrize("optim", [o for o in OPTIMS if o != "hf"])
def test_inner_optimizers_compose_for_every_gradient_algorithm(optim):
    for algo in ("maml", "fomaml", "reptile", "imaml"):
        validate(compose([f"algorithm={algo}", f"inner_optim={optim}"]))


def test_hf_refused_outside_imaml():
    with pytest.raises(ConfigError, match="inner_optim=hf is only for iMAML"):
        validate(compose(["algorithm=maml", "inner_optim=hf"]))


def test_paper_profile_budgets():
    assert compose(["profile=paper"]).meta_iterations == 70000
    assert compose(["profile=paper", "dataset=omniglot"]).meta_iterations == 60000


def test_outer_optimizer_is_explicit_per_algorithm():
    for algo, (opt, lr, anneal) in {"maml": ("adam", 1e-3, False), "imaml": ("adam", 1e-3, False),
                                    "fomaml": ("adam", 1e-3, False), "reptile": ("sgd", 1.0, True)}.items():
        o = compose([f"algorithm={algo}"]).algorithm.outer
        assert (o.optimizer, o.lr, o.anneal) == (opt, lr, anneal)


def test_a_config_is_checked_once_not_per_iteration(tmp_path, monkeypatch):
    """The trainer checks its config before the run; the meta-iterations call the estimators unchecked."""
    import algorithms
    import trainer
    from algorithms import inner

    cfg = compose(["experiment=smoke", "algorithm=imaml", "meta_iterations=6", "eval.num_tasks=2", "eval.val_every=0",
                   "device=cpu"])
    validate(cfg)
    calls = []
    checked = algorithms.validate
    monkeypatch.setattr(algorithms, "validate", lambda *a, **k: calls.append("algorithms.validate") or checked(*a, **k))
    real = inner.InnerConfig.validate
    monkeypatch.setattr(inner.InnerConfig, "validate", lambda self: calls.append("InnerConfig.validate") or real(self))
    summary = trainer.train(cfg, tmp_path / "run")
    assert summary["status"] == "completed" and summary["iterations_done"] == 6
    assert len(calls) <= 2, calls  # the run's own InnerConfigs (training, test), made once each
