"""Shared row helpers: ordering, configuration identity, display of a run's status and result."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import catalog

from .render import fmt_g, fmt_pm, is_missing

LABEL_ORDER = catalog.label_order()  # the configs' labels; any other label (your own method) after, by name
SETTING_ORDER = ("5w1s", "5w5s", "20w1s", "20w5s")
DATASETS = {name: catalog.dataset(name) for name in catalog.datasets()}  # the fields each dataset config declares
DATASET_NAMES = {name: d["label"] for name, d in DATASETS.items()}
# Everything that defines a training configuration except the seed: runs sharing these are its seeds.
CONFIG_KEYS = ("label", "variant", "algorithm", "dataset", "ways", "shots", "query_shots", "test_shots",
               "test_query_shots", "profile", "experiment", "meta_iterations", "meta_batch_size",
               "inner_optimizer", "inner_lr", "inner_steps", "test_steps", "prox_lam", "lam", "cg_steps",
               "outer_optimizer", "outer_lr", "outer_clip", "outer_anneal", "bn_mode", "dtype", "device",
               "max_train_minutes", "early_stop", "inner_state", "test_inner_state")


def metric_of(dataset: str) -> str:
    """The test metric the dataset's config declares (accuracy for a dataset no config declares)."""
    return DATASETS.get(dataset, {}).get("metric") or "accuracy"


def is_regression(dataset: str) -> bool:
    """A dataset whose tasks are regressions (MSE): its setting is the shots alone, its plots log-scaled."""
    return metric_of(dataset) == "mse"


def task_words(dataset: str, ways: int | None, shots: int | None) -> str:
    """'<dataset> regression, 5-shot' or '<dataset> 5-way 1-shot', the dataset by its config's label."""
    name = DATASET_NAMES.get(dataset, dataset)
    return f"{name} regression, {shots}-shot" if is_regression(dataset) else f"{name} {ways}-way {shots}-shot"


def title(dataset: str, setting: str) -> str:
    """'Omniglot 5w1s': the dataset by its config's label, then the test setting."""
    return f"{DATASET_NAMES.get(dataset, dataset)} {setting}"


def slug(*parts: str) -> str:
    """A file-name-safe join of parts ('K=10' -> 'K10')."""
    return "_".join("".join(ch for ch in str(p) if ch.isalnum() or ch in "-.") for p in parts)


def clean(v: Any) -> Any:
    """None for missing values (pandas turns None into NaN in numeric columns)."""
    return None if is_missing(v) else v


def label_rank(label: str) -> tuple:
    return (LABEL_ORDER.index(label), "") if label in LABEL_ORDER else (len(LABEL_ORDER), label)


def setting_rank(setting: str) -> tuple:
    return (SETTING_ORDER.index(setting), "") if setting in SETTING_ORDER else (len(SETTING_ORDER), setting)


def config_key(row: dict) -> tuple:
    return tuple(clean(row.get(k)) for k in CONFIG_KEYS)


def budget_kind(row: dict) -> str | None:
    """``paper``: a completed paper-profile run that did all its iterations; ``converged``: one
    the declared early-stop rule ended (``eval.early_stop``); None for any other run."""
    if row["profile"] == "paper" and row["status"] == "completed":
        return "paper" if row["iterations_done"] >= row["meta_iterations"] else (
            "converged" if row.get("stopped_by") == "converged" else None)
    return None


def status_text(row: dict) -> str:
    if row["status"] == "completed":
        return "completed"
    if row["status"] == "running":  # the trainer leaves this when it is killed before finishing
        return "running, or killed before writing its final record"
    it = row["iterations_done"] if row.get("failure_iteration") is None else row["failure_iteration"]
    return f"{row['status']} at iteration {it}" + (f": {row['failure_reason']}" if row.get("failure_reason") else "")


def budget_text(row: dict) -> str:
    return f"{row['iterations_done']}/{row['meta_iterations']}"


def scale_of(metric: str | None) -> tuple[float, int]:
    """Display scale and decimals: accuracy as percent, MSE as is."""
    return (100.0, 2) if metric == "accuracy" else (1.0, 3)


def result_text(row: dict) -> str:
    s, d = scale_of(row["metric"])
    return fmt_pm(row["mean"], row["ci95"], d, s) if row["status"] == "completed" else "—"


def config_groups(rows: list[dict]) -> list[list[dict]]:
    """The runs of each configuration (its seeds), in the order of their first run; each by seed."""
    out: dict[tuple, list[dict]] = {}
    for r in rows:
        out.setdefault(config_key(r), []).append(r)
    return [sorted(v, key=lambda r: (_seed(r), r["run"])) for v in out.values()]


def seeds_list(runs: list[dict]) -> str:
    """'0, 1, 2': the seeds of some runs."""
    return ", ".join(fmt_g(s) for s in sorted({r.get("seed") for r in runs if r.get("seed") is not None})) or "—"


def runs_text(runs: list[dict]) -> str:
    """The run folders of a configuration's seeds, compressed: 'a/x-s{0,1,2}' for a/x-s0, a/x-s1, a/x-s2."""
    names = [r["run"].rsplit("-s", 1) for r in runs]
    if len(names) > 1 and all(len(n) == 2 for n in names) and len({n[0] for n in names}) == 1:
        return f"{names[0][0]}-s{{{','.join(n[1] for n in names)}}}"
    return "; ".join(r["run"] for r in runs)


def records_sorted(rows: list[dict]) -> list[dict]:
    """Row dicts in the canonical report order."""
    return sorted(rows, key=lambda r: (r["dataset"], setting_rank(r["setting"]), label_rank(r["label"]),
                                       r["profile"], _seed(r), r["run"]))


def _seed(row: dict) -> int:
    return -1 if row.get("seed") is None else row["seed"]


def metrics_rows(folder: str) -> list[dict]:
    """The rows of a run folder's ``metrics.csv`` as dicts of strings (empty cells ""); [] without one."""
    if not (path := Path(folder) / "metrics.csv").exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))
