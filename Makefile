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
# The algorithms are the configs in configs/algorithm/ (catalog.py; read when a recipe runs, after setup).
ALGOS = $(shell $(PY) catalog.py algorithms)
STUDIES := fidelity precision assumptions cost failures
# Equal training-time budgets at the cpu profile (minutes of training wall-clock per run, one core
# each, two runs at once); PROFILE=paper keeps the papers' iteration counts and no time limit.
BUDGET_OMNIGLOT ?= 4
BUDGET_SINUSOID ?= 1
BUDGET_LARGE ?= 15
BUDGET_OMNIGLOT_SWEEP ?= 2
ifeq ($(PROFILE),cpu)
  MINUTES = $(foreach b,$(1),BUDGET_$(b)=$(BUDGET_$(b)))   # catalog.py jobs / sweep: each setting's minutes per run
else
  MINUTES =
endif
# The deviation ladder (study=deviations): minutes of training per run, test tasks per evaluation.
BUDGET_DEVIATIONS ?= 3
BUDGET_DEVIATIONS_LONG ?= 60
DEVIATIONS_TASKS ?= 600
OUT := runs/reproduce/$(PROFILE)
SWEEP_OUT := runs/sweep/$(PROFILE)
RECORDS := reports/records

.PHONY: help setup reproduce large select campaign campaign-status campaign-save test test-all lint sweep deviations deviations-long deviations-reptile rescaling report bench bench-tta gpu-check clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'
	@echo "  variables: PROFILE=cpu|paper  SEEDS=0,1,2  DATA=$(DATA)"
	@echo "             BUDGET_OMNIGLOT=$(BUDGET_OMNIGLOT) BUDGET_SINUSOID=$(BUDGET_SINUSOID) BUDGET_OMNIGLOT_SWEEP=$(BUDGET_OMNIGLOT_SWEEP) BUDGET_LARGE=$(BUDGET_LARGE) (minutes of training per run, cpu profile)"

setup: $(VENV)/.setup-done  ## create .venv with all dependencies (learn2learn rebuilt for Python 3.11)
$(VENV)/.setup-done: pyproject.toml tools/setup.sh
	VENV=$(VENV) bash tools/setup.sh

reproduce: setup  ## comparison a (published protocols, equal budgets) on Omniglot 5w1s + sinusoid, the studies, the report
	rm -rf $(OUT)
	{ $(PY) catalog.py jobs reproduce $(SEEDS) $(call MINUTES,OMNIGLOT SINUSOID); \
	  for s in $(STUDIES); do echo "study/$$s study.py study=$$s"; done; } | PY=$(PY) $(PY) tools/jobs.py $(OUT)
	$(PY) tools/collect.py $(OUT) $(RECORDS)/reproduce-$(PROFILE)
	$(PY) report.py

large: setup  ## comparison a on Omniglot 20w1s and mini-ImageNet 5w1s (cpu: BUDGET_LARGE=15 min per run)
	rm -rf runs/large/$(PROFILE)
	$(PY) catalog.py jobs large $(SEEDS) $(call MINUTES,LARGE) | PY=$(PY) $(PY) tools/jobs.py runs/large/$(PROFILE)
	$(PY) tools/collect.py runs/large/$(PROFILE) $(RECORDS)/large-$(PROFILE)
	$(PY) report.py

# Protocol choices no paper fixes, selected on validation tasks only (configs/selection.yaml).
select: setup  ## selection on validation tasks (sinusoid: 4 tuned algorithms × 4 candidates × 5,000 iterations; Omniglot 5w1s: iMAML-HF × 4 × 4 min)
	for s in $$($(PY) catalog.py selection); do JOBS=$(or $(JOBS),2) $(PY) tools/selection.py $$s || exit 1; done

# The paper-budget campaign (tools/campaign.py): resumable across sessions, JOBS runs at a time.
campaign: setup  ## runs to the papers' iteration counts (sinusoid, Omniglot 5w1s), resumable; SIGTERM saves state
	$(PY) tools/campaign.py run --jobs $(or $(JOBS),2)

campaign-status:  ## each campaign run: iterations done / planned, latest validation, ETA
	$(PY) tools/campaign.py status

campaign-save:  ## copy unfinished campaign runs' checkpoints into reports/records/campaign-cpu (to commit)
	$(PY) tools/campaign.py save

