# metagrad-bench — `make help` lists the targets.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?= cpu
SEEDS ?= 0
# Real data: ../shared/data beside the checkout when it exists, else ./data (override: make … DATA=/path)
DATA ?= $(shell if [ -d ../shared/data ]; then realpath ../shared/data; else echo data; fi)
export METAGRAD_DATA ?= $(DATA)
export KINETO_LOG_LEVEL ?= 4
ALGOS := maml,fomaml,reptile,imaml,imaml_hf
STUDIES := fidelity precision assumptions cost failures
# The Omniglot inner-step sweep is 30 runs: shortened at the cpu profile (empty it for the profile budget)
OMNIGLOT_SWEEP ?= $(if $(filter cpu,$(PROFILE)),meta_iterations=100 eval.num_tasks=200,)
OUT := runs/reproduce/$(PROFILE)

.PHONY: help setup reproduce test test-all sweep report bench bench-tta gpu-check clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'
	@echo "  variables: PROFILE=cpu|paper  SEEDS=0,1,2  DATA=$(DATA)"

setup: $(VENV)/.setup-done  ## create .venv with all dependencies (learn2learn rebuilt for Python 3.11)
$(VENV)/.setup-done: pyproject.toml tools/setup.sh
	VENV=$(VENV) bash tools/setup.sh

reproduce: setup  ## the whole reproduction at PROFILE (cpu: ≈ 18 min on 2 cores), then the report
	rm -rf $(OUT)
	$(PY) train.py -m algorithm=$(ALGOS) dataset=sinusoid profile=$(PROFILE) seed=$(SEEDS) \
	    hydra.sweep.dir=$(OUT)/sinusoid
	$(PY) train.py -m algorithm=$(ALGOS) dataset=omniglot ways=5 shots=1 profile=$(PROFILE) seed=$(SEEDS) \
	    hydra.sweep.dir=$(OUT)/omniglot_5w1s
	for s in $(STUDIES); do $(PY) study.py study=$$s hydra.run.dir=$(OUT)/study/$$s || exit 1; done
	$(PY) report.py

test: setup  ## the test suite (CPU, no network; real data from DATA when present)
	$(PY) -m pytest -m "not slow" -q

test-all: setup  ## every test, the slow ones too
	$(PY) -m pytest -q

sweep: setup  ## inner-step sweep: algorithm × inner_steps ∈ {1,2,5,10,20,40} × SEEDS, sinusoid + Omniglot 5w1s
	$(PY) train.py -m algorithm=$(ALGOS) inner_steps=1,2,5,10,20,40 seed=$(SEEDS) dataset=sinusoid \
	    profile=$(PROFILE) hydra.sweep.dir=runs/sweep/$(PROFILE)/sinusoid
	$(PY) train.py -m algorithm=$(ALGOS) inner_steps=1,2,5,10,20,40 seed=$(SEEDS) dataset=omniglot \
	    profile=$(PROFILE) $(OMNIGLOT_SWEEP) hydra.sweep.dir=runs/sweep/$(PROFILE)/omniglot_5w1s
	$(PY) report.py

report: setup  ## regenerate reports/REPORT.md, tables and figures from runs/
	$(PY) report.py

bench: setup  ## benchmark harness → reports/BENCHMARKS.md
	$(PY) -m bench

# Time to accuracy: both runs at once, one core each (a 2-core machine), then the section of BENCHMARKS.md.
# iMAML: the fastest settings found (reports/BENCHMARKS.md): 3 inner steps of 0.4 (MAML's step, 3 at test as
# MAML), λ = 0.1, 2 CG steps on the official release's damped system, meta-batch 8.
TTA_IMAML := diagnostics=false meta_batch_size=8 inner_steps=3 test_inner_steps=3 inner_lr=0.4 \
	algorithm.hparams.lam=0.1 algorithm.hparams.cg_steps=2 algorithm.hparams.cg_damping=1.0 algorithm.hparams.lam_damping=10.0
bench-tta: setup  ## time to accuracy, Omniglot 5w1s, MAML + iMAML (≈ 65 min) → reports/BENCHMARKS.md
	rm -rf runs/bench/tta/maml runs/bench/tta/imaml-k3
	OMP_NUM_THREADS=1 $(PY) -m bench.tta --algorithm maml --threads 1 batching=compile diagnostics=false & a=$$!; \
	OMP_NUM_THREADS=1 $(PY) -m bench.tta --algorithm imaml --name imaml-k3 --threads 1 $(TTA_IMAML) & b=$$!; \
	wait $$a; ra=$$?; wait $$b; rb=$$?; [ $$ra -eq 0 ] && [ $$rb -eq 0 ]
	$(PY) -m bench.tta --render

gpu-check: setup  ## CUDA check (≤ 8 min on one H100): every algorithm briefly, MAML/iMAML time + memory vs K
	$(PY) -m bench.gpu_check

clean:  ## remove run outputs and caches (not the venv)
	rm -rf runs outputs multirun .cache
