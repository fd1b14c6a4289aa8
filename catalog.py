"""What the checkout's configs offer, read from ``configs/`` alone (no torch): the one source of the
lists of algorithms and datasets that Make targets, studies, the campaign and the report use.

    python catalog.py algorithms            # maml fomaml reptile imaml imaml_hf (by family, then name)
    python catalog.py algorithms --slowest  # the same, slowest first (job lists start with them)
    python catalog.py datasets              # sinusoid omniglot miniimagenet (each one's fields: catalog.dataset)
    python catalog.py selection             # the settings of configs/selection.yaml

An algorithm is a ``configs/algorithm/NAME.yaml`` (its estimator, ``family`` and ``label``); a variant
that composes another (``imaml_hf``: ``imaml@algorithm``) inherits what it does not state. Labels
that experiments give (``algorithm.label`` in ``configs/experiment/*.yaml``: "iMAML-GD (release)")
follow their algorithm's label in :func:`label_order`.
"""
from __future__ import annotations

import sys
from functools import cache
from pathlib import Path

import yaml

CONFIGS = Path(__file__).resolve().parent / "configs"
FAMILIES = ("exact", "first-order", "implicit", "baseline")  # what an algorithm config's ``family`` may say
DATASET_ORDER = ("sinusoid", "omniglot", "miniimagenet")     # the report's order; others after, by name


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


@cache
def algorithm(name: str) -> dict:
    """The resolved fields (name, estimator, family, label, inner_optimizers, fidelity) of
    ``configs/algorithm/NAME.yaml``."""
    d = _load(CONFIGS / "algorithm" / f"{name}.yaml")
    base: dict = {}
    for entry in d.get("defaults") or []:
        if isinstance(entry, str) and entry.endswith("@algorithm"):
            base = algorithm(entry.split("@")[0])
    own = d.get("algorithm", d)  # a global-package variant states its fields under algorithm:
    fields = ("name", "estimator", "family", "label", "inner_optimizers", "fidelity")
    return {k: own.get(k, base.get(k)) for k in fields}


def algorithms() -> tuple[str, ...]:
    """The algorithm configs, by family (:data:`FAMILIES`), then name."""
    names = [p.stem for p in sorted((CONFIGS / "algorithm").glob("*.yaml"))]
    return tuple(sorted(names, key=lambda n: (FAMILIES.index(algorithm(n)["family"]), n)))


def slowest_first() -> tuple[str, ...]:
    """The algorithms in reverse (implicit first): job lists start with the slowest runs."""
    return algorithms()[::-1]


def datasets() -> tuple[str, ...]:
    """The dataset configs, in report order (:data:`DATASET_ORDER`, then name)."""
    names = [p.stem for p in (CONFIGS / "dataset").glob("*.yaml")]
    return tuple(sorted(names, key=lambda n: (DATASET_ORDER.index(n) if n in DATASET_ORDER else len(DATASET_ORDER), n)))


DATASET_FIELDS = ("name", "module", "label", "model", "batching", "metric", "lower_is_better", "baseline",
                  "data_files", "describe")  # what a dataset config declares for the rest of the suite


@cache
def dataset(name: str) -> dict:
    """The declared fields (:data:`DATASET_FIELDS`, documented in the configs) of ``configs/dataset/NAME.yaml``."""
    d = _load(CONFIGS / "dataset" / f"{name}.yaml")
    return {k: d.get(k) for k in DATASET_FIELDS}


@cache
def _experiment(name: str) -> tuple[str | None, str | None, str | None]:
    """(the algorithm config an experiment composes, the label and family it gives it), following its defaults."""
    d = _load(CONFIGS / "experiment" / f"{name}.yaml")
    algo, label, family = None, None, None
    for entry in d.get("defaults") or []:
        if isinstance(entry, dict) and "override /algorithm" in entry:
            algo = entry["override /algorithm"]
        elif isinstance(entry, str) and (CONFIGS / "experiment" / f"{entry}.yaml").is_file():
            algo, label, family = _experiment(entry)
    own = d.get("algorithm") or {}
    return algo, own.get("label") or label, own.get("family") or family


def label_order() -> tuple[str, ...]:
    """Every label the checkout's configs give, in report order: each algorithm's label, then the labels
    its experiments give it (by name); the labels of baseline experiments last."""
    experiments = [_experiment(p.stem) for p in sorted((CONFIGS / "experiment").glob("*.yaml"))]
    out: list[str] = []
    for name in algorithms():
        own = algorithm(name)["label"]
        out += [own, *sorted({lab for a, lab, fam in experiments if a == name and lab and fam != "baseline"} - {own})]
    out += sorted({lab for _, lab, fam in experiments if lab and fam == "baseline"})
    return tuple(dict.fromkeys(out))


