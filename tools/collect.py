"""Copy the records behind a report out of a run tree: ``python tools/collect.py SRC DST``.

The report is built from the committed records folder beside it, not from ``runs/``
(git-ignored), so a reader of a clone can check every number. Copied per run: ``summary.json`` and ``metrics.csv``;
per study: ``study.json`` and its CSVs (and, for a study in ``STUDY_RUN_FILES``, the records of
its own training runs behind its rows). Never checkpoints or data. ``metrics.csv`` keeps every
validated iteration (the learning curves) and every n-th other one, at most ``MAX_ROWS`` in all,
so a regression run's thousands of iterations stay a small file. ``DST`` is replaced as a whole
and atomically: a reader sees the old records or the new ones, never a mix. A committed record
names no path of the machine that wrote it (:func:`relative_paths`).
"""
from __future__ import annotations

import csv
import io
import json
import math
import re
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from reporting.records import STUDY_FILES, STUDY_RUN_FILES, study_relative  # noqa: E402

RUN_FILES = ("summary.json", "metrics.csv")
MAX_ROWS = 400


def thin_metrics(text: str, max_rows: int = MAX_ROWS) -> str:
    """The rows of a metrics.csv a record keeps: the header, every row with a validation metric or
    a fidelity measurement (``fid_*``), the last row, and every n-th row with n chosen so that
    about ``max_rows`` remain."""
    lines = text.splitlines(keepends=True)
    if len(lines) <= max_rows + 1:
        return text
    header, rows = lines[0], lines[1:]
    cols = [i for i, name in enumerate(header.rstrip("\r\n").split(",")) if name == "val_metric" or name.startswith("fid_")]
    every = math.ceil(len(rows) / max_rows)
    return header + "".join(r for i, (r, values) in enumerate(zip(rows, csv.reader(rows)))
                            if i % every == 0 or i == len(rows) - 1 or any(values[j] for j in cols if j < len(values)))


_RUN_DIR_JSON = re.compile(r'("run_dir": )"((?:/|[A-Za-z]:[\\/])[^"]*)"')


def relative_paths(rel: Path, text: str) -> str:
    """A record's text with every absolute ``run_dir`` made relative to the records folder.

    ``rel`` is the record's path inside that folder. In JSON (summary, retest) the run folder
    is the record's own folder (a retest record's is the run it retested); in a study CSV it is
    relative to the study folder (``train/<name>``). Only those strings change, never a number."""
    if rel.suffix == ".json":
        folder = rel.parent.parent if rel.parent.name == "retest" else rel.parent
        return _RUN_DIR_JSON.sub(lambda m: f'{m.group(1)}"{folder.as_posix() or "."}"', text)
    if rel.suffix != ".csv" or "run_dir" not in text.split("\n", 1)[0].split(","):
        return text
    rows = list(csv.reader(io.StringIO(text, newline="")))
    col = rows[0].index("run_dir")
    relative = [[*r[:col], study_relative(r[col]), *r[col + 1:]] if len(r) > col and r[col] else r for r in rows]
    if relative == rows:  # the header's "run_dir" is a relative path too, so it stays
        return text
    buf = io.StringIO(newline="")
    csv.writer(buf, lineterminator="\n").writerows(relative)
    return buf.getvalue()


def record_files(src: Path) -> list[Path]:
    """The record files under ``src``, sorted; a study's own training runs are its inputs, not records."""
    out = sorted(src.rglob("study.json"))
    studies = [p.parent for p in out]
    for name in RUN_FILES:
        out += [p for p in src.rglob(name) if not any(s in p.parents for s in studies)]
    for folder in studies:
        out += [folder / f for files in STUDY_FILES.values() for f in files if (folder / f).exists()]
        try:
            name = json.loads((folder / "study.json").read_text()).get("study")
        except (OSError, ValueError, AttributeError):  # an unreadable study.json: the report skips it
            name = None
        out += [p for pattern in STUDY_RUN_FILES.get(name, ()) for p in folder.glob(pattern)]
    return sorted(set(out))


def collect(src: Path, dst: Path) -> int:
    if not src.is_dir():
        raise FileNotFoundError(f"{src} is not a folder of run records; run the target that writes it first")
    if not (files := record_files(src)):
        raise FileNotFoundError(f"no records under {src}: run the target that writes them first")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    for f in files:
        (target := tmp / f.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
        text = f.read_text()
        target.write_text(thin_metrics(text) if f.name == "metrics.csv" else relative_paths(f.relative_to(src), text))
    old = dst.with_name(f".{dst.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if dst.exists():
        dst.rename(old)
    tmp.rename(dst)
    shutil.rmtree(old, ignore_errors=True)
    return len(files)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python tools/collect.py SRC DST", file=sys.stderr)
        return 2
    try:
        print(f"collect: {collect(Path(argv[0]), Path(argv[1]))} record files {argv[0]} → {argv[1]}")
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
