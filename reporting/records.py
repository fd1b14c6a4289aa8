"""Find and read run records into flat rows for pandas: each ``summary.json`` through its model
(:class:`trainer.record.Record`, whose columns are the table of runs), each ``selection.json`` and
study record by the fields ``SCHEMA.md`` beside the report gives.

A record that cannot be read — empty, truncated, not JSON, wrong schema version, missing
or ill-typed fields — becomes a :class:`Skipped` entry with the reason; it never stops
the report (readers treat a truncated or garbage file as "skip with a warning").
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, get_args

import pandas as pd

from trainer import record
from trainer.record import SCHEMA_VERSION, setting_name  # noqa: F401  (setting_name: reporting.paper's)
from trainer.upgrade import upgrade

STUDY_SCHEMA_VERSION = 1  # study.json's
UNFINISHED = "unfinished"
STATUSES = get_args(record.Status)
# Each study's CSVs (the first is its result) with the columns each must have (SCHEMA.md beside the report);
# a CSV without them is skipped.
STUDY_TABLES = {study: {name: tuple(columns.split()) for name, columns in files.items()} for study, files in {
    "fidelity": {"fidelity.csv": "theta_source task method inner_steps cg_steps cosine rel_error hvps grad_evals"},
    "precision": {"precision.csv": "inner_steps task rel_diff norm32 norm64 nonfinite32 nonfinite64",
                  "precision_train.csv": "dtype metric mean ci95 n verdict"},
    "assumptions": {"assumptions.csv": "checkpoint task lam eig_min eig_max strongly_convex hess_lipschitz "
                                       "inner_grad_norm cg_residual query_grad_norm"},
    "cost": {"cost.csv": "algorithm inner_optimizer inner_steps median_iter_s cpu_time_s alloc_peak_bytes "
                         "rss_peak_bytes gpu_peak_bytes device status"},
    "failures": {"failures.csv": "algorithm lam inner_steps cg_steps inner_lr final_metric metric status"},
    "deviations": {"deviations.csv": "group rung deviations algorithm test_split accuracy ci95 n iterations_done "
                                     "train_minutes median_iter_s status fingerprint run_dir vs diff_mean diff_low "
                                     "diff_high diff_kind budget_minutes"},
    "rescaling": {"rescaling.csv": "scale inner_steps task rel_diff norm32 norm64 nonfinite32 nonfinite64",
                  "rescaling_train.csv": "scale seed experiment status iterations_done meta_iterations test_mse "
                                         "run_dir"},
}.items()}
STUDY_FILES = {name: tuple(files) for name, files in STUDY_TABLES.items()}
# A study whose own training runs' records travel with it (``tools/collect.py``): the runs behind
# each of its rows (``run_dir``, relative to the study folder), never tabulated as runs themselves.
STUDY_RUN_FILES = {"deviations": ("train/*/summary.json", "train/*/metrics.csv", "train/*/retest/*.json"),
                   "rescaling": ("train/*/summary.json", "train/*/metrics.csv")}
TEXT_COLUMNS = set("theta_source method dtype metric verdict algorithm inner_optimizer device status strongly_convex "
                   "group rung deviations test_split fingerprint run_dir vs diff_kind experiment failure_stage".split())


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
    selections: list[dict]              # one dict per selection.json (validation-only tuning)


def read_json(path: Path) -> dict:
    """Parse a JSON object, turning every way it can be broken into a one-line reason."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise RecordError(f"cannot read file: {e.strerror}") from None
    if not raw.strip():
        raise RecordError("empty file")
    try:
        obj = json.loads(text := raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise RecordError("not UTF-8 text (garbage bytes)") from None
    except json.JSONDecodeError as e:
        if e.pos >= len(text.rstrip()):
            raise RecordError(f"truncated JSON (ends after {len(raw)} bytes)") from None
        raise RecordError(f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    if not isinstance(obj, dict):
        raise RecordError(f"top-level JSON value is {type(obj).__name__}, expected an object")
    return obj


def _get(d: dict, key: str, kind: type, required: bool = True) -> Any:
    """Field ``key``, checked to be a ``kind``; None when it is missing and not required."""
    value = d.get(key)
    if value is None and required:
        raise RecordError(f"missing field {key!r}")
    if value is not None and not isinstance(value, kind):
        raise RecordError(f"field {key!r} should be {kind.__name__}, got {type(value).__name__}")
    return value


def normalise_train(d: dict, run: str) -> dict:
    """A training ``summary.json`` as one row of the table of runs (:meth:`trainer.record.Record.row`);
    raises :class:`RecordError`. A schema-1 record (an older checkout's run) is read as
    ``tools/migrate_records.py`` would rewrite it."""
    version = d.get("schema_version")
    if version not in (1, SCHEMA_VERSION):
        raise RecordError(f"schema_version {version!r} is not supported (expected {SCHEMA_VERSION})")
    try:
        rec = record.validate(upgrade(d))
    except ValueError as e:
        raise RecordError(str(e)) from None
    return {"run": run, **rec.row()}


def _train_row(d: dict, run: str, folder: Path) -> dict | None:
    """A ``summary.json``'s row; None for a selection candidate's (read through its ``selection.json``)."""
    if d.get("kind", "train") not in ("train", "selection"):
        raise RecordError(f"summary.json has kind {d.get('kind')!r}, expected 'train'")
    return dict(normalise_train(d, run), folder=str(folder)) if d.get("kind", "train") == "train" else None


def _load_selection(d: dict, run: str) -> dict:
    """A ``selection.json``: a protocol chosen on validation tasks only (never a test result)."""
    return {"run": run, "algorithm": _get(d, "algorithm", str), "experiment": _get(d, "experiment", str),
            "setting": _get(d, "setting", str), "metric": _get(d, "metric", str),
            "winner_name": _get(d, "winner_name", str, required=False),
            "candidate_rows": [cand for cand in _get(d, "candidates", list, required=False) or []
                               if isinstance(cand, dict)]}


def _load_study(d: dict, folder: Path, run: str) -> dict:
    if d.get("schema_version") != STUDY_SCHEMA_VERSION:
        raise RecordError(f"schema_version {d.get('schema_version')!r} is not supported "
                          f"(expected {STUDY_SCHEMA_VERSION})")
    name = _get(d, "study", str)
    if name not in STUDY_FILES:
        raise RecordError(f"unknown study {name!r} (known: {', '.join(STUDY_FILES)})")
    status = _get(d, "status", str)
    tables = {}
    for fname, columns in STUDY_TABLES[name].items():
        if not (folder / fname).exists():
            continue
        try:
            df = tables[fname] = pd.read_csv(folder / fname)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
            raise RecordError(f"{fname}: unreadable CSV ({type(e).__name__})") from None
        if "run_dir" in df.columns:
            df["run_dir"] = [v if not isinstance(v, str) else study_relative(v) for v in df["run_dir"]]
        if missing := [col for col in columns if col not in df.columns]:
            raise RecordError(f"{fname}: missing columns {', '.join(missing)}")
        if bad := [col for col in columns if col not in TEXT_COLUMNS and not pd.api.types.is_numeric_dtype(df[col])]:
            raise RecordError(f"{fname}: column {bad[0]} holds non-numbers")  # read_csv parsed every number
    if status == "completed" and STUDY_FILES[name][0] not in tables:
        raise RecordError(f"status is completed but {STUDY_FILES[name][0]} is missing")
    config = d["config"] if isinstance(d.get("config"), dict) else {}
    return {"run": run, "study": name, "status": status, "config": config, "folder": str(folder), "tables": tables,
            "device": _get(d, "device", str, required=False), "device_name": _get(d, "device_name", str, required=False)}


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
            if "metrics.jsonl" in names and "summary.json" not in names:
                skipped.append(Skipped(run, "no summary.json (the run was killed or is still running)"))
            if names & {"selection.json", "study.json"}:
                # a selection's candidates were tuned on validation tasks, a study's own training runs are
                # its inputs: neither are results to tabulate
                dirnames[:] = []
            for fname, into, read in (("summary.json", rows, lambda d: _train_row(d, run, folder)),
                                      ("selection.json", selections, lambda d: _load_selection(d, run)),
                                      ("study.json", studies, lambda d: _load_study(d, folder, run))):
                try:
                    if fname in names and (item := read(read_json(folder / fname))) is not None:
                        into.append(item)
                except RecordError as e:
                    skipped.append(Skipped(f"{run}/{fname}", str(e)))
    # each value as the record's model typed it (an int stays an int)
    frame = pd.DataFrame(sorted(rows, key=lambda r: r["run"]), dtype=object)
    return Records(frame, sorted(studies, key=lambda s: s["run"]), sorted(skipped, key=lambda s: s.path),
                   sorted(selections, key=lambda s: s["run"]))