TEST_JOBS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); echo $$(( n < 4 ? n : 4 )))   # one pytest-xdist worker per core, at most 4
test: setup lint  ## lint, then the test suite (CPU, no network; real data from DATA when present), TEST_JOBS workers
	$(PY) -m pytest -m "not slow" -q -n $(TEST_JOBS) --dist loadfile

test-all: setup  ## every test, the slow ones too
	$(PY) -m pytest -q

lint: setup  ## ruff (configured in pyproject.toml)
	$(PY) -m ruff check .

# Comparison b: one shared inner loop (the MAML protocol's SGD step), K swept, equal budgets; its settings
# (protocol, K values, budget variable) are `sweep` in configs/reproduce.yaml (catalog.py sweep).
sweep: setup  ## comparison b: algorithm × inner steps at equal budgets, sinusoid + Omniglot 5w1s
	for st in $$($(PY) catalog.py sweeps); do rm -rf $(SWEEP_OUT)/$$st; \
	  $(PY) catalog.py sweep $$st $(SEEDS) $(call MINUTES,SINUSOID OMNIGLOT_SWEEP) \
	    | PY=$(PY) $(PY) tools/jobs.py $(SWEEP_OUT) || exit 1; done
	$(PY) tools/collect.py $(SWEEP_OUT) $(RECORDS)/sweep-$(PROFILE)
	$(PY) report.py

# The deviation ladder, iMAML as written → the official release (Omniglot 5w1s): one process, runs one after
# another on every core, each for the same training wall-clock. Rerunning continues the study folder (a run
# already done at this budget is reused; a larger budget extends the runs), so it is never removed here.
deviations: setup  ## deviation ladder iMAML paper → release, 15 runs × BUDGET_DEVIATIONS=3 min (≈ 1 h) → report
	$(PY) study.py study=deviations study.budget_minutes=$(BUDGET_DEVIATIONS) study.eval_tasks=$(DEVIATIONS_TASKS) \
	  hydra.run.dir=runs/study/deviations
	$(PY) tools/collect.py runs/study/deviations $(RECORDS)/deviations-cpu
	$(PY) report.py

deviations-long: setup  ## its two end points (paper, release) for BUDGET_DEVIATIONS_LONG=60 min each (≈ 2 h 10 min)
	$(PY) study.py study=deviations study.long_budget_minutes=$(BUDGET_DEVIATIONS_LONG) \
	  study.eval_tasks=$(DEVIATIONS_TASKS) hydra.run.dir=runs/study/deviations-long
	$(PY) tools/collect.py runs/study/deviations-long $(RECORDS)/deviations-long-cpu
	$(PY) report.py

rescaling: setup  ## R2.2: does rescaling sinusoid's targets remove the numerical problems? (configs/study/rescaling.yaml, ~20 min)
	$(PY) study.py study=rescaling hydra.run.dir=runs/study/rescaling
	$(PY) tools/collect.py runs/study/rescaling $(RECORDS)/rescaling-cpu

# The Reptile ladder (configs/study/deviations_reptile.yaml): the suite's earlier Reptile → its reference code, one
# difference at a time, 4 trained rungs + 1 retest per seed, 1,500 iterations each, seeds 0, 1, 2.
deviations-reptile: setup  ## Reptile ladder, fresh inner state → openai/supervised-reptile, 3 seeds × 4 runs × 1,500 iterations (≈ 70 min) → report
	for s in 0 1 2; do $(PY) study.py study=deviations_reptile seed=$$s \
	  study.eval_tasks=$(DEVIATIONS_TASKS) hydra.run.dir=runs/study/deviations_reptile/s$$s || exit 1; \
	  $(PY) tools/collect.py runs/study/deviations_reptile/s$$s $(RECORDS)/deviations-reptile-cpu/s$$s || exit 1; done
	$(PY) report.py

report: setup  ## regenerate reports/REPORT.md, tables and figures from the records in reports/records/
	$(PY) report.py

bench: setup  ## benchmark harness → reports/BENCHMARKS.md
	$(PY) -m bench

# Time to accuracy: the runs of configs/bench_tta.yaml at once, one core each, then the section of BENCHMARKS.md.
bench-tta: setup  ## time to accuracy, Omniglot 5w1s, MAML + iMAML (≈ 65 min) → reports/BENCHMARKS.md
	$(PY) -m bench.tta plan=true

gpu-check: setup  ## CUDA check: every algorithm briefly, MAML/iMAML time + memory vs K
	$(PY) -m bench.gpu_check

clean:  ## remove run outputs and caches (not the venv)
	rm -rf runs outputs multirun .cache
