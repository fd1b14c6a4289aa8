"""Find and read run records (their schema: ``SCHEMA.md`` beside the report) into flat rows for pandas.

A record that cannot be read — empty, truncated, not JSON, wrong schema version, missing
or ill-typed fields — becomes a :class:`Skipped` entry with the reason; it never stops
the report (readers treat a truncated or garbage file as "skip with a warning").
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd

SCHEMA_VERSION = 1
UNFINISHED = "unfinished"
STATUSES = ("completed", "diverged", "oom", "interrupted", "running")
METRICS = ("accuracy", "mse")
STUDY_FILES = {
    "fidelity": ("fidelity.csv",),
    "precision": ("precision.csv", "precision_train.csv"),
    "assumptions": ("assumptions.csv",),
    "cost": ("cost.csv",),
    "failures": ("failures.csv",),
    "deviations": ("deviations.csv",),
}
# A study whose own training runs' records travel with it (``reporting.collect``): the runs behind
# each of its rows (``run_dir``, relative to the study folder), never tabulated as runs themselves.
STUDY_RUN_FILES = {"deviations": ("train/*/summary.json", "train/*/metrics.csv", "train/*/retest/*.json")}


# Columns each study CSV must have (SCHEMA.md beside the report); a CSV without them is skipped.
STUDY_COLUMNS = {
    "fidelity.csv": ("theta_source", "task", "method", "inner_steps", "cg_steps", "cosine", "rel_error",
                     "hvps", "grad_evals"),
    "precision.csv": ("inner_steps", "task", "rel_diff", "norm32", "norm64", "nonfinite32", "nonfinite64"),
    "precision_train.csv": ("dtype", "metric", "mean", "ci95", "n", "verdict"),
    "assumptions.csv": ("checkpoint", "task", "lam", "eig_min", "eig_max", "strongly_convex", "hess_lipschitz",
                        "inner_grad_norm", "cg_residual", "query_grad_norm"),
    "cost.csv": ("algorithm", "inner_optimizer", "inner_steps", "median_iter_s", "cpu_time_s", "alloc_peak_bytes",
                 "rss_peak_bytes", "gpu_peak_bytes", "device", "status"),
    "failures.csv": ("algorithm", "lam", "inner_steps", "cg_steps", "inner_lr", "final_metric", "metric", "status"),
    "deviations.csv": ("group", "rung", "deviations", "algorithm", "test_split", "accuracy", "ci95", "n",
                       "iterations_done", "train_minutes", "median_iter_s", "status", "fingerprint", "run_dir", "vs",
                       "diff_mean", "diff_low", "diff_high", "diff_kind", "budget_minutes"),
}

TEXT_COLUMNS = {"theta_source", "method", "dtype", "metric", "verdict", "algorithm", "inner_optimizer", "device",
                "status", "strongly_convex", "group", "rung", "deviations", "test_split", "fingerprint", "run_dir",
                "vs", "diff_kind"}


def study_relative(path: str) -> str:
    """A study CSV's ``run_dir`` relative to the study folder: a study trains its runs under
    ``<study>/train/<name>``, so an absolute path (the machine that ran it) keeps ``train/<name>``."""
    p = PurePosixPath(str(path).replace("\\", "/"))
    if not p.is_absolute():
        return str(path)
    parts = p.parts
    return "/".join(parts[len(parts) - 1 - parts[::-1].index("train"):]) if "train" in parts[1:] else p.name


class RecordError(ValueError):
    """A record is unusable; the message is the reason shown in the report."""


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str


@dataclass
class Records:
    runs: pd.DataFrame                  # one row per readable summary.json (all statuses)
    studies: list[dict]                 # one dict per readable study.json, with loaded CSVs
    skipped: list[Skipped]
    selections: list[dict] = field(default_factory=list)  # one dict per selection.json (validation-only tuning)


def read_json(path: Path) -> dict:
    """Parse a JSON object, turning every way it can be broken into a one-line reason."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise RecordError(f"cannot read file: {e.strerror}") from None
    if not raw.strip():
        raise RecordError("empty file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise RecordError("not UTF-8 text (garbage bytes)") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        if e.pos >= len(text.rstrip()):
            raise RecordError(f"truncated JSON (ends after {len(raw)} bytes)") from None
        raise RecordError(f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    if not isinstance(obj, dict):
        raise RecordError(f"top-level JSON value is {type(obj).__name__}, expected an object")
    return obj


def _get(d: dict, dotted: str, kind: str, required: bool = True) -> Any:
    """Field at ``a.b.c``, checked against ``kind`` (str, int, num, bool, dict, list)."""
    cur: Any = d
    for part in dotted.split("."):
        if not isinstance(cur, dict) or cur.get(part) is None:
            if required:
                raise RecordError(f"missing field {dotted!r}")
            return None
        cur = cur[part]
    ok = {"str": isinstance(cur, str),
          "int": isinstance(cur, int) and not isinstance(cur, bool),
          "num": isinstance(cur, (int, float)) and not isinstance(cur, bool),
          "bool": isinstance(cur, bool),
          "dict": isinstance(cur, dict),
          "list": isinstance(cur, list)}[kind]
    if not ok:
        raise RecordError(f"field {dotted!r} should be {kind}, got {type(cur).__name__}")
    return float(cur) if kind == "num" else cur


def setting_name(dataset: str, ways: int, shots: int) -> str:
    return f"K={shots}" if dataset == "sinusoid" else f"{ways}w{shots}s"


def normalise_train(d: dict, run: str) -> dict:
    """Flatten a training ``summary.json`` into one row; raises :class:`RecordError`."""
    version = d.get("schema_version")
    if version != SCHEMA_VERSION:
        raise RecordError(f"schema_version {version!r} is not supported (expected {SCHEMA_VERSION})")
    status = _get(d, "status", "str")
    if status not in STATUSES:
        raise RecordError(f"status {status!r} is not one of {', '.join(STATUSES)}")
    row: dict[str, Any] = {"run": run, "status": status}
    for key, kind in (("algorithm", "str"), ("label", "str"), ("dataset", "str"), ("ways", "int"),
                      ("shots", "int"), ("profile", "str"), ("meta_iterations", "int"),
                      ("iterations_done", "int")):
        row[key] = _get(d, key, kind)
    for key, kind in (("variant", "str"), ("query_shots", "int"), ("experiment", "str"),
                      ("meta_batch_size", "int"), ("bn_mode", "str"), ("seed", "int"),
                      ("dtype", "str"), ("device", "str"), ("device_name", "str"), ("protocol", "str"),
                      ("max_train_minutes", "num"), ("stopped_by", "str"), ("budget", "str")):
        row[key] = _get(d, key, kind, required=False)
    for col, dotted, kind in (
            ("inner_optimizer", "inner.optimizer", "str"), ("inner_steps", "inner.steps", "int"),
            ("test_steps", "inner.test_steps", "int"), ("inner_lr", "inner.lr", "num"),
            ("prox_lam", "inner.prox_lam", "num"), ("lam", "imaml.lam", "num"),
            ("cg_steps", "imaml.cg_steps", "int"), ("outer_optimizer", "outer.optimizer", "str"),
            ("outer_lr", "outer.lr", "num"), ("outer_clip", "outer.clip", "num"),
            ("outer_anneal", "outer.anneal", "bool"), ("median_iter_s", "timing.median_iter_s", "num"),
            ("total_wall_s", "timing.total_wall_s", "num"), ("train_wall_s", "timing.train_wall_s", "num"),
            ("gpu_peak_bytes", "memory.gpu_peak_bytes", "int"),
            ("alloc_peak_bytes", "memory.alloc_peak_bytes", "int"),
            ("rss_peak_bytes", "memory.rss_peak_bytes", "int"),
            ("git_commit", "versions.git_commit", "str"),
            ("failure_iteration", "failure.iteration", "int"), ("failure_reason", "failure.reason", "str"),
            ("failure_stage", "failure.stage", "str"),
            ("early_stop", "config.eval.early_stop", "str"), ("inner_state", "inner.state", "str"),
            ("test_inner_state", "inner.test_state", "str")):
        row[col] = _get(d, dotted, kind, required=False)
    for col in ("inner_state", "test_inner_state"):  # records from before the carried state: every task fresh
        row[col] = row[col] or "fresh"
    # The evaluation may use other shots than training (the MAML sinusoid protocol trains at
    # K=10 and tests at K=5; Reptile trains Omniglot with 10 shots): the paper's setting is
    # the test one. Taken from test.shots, else the config's eval.shots, else the training shots.
    for key, base in (("shots", "shots"), ("query_shots", "query_shots")):
        test_value = _get(d, f"test.{key}", "int", required=False) if isinstance(d.get("test"), dict) else None
        cfg_value = _get(d, f"config.eval.{key}", "int", required=False) if isinstance(d.get("config"), dict) else None
        row[f"test_{key}"] = next((v for v in (test_value, cfg_value, row[base]) if v is not None), None)
    row["setting"] = setting_name(row["dataset"], row["ways"], row["test_shots"])
    test = d.get("test") if isinstance(d.get("test"), dict) else {}
    mean = test.get("mean")
    if status == "completed" and isinstance(mean, (int, float)) and not math.isfinite(mean):
        # Training finished but adapting to the test tasks blew up: a divergence, not a number.
        row.update(status="diverged", failure_iteration=row["iterations_done"],
                   failure_reason="test-time adaptation diverged (non-finite test metric)")
        status = "diverged"
    row.update(_test_fields(d, required=(status == "completed")))
    return row


def _test_fields(d: dict, required: bool) -> dict:
    """The test evaluation; required for completed runs, ignored (blank) for the others:
    a run that stopped early has no result to compare, only its status."""
    blank = {"metric": None, "mean": math.nan, "std": math.nan, "ci95": math.nan, "n": None,
             "per_task": None, "fingerprint": None, "test_steps_used": None, "by_steps": {},
             "zero_mean": None, "zero_ci95": None, "zero_per_task": None}
    if not required:
        return blank
    if not isinstance(d.get("test"), dict):
        raise RecordError("status is completed but the record has no test results")
    metric = _get(d, "test.metric", "str")
    if metric not in METRICS:
        raise RecordError(f"test.metric {metric!r} is not one of {', '.join(METRICS)}")
    out = dict(blank, metric=metric, mean=_get(d, "test.mean", "num"),
               std=_get(d, "test.std", "num", required=False),
               ci95=_get(d, "test.ci95", "num"), n=_get(d, "test.n", "int"),
               fingerprint=_get(d, "test.fingerprint", "str", required=False),
               test_steps_used=_get(d, "test.steps", "int", required=False))
    if out["std"] is None:
        out["std"] = math.nan
    if not math.isfinite(out["mean"]):
        raise RecordError("status is completed but test.mean is not finite")
    per_task = _get(d, "test.per_task", "list", required=False)
    if per_task is not None:
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in per_task):
            raise RecordError("test.per_task holds non-numbers")
        if len(per_task) != out["n"]:
            raise RecordError(f"test.per_task has {len(per_task)} values but test.n is {out['n']}")
        out["per_task"] = [float(v) for v in per_task]
    by_steps = _get(d, "test.by_steps", "dict", required=False) or {}
    try:
        out["by_steps"] = {int(k): float(v) for k, v in by_steps.items()}
    except (TypeError, ValueError):
        raise RecordError("test.by_steps should map step counts to numbers") from None
    out.update(_zero_predictor(d, out["n"]))
    return out


def _zero_predictor(d: dict, n: int) -> dict:
    """The regression baseline stored beside a test result: the MSE of predicting 0 on the same
    test tasks (``test.zero_predictor``: mean, ci95, per_task); blank when absent."""
    if _get(d, "test.zero_predictor", "dict", required=False) is None:
        return {}
    per_task = _get(d, "test.zero_predictor.per_task", "list", required=False)
    if per_task is not None and (len(per_task) != n or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in per_task)):
        raise RecordError(f"test.zero_predictor.per_task should hold {n} numbers")
    return {"zero_mean": _get(d, "test.zero_predictor.mean", "num"),
            "zero_ci95": _get(d, "test.zero_predictor.ci95", "num", required=False),
            "zero_per_task": None if per_task is None else [float(v) for v in per_task]}


