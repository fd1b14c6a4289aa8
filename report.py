"""Regenerate the results report from the run records: ``python report.py [--runs runs] [--out reports]``.

Writes ``<out>/REPORT.md``, ``<out>/tables/*.csv|.tex`` and ``<out>/figures/*.png``
(see :mod:`reporting.generate`; the record schema is ``SCHEMA.md`` beside the report).
"""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="reports/records",
                        help="folder holding the run records (default: reports/records, the committed ones)")
    parser.add_argument("--out", default="reports", help="folder to write REPORT.md, tables/ and figures/ into")
    args = parser.parse_args(argv)
    from reporting.generate import main as generate_main  # heavy imports only after argument parsing

    return generate_main(args.runs, args.out)


if __name__ == "__main__":
    sys.exit(main())
