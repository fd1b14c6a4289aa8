"""Benchmark your own method without editing the checkout: an estimator in your own package and an
algorithm config in your own folder (Hydra's search path) train on sinusoid and Omniglot, take part in
the fidelity study, and the report shows them wherever it shows the suite's own algorithms."""
import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import HAVE_OMNIGLOT, REAL_ROOT, REPO_CACHE

ROOT = Path(__file__).resolve().parent.parent

ESTIMATOR = '''
"""A toy method: first-order MAML with its meta-gradient scaled."""
from algorithms.fomaml import fomaml


def scaled_fomaml(loss_fn, params, support, query, inner, scale: float = 0.5, **options):
    grads, info = fomaml(loss_fn, params, support, query, inner, **options)
    return {k: scale * g for k, g in grads.items()}, info
'''

CONFIG = '''
name: scaled_fomaml
estimator: mymethods.scaled:scaled_fomaml
family: first-order
label: Scaled FOMAML
hparams: {scale: 0.5}
fidelity: {hvps_per_step: 0, hvps_per_cg_step: 0, grad_evals_per_step: 1, grad_evals_extra: 1, direction_only: false}
outer: {optimizer: adam, lr: 0.001, eps: 1.0e-8, clip: null, anneal: false}
'''


@pytest.fixture
def mine(tmp_path):
    """A package and a config folder outside the checkout."""
    (tmp_path / "pkg" / "mymethods").mkdir(parents=True)
    (tmp_path / "pkg" / "mymethods" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "mymethods" / "scaled.py").write_text(textwrap.dedent(ESTIMATOR))
    (tmp_path / "conf" / "algorithm").mkdir(parents=True)
    (tmp_path / "conf" / "algorithm" / "scaled_fomaml.yaml").write_text(textwrap.dedent(CONFIG))
    return tmp_path


def run(mine, script, run_dir, *overrides):
    """``python SCRIPT`` from the checkout with the user's package on the path and their config folder searched."""
    env = dict(os.environ, WANDB_MODE="disabled", PYTHONPATH=str(mine / "pkg"))
    p = subprocess.run([sys.executable, script, f"hydra.searchpath=[file://{mine / 'conf'}]", f"hydra.run.dir={run_dir}",
                        *overrides], cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]


def train(mine, run_dir, *overrides):
    run(mine, "train.py", run_dir, "algorithm=scaled_fomaml", *overrides)
    return json.loads((Path(run_dir) / "summary.json").read_text())


