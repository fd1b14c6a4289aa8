"""Build ``REPORT.md``, ``tables/*.csv|.tex`` and ``figures/*.png`` from the run records.

Deterministic: records are read in sorted order, every table is sorted, the only text that
depends on the machine is what the records hold, and stale generated files are removed,
so the same records give a byte-identical report folder.
"""
from __future__ import annotations

import sys
from pathlib import Path

from atomic import atomic_write_text

from . import anatomy, baselines, budget, front, paired, studies, tables
from . import common as c
from .paper import load_paper_numbers
from .records import STATUSES, STUDY_FILES, Skipped, load
from .render import TEXT, Table, compact, make_table, to_markdown, write_table


class Writer:
    """Writes tables and figures under ``out`` and returns the Markdown that shows them: the
    main-text view of a table drops its constant columns into the caption; the files keep all."""

    def __init__(self, out: Path):
        self.fig_dir, self.tab_dir = out / "figures", out / "tables"
        self.files: set[Path] = set()
        self.raw: dict = {}  # table name → its raw DataFrame, the cells the first page quotes

    def files_only(self, t: Table) -> str:
        self.files.update(write_table(t, self.tab_dir))
        self.raw[t.name] = t.raw
        return f"[`tables/{t.name}.csv`](tables/{t.name}.csv), [`tables/{t.name}.tex`](tables/{t.name}.tex)"

    def table(self, t: Table) -> str:
        if not t.cells:
            return "\nNo rows.\n"
        links, view = self.files_only(t), compact(t)
        notes = "".join(f"\n{n}\n" for n in view.notes)
        return f'\n<a id="table-{t.name}"></a>\n\n{to_markdown(view)}{notes}\nFiles: {links}\n'

    def figure(self, path: Path, caption: str) -> str:
        self.files.add(path)
        return f"\n![{caption}](figures/{path.name})\n"

    def remove_stale(self) -> None:
        for folder in (self.tab_dir, self.fig_dir):
            for f in sorted(folder.iterdir()) if folder.is_dir() else ():
                if f.suffix in (".csv", ".tex", ".png") and f not in self.files:
                    f.unlink()


def _no_runs(command: str) -> str:
    return f"\nno runs yet: run `{command}`\n"


def _heading(anchor: str, title: str) -> str:
    return f'<a id="{anchor}"></a>\n\n## {title}\n'


def _protocols(rows, judged, w, pool, plan: list[dict]) -> str:
    text = TEXT["protocols_intro"]
    by_budget = budget.groups(rows)
    for key, members in by_budget.items():
        text += f"\n### {budget.budget_title(*key, members)}\n"
        text += w.table(budget.setup_table(key, members)) + w.table(budget.protocol_table(key, members, judged, pool))
        running = budget.unfinished(key, plan)
        if (fig := budget.curves_figure(key, members, w.fig_dir, running)) is not None:
            caption = "Validation metric vs training wall-clock" + (" and meta-iterations" if key[2] is None else "")
            text += w.figure(fig, caption) + TEXT["curves_caption"] + (TEXT["unfinished_caption"] if running else "")
    return text if by_budget else text + _no_runs("make reproduce")


def _paired(rows, judged, w) -> str:
    pairs, refused, notes = paired.compare_all(rows)
    text = TEXT["paired_intro"]
    if pairs:
        text += "".join(f"\n### {title}\n" + w.table(t)
                        for title, t in paired.matrix_tables(pairs, baselines.statuses(judged)))
        text += f"\nEvery comparison with its p-values and task counts: {w.files_only(paired.long_table(pairs))}\n"
    else:
        text += "\nno pairs yet: needs two algorithms evaluated on the same test tasks; run `make reproduce`\n"
    if refused:
        text += "\n### Refused pairs (different test tasks)\n" + w.table(paired.refused_table(refused))
    return text + ("\n### Not paired\n\n" + "".join(f"- {n}\n" for n in notes) if notes else "")


