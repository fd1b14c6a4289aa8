"""The ``summary.json`` section of ``SCHEMA.md`` beside the report, generated from the record's model
(:mod:`trainer.record`).

    python tools/schema_doc.py          # rewrite the section in SCHEMA.md
    python tools/schema_doc.py --check  # exit 1 if the committed file differs from the model

The section lies between two marker lines; the rest of SCHEMA.md (the other files of a run
folder, the study records) stays as written.
"""
from __future__ import annotations

import sys
import typing
from pathlib import Path
from types import NoneType, UnionType
from typing import Any, Literal

from pydantic import BaseModel

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from atomic import atomic_write_text  # noqa: E402
from trainer import record  # noqa: E402

SCHEMA_MD = ROOT / "reports" / "SCHEMA.md"
BEGIN = "<!-- summary.json: generated from trainer/record.py by tools/schema_doc.py; do not edit by hand -->"
END = "<!-- end of the generated summary.json section -->"


def type_text(t: Any) -> str:
    """A field's type in words: `int`, `float or null`, one of the literal values, a sub-record's name."""
    origin, args = typing.get_origin(t), typing.get_args(t)
    if t is NoneType:
        return "null"
    if t is Any:
        return "any"
    if origin is Literal:
        return " or ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, UnionType):
        return " or ".join(type_text(a) for a in args)
    if origin is list:
        return f"list of {type_text(args[0])}"
    if origin is dict:
        return f"object of {type_text(args[1])}"
    if isinstance(t, type) and issubclass(t, BaseModel):
        return f"[{t.__name__}](#{t.__name__.lower()})"
    return f"`{t.__name__}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table(model: type[BaseModel]) -> str:
    rows = ["| key | type | column | meaning |", "|---|---|---|---|"]
    for name, f in model.model_fields.items():
        extra = f.json_schema_extra or {}
        column = f"`{extra['column']}`" if "column" in extra else ("its columns" if extra.get("flatten") else "")
        default = "" if f.is_required() else f" (default `{'null' if f.default is None else f.default}`)"
        rows.append(f"| `{f.alias or name}` | {_cell(type_text(f.annotation))} | {column} | "
                    f"{_cell((f.description or '') + default)} |")
    return "\n".join(rows) + "\n"


def sub_records(model: type[BaseModel], seen: list | None = None) -> list[type[BaseModel]]:
    """``model`` and every sub-record it holds, depth first, each once."""
    seen = [] if seen is None else seen
    if model not in seen:
        seen.append(model)
        for f in model.model_fields.values():
            for t in (f.annotation, *typing.get_args(f.annotation)):
                if isinstance(t, type) and issubclass(t, BaseModel):
                    sub_records(t, seen)
    return seen


def derived_columns() -> str:
    props = [(a.fget.column, " ".join((a.fget.__doc__ or "").split())) for m in sub_records(record.Record)
             for a in vars(m).values() if isinstance(a, property) and hasattr(a.fget, "column")]
    return "".join(f"- `{col}`{': ' + doc if doc else ''}\n" for col, doc in props)


def section() -> str:
    """The generated ``summary.json`` section."""
    models = sub_records(record.Record)
    out = [BEGIN, "", "### `summary.json`", "",
           f"Schema version {record.SCHEMA_VERSION}. Written atomically (temporary file + rename) by the trainer "
           "through `trainer.record.Record` when the run starts (`status` `running`) and when it ends, fails or is "
           "interrupted; the report reads it through the same model. A record of schema 1 is rewritten by "
           "`python tools/migrate_records.py` (the report reads one as that script would rewrite it). `column` is "
           "the key's name in the report's table of runs (`reporting.records`); a record that does not validate is "
           "skipped with the reason.", ""]
    for m in models:
        extra = "" if m.model_config.get("extra") == "forbid" else " Keys beyond these are kept."
        doc = (m.__doc__ or "").strip().replace("\n", " ")
        out += [f"#### {m.__name__}" if m is not record.Record else "#### Record", ""]
        if doc or extra:
            out += [f"{doc}{extra}".strip(), ""]
        out.append(table(m))
    out += ["Derived columns of the table of runs:", "", derived_columns(), END]
    return "\n".join(out)


def render(text: str) -> str:
    """``text`` (SCHEMA.md) with its generated section replaced by :func:`section`."""
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return head + section() + tail


def main(argv: list[str]) -> int:
    text = SCHEMA_MD.read_text()
    new = render(text)
    if "--check" in argv:
        if new != text:
            print(f"{SCHEMA_MD} is not the model's: run python tools/schema_doc.py", file=sys.stderr)
            return 1
        return 0
    atomic_write_text(SCHEMA_MD, new)
    print(f"schema_doc: wrote {SCHEMA_MD}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