def test_an_algorithm_outside_the_checkout_trains_and_is_reported(mine):
    mine_only = ["git", "status", "--porcelain", "--", "configs", "algorithms", "datasets", "studies", "catalog.py", "Makefile"]
    before = subprocess.run(mine_only, cwd=ROOT, capture_output=True, text=True).stdout
    runs = mine / "runs"
    s = train(mine, runs / "sinusoid" / "scaled-s0", "experiment=smoke")
    assert s["status"] == "completed" and s["label"] == "Scaled FOMAML"
    assert s["algorithm"] == "mymethods.scaled:scaled_fomaml" and s["config"]["algorithm"]["hparams"] == {"scale": 0.5}
    train(mine, runs / "sinusoid" / "fomaml-s0", "experiment=smoke", "algorithm=fomaml")
    if HAVE_OMNIGLOT:
        s = train(mine, runs / "omniglot" / "scaled-s0", "dataset=omniglot", f"data.root={REAL_ROOT}",
                  f"data.cache_dir={REPO_CACHE}", "meta_iterations=3", "meta_batch_size=2", "eval.num_tasks=5",
                  "eval.val_every=0")
        assert s["status"] == "completed" and s["dataset"] == "omniglot"
    study = runs / "study" / "fidelity"
    run(mine, "study.py", study, "study=fidelity", "device=cpu", "study.tasks=2", "study.theta_sources=[init]",
        "study.inner_steps=[1,3]", "study.cg_steps=[2]", "study.reference.newton_iters=5")
    with open(study / "fidelity.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    toy = [r for r in rows if r["method"] == "scaled_fomaml"]
    assert {r["label"] for r in toy} == {"Scaled FOMAML"} and {r["inner_steps"] for r in toy} == {"1", "3"}
    assert {r["method"] for r in rows} >= {"imaml", "maml_prox", "fomaml", "reptile"}
    assert all(r["hvps"] == "0" and r["grad_evals"] == str(int(r["inner_steps"]) + 1) for r in toy)
    fo = {(r["task"], r["inner_steps"]): float(r["cosine"]) for r in rows if r["method"] == "fomaml"}
    for r in toy:  # a scaled FOMAML points where FOMAML does
        assert abs(float(r["cosine"]) - fo[r["task"], r["inner_steps"]]) < 1e-9
    out = mine / "report"
    p = subprocess.run([sys.executable, "report.py", "--runs", str(runs), "--out", str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    report = (out / "REPORT.md").read_text()
    assert "Scaled FOMAML" in report and "FOMAML" in report
    inventory = (out / "tables" / "runs.csv").read_text()
    assert inventory.count("Scaled FOMAML") == (2 if HAVE_OMNIGLOT else 1)
    tables = sorted((out / "tables").glob("*.csv"))
    assert any(t.stem.startswith("fidelity") for t in tables)
    for table in tables:  # wherever FOMAML's runs or rows are tabled, the toy's are too
        text = table.read_text()  # (the claims tables and the reproduction table list the papers' rows, not runs)
        if table.stem not in ("claims", "claims_summary", "reproduction") and "FOMAML" in text.replace("Scaled FOMAML", ""):
            assert "Scaled FOMAML" in text, table.name
        if table.stem.startswith("fidelity") and "fomaml" in text.replace("scaled_fomaml", ""):
            assert "scaled_fomaml" in text or "Scaled FOMAML" in text, table.name
    after = subprocess.run(mine_only, cwd=ROOT, capture_output=True, text=True).stdout
    assert after == before  # no config, estimator or dataset of the checkout was written (other tests may write runs/)


def test_a_bad_import_path_is_one_line(mine):
    (mine / "conf" / "algorithm" / "broken.yaml").write_text(CONFIG.replace("scaled.py", "").replace(
        "mymethods.scaled:scaled_fomaml", "mymethods.scaled:nothing").replace("name: scaled_fomaml", "name: broken"))
    env = dict(os.environ, WANDB_MODE="disabled", PYTHONPATH=str(mine / "pkg"))
    p = subprocess.run([sys.executable, "train.py", "algorithm=broken", f"hydra.searchpath=[file://{mine / 'conf'}]",
                        f"hydra.run.dir={mine / 'r'}", "experiment=smoke"], cwd=ROOT, capture_output=True, text=True,
                       env=env, timeout=600)
    assert p.returncode != 0 and "cannot import 'nothing' from 'mymethods.scaled'" in p.stderr
    assert "Traceback" not in p.stderr and not (mine / "r").exists()


SOURCE = '''
"""A toy task source: lines y = a·x + b, a and b ~ U[-1, 1]."""
import torch


class Lines:
    name, metric, model, archive_sha256 = "lines", "mse", "mlp", {}

    def __init__(self, shots, query_shots):
        self.shots, self.query_shots = shots, query_shots

    def sample(self, split, n, generator):
        a, b = (torch.rand(n, 1, 1, generator=generator, dtype=torch.float64) * 2 - 1 for _ in range(2))
        x = torch.rand(n, self.shots + self.query_shots, 1, generator=generator, dtype=torch.float64) * 10 - 5
        y = (a * x + b).float()
        return x[:, :self.shots].float(), y[:, :self.shots], x[:, self.shots:].float(), y[:, self.shots:]

    def fingerprint_fields(self):
        return {"dataset": self.name, "shots": self.shots, "query_shots": self.query_shots}


def build(cfg):
    return Lines(cfg.shots, cfg.query_shots)
'''

DATASET = '''
name: lines
module: mydata.lines
label: Lines
model: mlp
batching: vmap
metric: mse
lower_is_better: true
baseline: zero_predictor
data_files: false
describe: []
budgets:
  cpu: {meta_iterations: 20, eval_tasks: 10, val_every: 10, ckpt_every: 10}
  paper: {meta_iterations: 1000, eval_tasks: 600, val_every: 100, ckpt_every: 100}
ways: 1
shots: 5
query_shots: 5
inner_steps: 1
test_inner_steps: 2
inner_lr: 0.01
meta_batch_size: 4
eval_steps_list: []
'''


def test_a_dataset_outside_the_checkout_trains(mine):
    """A dataset is its module and its config: both outside the checkout, the suite's algorithms train on it."""
    (mine / "pkg" / "mydata").mkdir()
    (mine / "pkg" / "mydata" / "__init__.py").write_text("")
    (mine / "pkg" / "mydata" / "lines.py").write_text(textwrap.dedent(SOURCE))
    (mine / "conf" / "dataset").mkdir()
    (mine / "conf" / "dataset" / "lines.yaml").write_text(textwrap.dedent(DATASET))
    run(mine, "train.py", mine / "r", "dataset=lines", "algorithm=maml", "eval.val_every=0")
    s = json.loads((mine / "r" / "summary.json").read_text())
    assert s["status"] == "completed" and s["dataset"] == "lines" and s["iterations_done"] == 20
    assert s["test"]["metric"] == "mse" and s["test"]["n"] == 10


def test_make_targets_derive_their_algorithms_from_the_configs():
    """`make reproduce` / `make large` job lists come from configs/algorithm/ and configs/reproduce.yaml:
    every algorithm config in every setting, the extras beside them, each line a composable config."""
    import catalog
    from trainer import compose

    algos = catalog.algorithms()
    assert set(algos) == {p.stem for p in (ROOT / "configs" / "algorithm").glob("*.yaml")}
    lines = catalog.jobs("reproduce", [0, 1], {"BUDGET_OMNIGLOT": 4, "BUDGET_SINUSOID": 1})
    names = [ln.split()[0] for ln in lines]
    for setting in ("omniglot_5w1s", "sinusoid"):
        for seed in (0, 1):
            assert {f"{setting}/{a}-s{seed}" for a in algos} <= set(names)
    assert "sinusoid/pretrained-s0" in names and "omniglot_5w1s/imaml_release-s1" in names and len(set(names)) == len(names)
    assert all("max_train_minutes=4 " in ln for ln in lines if ln.startswith("omniglot"))
    for ln in lines[:len(lines) // 2]:
        compose(ln.split()[2:])
    assert not any("max_train_minutes" in ln for ln in catalog.jobs("large", [0], None))
    sweep = catalog.sweep_jobs("omniglot_5w1s", [0], {"BUDGET_OMNIGLOT_SWEEP": 2})
    assert {ln.split()[0].split("/")[1].split("-K")[0] for ln in sweep} == set(algos)
    assert all("max_train_minutes=2 " in ln and "eval.num_tasks=200" in ln for ln in sweep)
    assert not any("eval.num_tasks" in ln for ln in catalog.sweep_jobs("omniglot_5w1s", [0], None))
    compose(sweep[0].split()[2:])
    makefile = (ROOT / "Makefile").read_text()
    assert "ALGOS = $(shell $(PY) catalog.py algorithms)" in makefile and "maml fomaml reptile" not in makefile
    assert "dataset=" not in makefile and "sinusoid omniglot" not in makefile  # settings are YAML