def _study_sections(studies_list, w, skipped: list[Skipped]) -> str:
    text = ""
    for i, name in enumerate(studies.SECTIONS, 1):
        text += f"\n### 6.{i} {studies.TITLES[name]}\n"
        command = f"python study.py study={name}"
        for study, others in studies.picks(studies_list, name):
            if study is None:
                text += _no_runs(command)
                continue
            text += (f"\n{studies.ran_on(study)} From `{study['run']}` (status {study['status']}, device "
                     f"{study.get('device_name') or study.get('device') or 'unknown'})")
            text += f"; other runs of this study, not shown: {', '.join(others)}.\n" if others else ".\n"
            if STUDY_FILES[name][0] not in study["tables"]:
                text += f"\nno results in this run: rerun `{command}`\n"
                continue
            try:
                text += studies.SECTIONS[name](study, w)
            except Exception as e:  # a malformed study CSV must not take the whole report down
                skipped.append(Skipped(study["run"], f"{name} study could not be summarised: {type(e).__name__}: {e}"))
                text += "\nThis study's records could not be summarised; see Skipped records.\n"
    return text


def _first_page(table, rows, bases, paper, plan: list[dict], w: Writer, body: str) -> str:
    """The answers before any detail (``reporting/front.py``); quotes cells of the tables ``body`` wrote."""
    anchors = ({a.split('"')[1] for a in body.split("<a id=")[1:]} | {f"table-{n}" for n in w.raw}
               | {"table-reproduction", "table-equal_compute"})
    if table.empty:
        return "\nNo records yet: run `make reproduce`.\n"
    w.files_only(make_table("summary", table.to_dict("records"), [(k, k) for k in table.columns]))
    repro = front.reproduction(table, paper, plan, anchors)
    eq, eq_rows = front.equal_compute(table)
    text = _heading("reproduce", "Did the papers reproduce?") + w.table(repro) + "\n"
    if "claims" in w.raw:
        text += (_heading("claims-summary", "The papers' claims")
                 + w.table(front.claims(paper.claims, w.raw["claims"], repro.raw)) + "\n")
    doc = front.load_questions()
    w.raw.update({"reproduction": repro.raw, "summary": table})
    text += (_heading("questions", "The reviewers' questions") + TEXT["questions_intro"]
             + w.table(front.questions_table(doc, w.raw, anchors)) + "\n")
    text += _heading("equal-compute", "At equal compute") + w.table(eq)
    if (fig := front.grid_figure(eq_rows, rows + bases, w.fig_dir)) is not None:
        caption = "Validation metric vs training wall-clock, mean over seeds with a min–max band"
        text += w.figure(fig, caption) + TEXT["grid_caption"]
    found = "".join(f"{i}. {f}\n" for i, f in enumerate(front.findings(doc, w.raw, anchors), 1))
    return text + "\n" + _heading("findings", "Findings") + "\n" + (found or "No findings yet: no records.\n")


