"""Rewrite schema-1 run records into the current schema (:mod:`trainer.record`), in place.

    python tools/migrate_records.py                 # every summary.json of the committed records
    python tools/migrate_records.py runs/campaign   # or under the folders given

Each ``summary.json`` of schema 1 (written by the trainer before :mod:`trainer.record`) becomes
:func:`trainer.upgrade.upgrade` of it, checked against the model and written atomically in the
trainer's JSON layout; a record already in the current schema is only checked. Nothing else is
touched, so a second run changes nothing. A record that does not validate is named and left as
it is (the exit status is then 1).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from atomic import atomic_write_json  # noqa: E402
from trainer.record import SCHEMA_VERSION, validate  # noqa: E402
from trainer.upgrade import upgrade  # noqa: E402


def migrate(path: Path) -> bool:
    """Rewrite one ``summary.json`` into the current schema; True if it changed. ValueError when the
    result does not validate (the file is then left as it was)."""
    d = json.loads(path.read_text())
    if d.get("schema_version") == SCHEMA_VERSION:
        validate(d)
        return False
    new = upgrade(d)
    validate(new)
    atomic_write_json(path, new)
    return True


def migrate_all(roots: list[Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(the records rewritten, the records that failed with their reason) under ``roots``, sorted."""
    changed, failed = [], []
    for path in sorted(p for root in roots for p in Path(root).rglob("summary.json")):
        try:
            if migrate(path):
                changed.append(path)
        except ValueError as e:
            failed.append((path, str(e)))
    return changed, failed


def main(argv: list[str]) -> int:
    roots = [Path(a) for a in argv] or [ROOT / "reports" / "records"]
    changed, failed = migrate_all(roots)
    for path, why in failed:
        print(f"migrate: {path}: {why} (left as it was)", file=sys.stderr)
    print(f"migrate: {len(changed)} record(s) rewritten into schema {SCHEMA_VERSION}, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
