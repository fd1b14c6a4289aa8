"""The iMAML release switches as configuration: each validated with a one-line error, the
release experiment composes with all of them on (leaky split off), and a run records them."""
from __future__ import annotations

import json

import pytest
from conftest import HAVE_OMNIGLOT, REAL_ROOT, REPO_CACHE

from trainer import ConfigError, compose, train, validate
from trainer.config import eval_prox_lam, inner_config, model_options, outer_options

RELEASE = "experiment=omniglot_5w_imaml_release"


def test_defaults_are_the_papers():
    cfg = compose(["algorithm=imaml", "dataset=omniglot"])
    assert inner_config(cfg)["prox_mode"] == "every_step"
    assert cfg.algorithm.hparams.cg_tol is None
    assert eval_prox_lam(cfg) == 2.0  # eval.prox_lam null: the training λ
    assert outer_options(cfg) == {"lr": 1e-3, "eps": 1e-8}
    assert model_options(cfg) == {"head": "mean", "init": "maml", "arch": "maml"}
    assert cfg.dataset.test_split == "standard" and cfg.dataset.split.val == 100 and cfg.dataset.invert is True
    assert eval_prox_lam(compose(["algorithm=maml"])) == 0.0


def test_release_experiment_composes_with_every_switch(tmp_path):
    cfg = compose([RELEASE, f"data.root={tmp_path}"])
    validate(cfg)  # the data root exists: the dataset checks run too (no data is read)
    assert cfg.experiment_name == "omniglot_5w_imaml_release"
    assert inner_config(cfg) == {"steps": 16, "optimizer": "sgd", "lr": 0.1, "prox_mode": "final_step"}
    assert cfg.test_inner_steps == 16 and cfg.meta_batch_size == 32 and cfg.eval.num_tasks == 600
    assert dict(cfg.algorithm.hparams) == {"lam": 2.0, "cg_steps": 5, "cg_damping": 1.0, "lam_damping": 10.0,
                                           "cg_tol": 1e-10}
    assert eval_prox_lam(cfg) == 0.0
    assert outer_options(cfg) == {"lr": 1e-3, "eps": 1e-3} and cfg.algorithm.outer.optimizer == "adam"
    assert model_options(cfg) == {"head": "flatten", "init": "imaml_release", "arch": "imaml_release"}
    d = cfg.dataset
    assert (d.split_seed, dict(d.split), d.test_split, d.invert) == (123, {"train": 1200, "val": 0, "test": 423},
                                                                     "standard", False)
    assert (d.rotation_mode, list(d.rotate_splits)) == ("per_task", ["train", "val", "test"])
    assert cfg.query_shots == cfg.shots == 1
    validate(compose([RELEASE, f"data.root={tmp_path}", "dataset.test_split=release_leaky"]))


@pytest.mark.parametrize("overrides,message", [
    (["prox_mode=last"], "prox_mode='last' is invalid; choose every_step (the paper), final_step"),
    (["eval.prox_lam=-1"], "eval.prox_lam=-1 is invalid: a finite number >= 0, or null"),
    (["eval.prox_lam=abc"], "eval.prox_lam='abc' is invalid"),
    (["algorithm=imaml", "algorithm.outer.eps=0"], "algorithm.outer.eps=0 is invalid: must be a finite number > 0"),
    (["algorithm=imaml", "algorithm.hparams.cg_tol=-1"], "algorithm.hparams: imaml: cg_tol=-1 must be a finite number >= 0"),
    (["algorithm=imaml_hf", "prox_mode=final_step"], "inner_optim: inner.prox_mode='final_step' needs a gradient optimizer"),
    (["dataset=omniglot", "dataset.init=kaiming"], "dataset: model.init='kaiming'; allowed: ['maml', 'imaml_release', 'hypertorch']"),
    (["dataset=omniglot", "dataset.arch=resnet"], "dataset: model.arch='resnet'; allowed: ['maml', 'imaml_release', 'hypertorch']"),
    (["dataset=miniimagenet", "+dataset.arch=imaml_release"], "dataset: model.arch='imaml_release' is an Omniglot conv4"),
    (["dataset=omniglot", "dataset.test_split=leaky"], "dataset.test_split='leaky'; allowed: ['standard', 'release_leaky']"),
    (["dataset=omniglot", "dataset.split.val=-1", "dataset.split.train=1201"], "must have train and test >= 1, val >= 0"),
    (["dataset=omniglot", "dataset.split.val=0"], "sum to the 1623 Omniglot characters"),
])
def test_bad_release_switches_are_refused_in_one_line(tmp_path, overrides, message):
    with pytest.raises(ConfigError) as err:
        validate(compose([f"data.root={tmp_path}", *overrides]))
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.data
@pytest.mark.skipif(not HAVE_OMNIGLOT, reason=f"real Omniglot zips not under {REAL_ROOT}/omniglot")
@pytest.mark.parametrize("test_split,overlap", [("standard", 0), ("release_leaky", 310)])
def test_release_run_records_its_switches(tmp_path, capfd, test_split, overlap):
    """One meta-iteration of the release experiment (meta-batch 2) and 2 test tasks; validation
    is due every iteration but the release has no validation split, so it is skipped."""
    cfg = compose([RELEASE, f"data.root={REAL_ROOT}", f"data.cache_dir={REPO_CACHE}", "meta_iterations=1",
                   "eval.num_tasks=2", "meta_batch_size=2", "eval.val_every=1", "ckpt_every=0",
                   f"dataset.test_split={test_split}"])
    validate(cfg)
    s = train(cfg, tmp_path / "run")
    assert s["status"] == "completed" and s["experiment"] == "omniglot_5w_imaml_release"
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    for rec in (s, on_disk):
        assert rec["inner"]["prox_mode"] == "final_step" and rec["inner"]["test_prox_lam"] == 0.0
        assert rec["inner"]["prox_lam"] == 2.0 and rec["inner"]["steps"] == rec["inner"]["test_steps"] == 16
        assert rec["imaml"] == {"lam": 2.0, "cg_steps": 5, "cg_damping": 1.0, "lam_damping": 10.0, "cg_tol": 1e-10,
                                "hvp_mode": "revrev"}
        assert rec["outer"]["eps"] == 1e-3 and rec["outer"]["lr"] == 1e-3
        assert rec["model"] == {"head": "flatten", "init": "imaml_release", "arch": "imaml_release"}
        assert rec["data"]["split_sizes"] == {"train": 1200, "val": 0, "test": 423}
        assert (rec["data"]["split_seed"], rec["data"]["test_split"]) == (123, test_split)
        assert rec["data"]["test_train_overlap"] == overlap
        assert rec["config"]["dataset"]["invert"] is False
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and "val_metric" not in rows[0]
    err = capfd.readouterr().err
    assert ("WARNING: dataset.test_split=release_leaky — 310 of the 423 test characters" in err) == (overlap > 0)