def generate(runs_root: Path, out: Path) -> Path:
    """Write the report folder; returns the path of ``REPORT.md``. Extra study records are read from
    ``bench_tta`` beside ``runs_root`` (none when it does not exist)."""
    runs_root, out, paper = Path(runs_root), Path(out), load_paper_numbers()
    bench = runs_root.parent / "bench_tta"
    recs, extra = load(runs_root), load(bench)
    skipped = recs.skipped + extra.skipped
    w = Writer(out)
    all_rows, base_rows = baselines.split(c.records_sorted([{k: c.clean(v) for k, v in r.items()}
                                                            for r in recs.runs.to_dict("records")]))
    judged = baselines.judge_all(all_rows, base_rows)
    sweep = [r for r in all_rows if budget.is_sweep(r)]
    rows = [r for r in all_rows if not budget.is_sweep(r)]
    bases = [r for r in base_rows if not budget.is_sweep(r)]
    # a claim against a trained baseline network is paired like any other: its records join the pairing
    # here, not the algorithm matrices of section 2
    claim_rows = rows + [b for b in bases if b["label"] == "Pretrained"]
    claim_pairs, claim_refused, _ = paired.compare_all(claim_rows)
    summary = front.summary(rows, bases, judged)
    devices = sorted({r.get("device_name") or r.get("device") or "?" for r in rows + bases})
    labels = {r.get("experiment"): r["label"] for r in rows + bases}
    plan = front.campaign_plan(runs_root)
    sections = [  # (anchor, heading, text), built in this order: the study sections add to ``skipped``
        ("protocols", "1. Published protocols at an equal training-time budget",
         _protocols(c.records_sorted(rows + bases), judged, w, all_rows + base_rows, plan)),
        ("paired", "2. Paired comparisons on identical test tasks", _paired(rows, judged, w)),
        ("inner-steps", "3. Shared protocol: test metric vs inner steps", TEXT["inner_steps_intro"] + (
            tables.sweep_section(sweep, w)
            or _no_runs("make sweep") + "(needs one algorithm trained at two or more inner-step counts)\n")),
        ("claims", "4. The papers' claims", w.table(paired.claims_table(
            paper.claims, claim_pairs, claim_refused, claim_rows, baselines.statuses(judged)))),
        ("time-to-accuracy", "5. Time to accuracy (wall-clock)", TEXT["tta_intro"]),
        ("studies", "6. Reviewer studies",
         _study_sections(sorted(recs.studies + extra.studies, key=lambda s: s["run"]), w, skipped)),
        ("assumptions-fail", "7. When the assumptions fail", anatomy.fidelity_section(rows, w)
         + "\n### Where each method fails (R3.1)\n" + anatomy.section(rows, judged, runs_root, w)),
        ("limitations", "8. Limitations", (
            w.table(front.limitations(summary, paper, devices)) if not summary.empty
            else "\nNo records yet, so nothing has been measured.\n") + (
            "\nProtocol choices not taken from a paper, tuned on validation tasks only:\n"
            + w.table(tables.selection_table(recs.selections, labels)) if recs.selections else "")),
        ("inventory", "Appendix A. Run inventory", (
            "\nEvery readable training record with its status, result, device and commit: "
            f"{w.files_only(tables.inventory(all_rows + base_rows))}\n" if all_rows + base_rows
            else _no_runs("make reproduce"))),
        ("skipped", "Appendix B. Skipped records", (
            "\nThese records could not be read and are left out of every table above.\n"
            + w.table(make_table("skipped", [vars(s) for s in sorted(skipped, key=lambda s: (s.path, s.reason))],
                                 [("record", "path"), ("reason", "reason")])) if skipped else "\nnone\n")),
    ]
    body_text = "\n".join(_heading(anchor, title) + text for anchor, title, text in sections)
    first = _first_page(summary, rows, bases, paper, plan, w, body_text)
    counts = recs.runs["status"].value_counts().to_dict() if not recs.runs.empty else {}
    status = ", ".join(f"{counts[s]} {s}" for s in STATUSES if counts.get(s))
    header = TEXT["header"].format(
        runs=(runs_root.name if runs_root.is_absolute() else runs_root.as_posix()) or "runs", n_runs=len(recs.runs),
        status=f" ({status})" if status else "", n_baselines=len(base_rows), n_studies=len(recs.studies),
        n_skipped=len(skipped))
    report = out / "REPORT.md"
    atomic_write_text(report, header + "\n" + TEXT["vocabulary"] + "\n\n" + first + TEXT["contents"] + "\n" + body_text)
    w.files.add(report)
    w.remove_stale()
    return report


def main(runs: str, out: str) -> int:
    runs_root = Path(runs)
    if not runs_root.is_dir():
        print(f"report: no runs folder at {runs_root}; the report will say 'no runs yet' "
              "(train with `make reproduce` or pass --runs)", file=sys.stderr)
    print(f"report: wrote {generate(runs_root, Path(out))}")
    return 0
