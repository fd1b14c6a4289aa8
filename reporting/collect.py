"""Copy the records behind a report out of a run tree: ``python -m reporting.collect SRC DST``.

The report is built from ``reports/records/`` (committed), not from ``runs/`` (git-ignored), so
a reader of a clone can check every number. Copied per run: ``summary.json`` and ``metrics.csv``;
per study: ``study.json`` and its CSVs. Never checkpoints or data. ``DST`` is replaced as a whole
and atomically: a reader sees the old records or the new ones, never a mix.
"""
from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from .records import STUDY_FILES

RUN_FILES = ("summary.json", "metrics.csv")


def record_files(src: Path) -> list[Path]:
    """The record files under ``src``, sorted; a study's own training runs are its inputs, not records."""
    out = []
    for study in sorted(src.rglob("study.json")):
        out.append(study)
    studies = [p.parent for p in out]
    for name in RUN_FILES:
        out += [p for p in src.rglob(name) if not any(s in p.parents for s in studies)]
    for folder in studies:
        out += [folder / f for files in STUDY_FILES.values() for f in files if (folder / f).exists()]
    return sorted(set(out))


def collect(src: Path, dst: Path) -> int:
    files = record_files(src)
    if not files:
        raise FileNotFoundError(f"no records under {src}: run the target that writes them first")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    for f in files:
        target = tmp / f.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, target)
    old = dst.with_name(f".{dst.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if dst.exists():
        dst.rename(old)
    tmp.rename(dst)
    shutil.rmtree(old, ignore_errors=True)
    return len(files)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m reporting.collect SRC DST", file=sys.stderr)
        return 2
    src, dst = Path(argv[0]), Path(argv[1])
    if not src.is_dir():
        print(f"error: {src} is not a folder of run records; run the target that writes it first", file=sys.stderr)
        return 2
    try:
        n = collect(src, dst)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"collect: {n} record files {src} → {dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