def campaign_plan(path: Path = CONFIGS / "campaign.yaml") -> list[dict]:
    """The paper-budget campaign's runs (``configs/campaign.yaml``), in the order they start: each
    ``{name, experiment, seed, why, overrides}``, overrides the full ``train.py`` list."""
    spec = _load(path)
    plan, seen = [], set()
    for r in spec["runs"]:
        missing = sorted({"name", "experiment", "seed", "why"} - set(r))
        if missing or r["name"] in seen:
            raise SystemExit(f"{path}: run {r.get('name')!r} " + (f"lacks {missing}" if missing else "is listed twice"))
        seen.add(r["name"])
        plan.append({**r, "overrides": [f"experiment={r['experiment']}", f"seed={r['seed']}", *spec["validation"],
                                        *r.get("overrides", [])]})
    return plan


def jobs(target: str, seeds: list[int], minutes: dict[str, float] | None) -> list[str]:
    """The job lines (``NAME train.py OVERRIDE…``, slowest first per seed and setting) of ``target``
    (a key of ``configs/reproduce.yaml``); ``minutes``: each budget variable's minutes per run (the
    cpu profile's cap, with validation every fifth of it on 30 tasks), None for no cap."""
    out = []
    for seed in seeds:
        for st in _load(CONFIGS / "reproduce.yaml")[target]:
            runs = {**{n: e for n, e in st["extra"].items() if n not in algorithms()},
                    **{a: f"{st['prefix']}_{a}" for a in slowest_first()}}
            cap = [] if minutes is None else [f"max_train_minutes={minutes[st['budget']]:g}",
                                              f"eval.val_every_minutes={minutes[st['budget']] / 5:g}",
                                              "eval.val_tasks=30"]
            for name, exp in runs.items():
                own = [f"experiment={exp}"] if (CONFIGS / "experiment" / f"{exp}.yaml").is_file() else [
                    *st["shared"], f"algorithm={name}"]
                out.append(" ".join([f"{st['name']}/{name}-s{seed}", "train.py", *own, f"seed={seed}",
                                     *st["overrides"], *cap]))
    return out


def sweep_jobs(setting: str, seeds: list[int], minutes: dict[str, float] | None) -> list[str]:
    """The job lines of comparison b's ``setting`` (``sweep`` in ``configs/reproduce.yaml``): every algorithm
    (slowest first) at every K, per seed; ``minutes`` and the cap as :func:`jobs` (with a cap, the setting's
    ``cpu`` overrides too)."""
    st = {s["name"]: s for s in _load(CONFIGS / "reproduce.yaml")["sweep"]}[setting]
    cap = [] if minutes is None else [*st.get("cpu", []), f"max_train_minutes={minutes[st['budget']]:g}",
                                      f"eval.val_every_minutes={minutes[st['budget']] / 5:g}", "eval.val_tasks=30"]
    return [" ".join([f"{setting}/{a}-K{k}-s{seed}", "train.py", f"algorithm={a}", *st["shared"], f"inner_steps={k}",
                      *([f"test_inner_steps={k}"] if st["test_after_K"] else []), f"seed={seed}", *cap])
            for seed in seeds for k in st["inner_steps"] for a in slowest_first()]


def main(argv: list[str]) -> int:
    what = argv[0] if argv else ""
    if what == "algorithms":
        print(" ".join(slowest_first() if "--slowest" in argv else algorithms()))
    elif what == "datasets":
        print(" ".join(datasets()))
    elif what == "selection":  # the settings of configs/selection.yaml (make select)
        print(" ".join(_load(CONFIGS / "selection.yaml")))
    elif what == "sweep" and len(argv) >= 3:
        # python catalog.py sweep SETTING SEEDS [BUDGET_X=minutes ...] [-- OVERRIDE ...]
        budgets = dict(a.split("=", 1) for a in argv[3:])
        print("\n".join(sweep_jobs(argv[1], [int(x) for x in argv[2].split(",") if x != ""],
                                   {k: float(v) for k, v in budgets.items()} if budgets else None)))
    elif what == "sweeps":  # the settings of comparison b
        print(" ".join(s["name"] for s in _load(CONFIGS / "reproduce.yaml")["sweep"]))
    elif what == "jobs" and len(argv) >= 3:
        # python catalog.py jobs TARGET SEEDS [BUDGET_X=minutes ...]: no budgets given → no time cap
        budgets = dict(a.split("=", 1) for a in argv[3:])
        print("\n".join(jobs(argv[1], [int(x) for x in argv[2].split(",") if x != ""],
                             {k: float(v) for k, v in budgets.items()} if budgets else None)))
    else:
        print("usage: python catalog.py algorithms [--slowest] | datasets | selection | jobs TARGET SEEDS [BUDGET_X=MIN ...] "
              "| sweeps | sweep SETTING SEEDS [BUDGET_X=MIN ...]",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