def _load_selection(d: dict, run: str) -> dict:
    """A ``selection.json``: a protocol chosen on validation tasks only (never a test result)."""
    grid = _get(d, "grid", "dict")
    return {"run": run, "algorithm": _get(d, "algorithm", "str"), "experiment": _get(d, "experiment", "str"),
            "setting": _get(d, "setting", "str"), "metric": _get(d, "metric", "str"),
            "budget_minutes": _get(d, "budget_minutes", "num", required=False),
            "val_tasks": _get(d, "val_tasks", "int", required=False), "seed": _get(d, "seed", "int", required=False),
            "grid": {k: list(v) if isinstance(v, list) else [v] for k, v in sorted(grid.items())},
            "winner": _get(d, "winner", "dict", required=False) or {},
            "candidates": len(_get(d, "candidates", "list", required=False) or []),
            "candidate_rows": [cand for cand in _get(d, "candidates", "list", required=False) or []
                               if isinstance(cand, dict)],
            "winner_name": _get(d, "winner_name", "str", required=False),
            "stopped": sum(1 for cand in _get(d, "candidates", "list", required=False) or []
                           if isinstance(cand, dict) and cand.get("status") != "completed")}


def _load_study(d: dict, folder: Path, run: str) -> dict:
    if d.get("schema_version") != SCHEMA_VERSION:
        raise RecordError(f"schema_version {d.get('schema_version')!r} is not supported "
                          f"(expected {SCHEMA_VERSION})")
    name = _get(d, "study", "str")
    if name not in STUDY_FILES:
        raise RecordError(f"unknown study {name!r} (known: {', '.join(STUDY_FILES)})")
    status = _get(d, "status", "str")
    tables = {}
    for fname in STUDY_FILES[name]:
        path = folder / fname
        if not path.exists():
            continue
        try:
            tables[fname] = pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
            raise RecordError(f"{fname}: unreadable CSV ({type(e).__name__})") from None
        if "run_dir" in tables[fname].columns:
            tables[fname]["run_dir"] = [v if not isinstance(v, str) else study_relative(v)
                                        for v in tables[fname]["run_dir"]]
        missing = [col for col in STUDY_COLUMNS[fname] if col not in tables[fname].columns]
        if missing:
            raise RecordError(f"{fname}: missing columns {', '.join(missing)}")
        for col in STUDY_COLUMNS[fname]:
            if col in TEXT_COLUMNS:
                continue
            values = pd.to_numeric(tables[fname][col], errors="coerce")
            if (values.isna() & tables[fname][col].notna()).any():
                raise RecordError(f"{fname}: column {col} holds non-numbers")
            tables[fname][col] = values
    if status == "completed" and STUDY_FILES[name][0] not in tables:
        raise RecordError(f"status is completed but {STUDY_FILES[name][0]} is missing")
    config = d.get("config") if isinstance(d.get("config"), dict) else {}
    return {"run": run, "study": name, "status": status, "config": config,
            "device": _get(d, "device", "str", required=False),
            "device_name": _get(d, "device_name", "str", required=False), "tables": tables}


