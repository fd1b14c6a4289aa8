"""Short Omniglot 5-way 1-shot training runs through the shared trainer, on the real data.

Each algorithm's own protocol must learn: beat chance (20%) and the untrained network adapted
the same way on the same fixed test tasks (already far above chance). For iMAML that protocol is
the official release's (plain inner steps, then one proximal step; the damped CG system), since
iMAML as the paper writes it does not learn on this network: its regularised inner problem is
indefinite, so its meta-gradient barely correlates with the true one. iMAML as written (GD and
HF) is tested for what it is: the run completes, records a finite CG residual on every
iteration, and its network still beats chance.

The margins sit well below the worst of five training seeds (the comment beside them).
"""
import json
import math

import pytest
from conftest import HAVE_OMNIGLOT, REAL_ROOT, REPO_CACHE

from trainer import compose, train

RELEASE_SYSTEM = ["prox_mode=final_step", "eval.prox_lam=0", "algorithm.hparams.cg_damping=1.0",
                  "algorithm.hparams.lam_damping=10.0"]
SETTINGS = {  # small but real budgets, meta-batch 8
    "maml": ["algorithm=maml", "inner_steps=1"],
    "fomaml": ["algorithm=fomaml", "inner_steps=1"],
    "reptile": ["algorithm=reptile", "inner_steps=5", "inner_lr=0.1"],
    "imaml_release": ["algorithm=imaml", "inner_steps=5", "inner_lr=0.1", *RELEASE_SYSTEM],
    "imaml": ["algorithm=imaml", "inner_steps=5", "inner_lr=0.1"],  # as written
    "imaml_hf": ["algorithm=imaml_hf", "inner_steps=2", "test_inner_steps=2"],  # as written
}
ITERATIONS = {"imaml": 10, "imaml_hf": 5}
# Gain over the untrained network, in accuracy, that each protocol must reach after 60 iterations:
# about 40% of the worst of five training seeds (0-4), measured with these settings on a 2-core
# CPU (gains: MAML 0.072-0.114, FOMAML 0.068-0.116, Reptile 0.076-0.146, iMAML release 0.144-0.214).
MIN_GAIN = {"maml": 0.03, "fomaml": 0.03, "reptile": 0.03, "imaml_release": 0.06}

def base_overrides(name: str) -> list[str]:
    return [f"data.root={REAL_ROOT}", f"data.cache_dir={REPO_CACHE}", "dataset=omniglot", "meta_batch_size=8",
            "eval.num_tasks=100", "eval.val_every=0", "ckpt_every=0", "mem_every=1000000", *SETTINGS[name]]


needs_omniglot = pytest.mark.skipif(not HAVE_OMNIGLOT, reason=f"real Omniglot zips not under {REAL_ROOT}/omniglot")


@pytest.mark.data
@needs_omniglot
@pytest.mark.parametrize("name", sorted(MIN_GAIN))
def test_short_omniglot_training_beats_untrained(tmp_path, name):
    base = base_overrides(name)
    untrained = train(compose(base + ["meta_iterations=0"]), tmp_path / "untrained")["test"]
    s = train(compose(base + [f"meta_iterations={ITERATIONS.get(name, 60)}"]), tmp_path / "trained")
    trained = s["test"]
    assert s["status"] == "completed"
    assert trained["fingerprint"] == untrained["fingerprint"]
    assert trained["mean"] > 0.2 + 3 * trained["ci95"]
    assert trained["mean"] > untrained["mean"] + MIN_GAIN[name], (untrained["mean"], trained["mean"])


@pytest.mark.data
@needs_omniglot
@pytest.mark.parametrize("name", ["imaml", "imaml_hf"])
def test_imaml_as_written_runs_and_records_its_cg_residual(tmp_path, name):
    """No claim that it learns: it completes, every iteration logs a finite CG residual, and the
    trained network still beats chance on the fixed test tasks."""
    n = ITERATIONS[name]
    s = train(compose(base_overrides(name) + [f"meta_iterations={n}"]), tmp_path)
    assert s["status"] == "completed" and s["iterations_done"] == n
    assert s["inner"]["prox_mode"] == "every_step" and s["imaml"]["cg_damping"] == 0.0
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in rows] == list(range(1, n + 1))
    assert all(math.isfinite(r["cg_residual"]) and r["cg_residual"] >= 0 for r in rows)
    assert s["test"]["mean"] > 0.2 + 3 * s["test"]["ci95"]


@pytest.mark.data
@needs_omniglot
def test_hypertorch_experiment_trains_with_plain_inner_steps(tmp_path):
    """experiment=omniglot_5w_imaml_hypertorch: its network, no proximal term in the inner loop
    (in training and at test), λ in the CG system only; a short run completes with a finite CG
    residual on every iteration on the standard test tasks."""
    s = train(compose(["experiment=omniglot_5w_imaml_hypertorch", f"data.root={REAL_ROOT}",
                       f"data.cache_dir={REPO_CACHE}", "meta_iterations=2", "meta_batch_size=2",
                       "eval.num_tasks=10", "eval.val_every=0", "ckpt_every=0", "fidelity_every=0"]), tmp_path)
    assert s["status"] == "completed" and s["iterations_done"] == 2
    assert s["inner"]["prox_mode"] == "none" and s["inner"]["prox_lam"] == 2.0
    assert s["model"] == {"arch": "hypertorch", "head": "mean", "init": "hypertorch"}
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["cg_residual"]) for r in rows)
    assert s["test"]["n"] == 10 and 0.0 <= s["test"]["mean"] <= 1.0
