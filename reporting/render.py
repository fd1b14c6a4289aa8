"""Tables and figures as files: Markdown, CSV, booktabs LaTeX and PNG, all deterministic.

A :class:`Table` carries two views of the same rows: display cells (strings, for Markdown
and LaTeX) and raw values (numbers, for CSV). The LaTeX writer is our own few lines, so
the report does not depend on jinja2 (pandas' ``to_latex`` needs it).
"""
from __future__ import annotations

import functools
import io
import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

import catalog
from atomic import atomic_write_bytes, atomic_write_text

DPI = 100
TEXT: dict[str, str] = yaml.safe_load(Path(__file__).with_name("text.yaml").read_text(encoding="utf-8"))


@dataclass
class Table:
    name: str                          # file stem under tables/
    headers: list[str]                 # display headers
    cells: list[list[str]]             # display rows
    raw: pd.DataFrame                  # raw values, written as CSV
    notes: list[str] = field(default_factory=list)


def make_table(name: str, rows: Sequence[dict], columns: Sequence[tuple[Any, ...]], notes: Sequence[str] = (),
               extra: Sequence[str] = ()) -> Table:
    """A table of row dicts. A column is ``(header, row → cell text, *keys)``, ``keys`` the row values the
    cell shows, or ``(header, key)``: the key's value as text. ``notes``: lines under the table. The CSV
    holds every column's keys in column order, then ``extra`` (keys no cell shows), each key once; a list
    value as ``a;b``."""
    columns = [(c[0], (lambda k: lambda r: str(r[k]))(c[1]), c[1]) if isinstance(c[1], str) else c for c in columns]
    keys = list(dict.fromkeys([*(k for col in columns for k in col[2:]), *extra]))
    csv_value = lambda v: ";".join(map(str, v)) if isinstance(v, (list, tuple)) else v  # noqa: E731
    raw = pd.DataFrame([{k: csv_value(r.get(k)) for k in keys} for r in rows], columns=keys)
    return Table(name, [col[0] for col in columns], [[col[1](r) for col in columns] for r in rows], raw, list(notes))


def compact(t: Table) -> Table:
    """The main-text view of a table: a column whose cells are all equal (over two or more rows)
    says nothing per row, so it moves into the caption ("All rows: seed 0; device cpu.")."""
    constant = [i for i in range(len(t.headers)) if len(t.cells) > 1 and len({row[i] for row in t.cells}) == 1]
    if not (constant := constant[1:] if len(constant) == len(t.headers) else constant):  # keep one column
        return t
    keep = [i for i in range(len(t.headers)) if i not in constant]
    caption = "All rows: " + "; ".join(f"{t.headers[i]} {t.cells[0][i]}" for i in constant) + "."
    return Table(t.name, [t.headers[i] for i in keep], [[row[i] for i in keep] for row in t.cells], t.raw,
                 [caption, *t.notes])


# ---------------------------------------------------------------- number formatting
def is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _dash(fn: Callable[..., str]) -> Callable[..., str]:
    """``fn``, returning '—' where its first argument is missing."""
    @functools.wraps(fn)
    def text(v: Any, *args, **kwargs) -> str:
        return "—" if is_missing(v) else fn(v, *args, **kwargs)
    return text


@_dash
def fmt(v: Any, digits: int = 2, scale: float = 1.0) -> str:
    """Fixed-point text of a number ('—' when missing); a blown-up one (≥ 1e6) in scientific notation."""
    x = float(v) * scale
    return f"{x:.{digits}e}" if abs(x) >= 1e6 else f"{x:.{digits}f}"


@_dash
def fmt_pm(mean: Any, pm: Any, digits: int = 2, scale: float = 1.0) -> str:
    return fmt(mean, digits, scale) if is_missing(pm) else f"{fmt(mean, digits, scale)} ± {fmt(pm, digits, scale)}"


@_dash
def fmt_g(v: Any) -> str:
    """Shortest faithful text of a configuration number (1e-3 → '0.001', 2.0 → '2')."""
    return str(int(v)) if isinstance(v, float) and v.is_integer() and abs(v) < 1e15 else f"{v:g}"


@_dash
def fmt_p(p: Any) -> str:
    return "<0.0001" if p < 1e-4 else f"{p:.4f}"


# ---------------------------------------------------------------- writers
def to_markdown(t: Table) -> str:
    line = lambda cells: "| " + " | ".join(str(x).replace("|", "\\|").replace("\n", " ") for x in cells) + " |"  # noqa: E731
    return "\n".join([line(t.headers), "|" + "|".join("---" for _ in t.headers) + "|", *map(line, t.cells)]) + "\n"


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
        "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
        "±": r"$\pm$", "λ": r"$\lambda$", "≥": r"$\geq$", "≤": r"$\leq$", "×": r"$\times$",
        "—": "---", "–": "--", "−": "-", "≈": r"$\approx$", "†": r"\textdagger{}", "→": r"$\to$",
        "<": r"\textless{}", ">": r"\textgreater{}"}


def write_table(t: Table, tables_dir: Path) -> list[Path]:
    """The table's raw values as CSV and its display cells as a booktabs LaTeX tabular, under ``tables_dir``."""
    row = lambda cells: " & ".join("".join(_TEX.get(ch, ch) for ch in str(x)) for x in cells) + r" \\"  # noqa: E731
    tex = ["% generated by report.py from run records; do not edit", r"\begin{tabular}{" + "l" * len(t.headers) + "}",
           r"\toprule", row(t.headers), r"\midrule", *map(row, t.cells), r"\bottomrule", r"\end{tabular}"]
    atomic_write_text(tables_dir / f"{t.name}.csv", t.raw.to_csv(index=False, lineterminator="\n", float_format="%.10g"))
    atomic_write_text(tables_dir / f"{t.name}.tex", "\n".join(tex) + "\n")
    return [tables_dir / f"{t.name}.csv", tables_dir / f"{t.name}.tex"]


def save_figure(fig, path: Path) -> Path:
    """PNG at a fixed dpi without the 'Software' text chunk, so equal inputs give equal bytes."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def new_figure(ncols: int = 1, width: float = 6.4, height: float = 4.0):
    """A figure with ``ncols`` axes on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False, layout="constrained")
    return fig, list(axes[0])


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
# One colour per algorithm label, everywhere in the report: the labels the configs give, in report
# order (catalog.label_order), take the palette in turn; any other label (your own method) a colour
# of its own from the rest of the palette, chosen by its name so that it never changes.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#98df8a", "#d62728", "#9467bd", "#8c564b", "#7f7f7f", "#e377c2",
           "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#c5b0d5")


def colour(label: str) -> str:
    known = catalog.label_order()
    if label in known:
        return PALETTE[known.index(label) % len(PALETTE)]
    rest = PALETTE[len(known):] or PALETTE
    return rest[zlib.crc32(label.encode()) % len(rest)]


def log_x(ax, values) -> None:
    """Log-scaled x axis ticked at the measured values, labelled as plain numbers."""
    from matplotlib.ticker import NullFormatter, NullLocator

    ticks = sorted({float(v) for v in values if v == v})
    if not ticks or ticks[0] <= 0:
        return
    ax.set_xscale("log")
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xticks(ticks, [fmt_g(t) for t in ticks])