def load(runs_root: Path) -> Records:
    """Walk ``runs_root`` (sorted, so the result is deterministic) and read every record."""
    runs_root = Path(runs_root)
    rows, studies, skipped, selections = [], [], [], []
    prefix = runs_root.name or "runs"
    if runs_root.is_dir():
        for dirpath, dirnames, filenames in os.walk(runs_root):
            # a running campaign keeps its resumable state under unfinished/: not a record yet
            dirnames[:] = sorted(n for n in dirnames if not n.startswith(".") and n != UNFINISHED)
            folder = Path(dirpath)
            rel = folder.relative_to(runs_root).as_posix()
            run = prefix if rel == "." else f"{prefix}/{rel}"
            names = set(filenames)
            if "summary.json" in names:
                try:
                    d = read_json(folder / "summary.json")
                    if d.get("kind", "train") not in ("train", "selection"):
                        raise RecordError(f"summary.json has kind {d.get('kind')!r}, expected 'train'")
                    if d.get("kind", "train") == "train":  # a selection candidate is read via selection.json
                        rows.append(dict(normalise_train(d, run), folder=str(folder)))
                except RecordError as e:
                    skipped.append(Skipped(f"{run}/summary.json", str(e)))
            elif "metrics.jsonl" in names:
                skipped.append(Skipped(run, "no summary.json (the run was killed or is still running)"))
            if "selection.json" in names:
                dirnames[:] = []  # its candidates were tuned on validation tasks: never comparison rows
                try:
                    selections.append(_load_selection(read_json(folder / "selection.json"), run))
                except RecordError as e:
                    skipped.append(Skipped(f"{run}/selection.json", str(e)))
            if "study.json" in names:
                dirnames[:] = []  # a study's own training runs (its inputs) are not results to tabulate
                try:
                    studies.append(dict(_load_study(read_json(folder / "study.json"), folder, run), folder=str(folder)))
                except RecordError as e:
                    skipped.append(Skipped(f"{run}/study.json", str(e)))
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame = frame.sort_values("run", kind="stable").reset_index(drop=True)
    return Records(frame, sorted(studies, key=lambda s: s["run"]), sorted(skipped, key=lambda s: s.path),
                   sorted(selections, key=lambda s: s["run"]))
