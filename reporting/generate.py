"""Build ``REPORT.md``, ``tables/*.csv|.tex`` and ``figures/*.png`` from the run records.

Deterministic: records are read in sorted order, every table is sorted, the only text that
depends on the machine is what the records hold, and stale generated files are removed,
so the same records give a byte-identical report folder.
"""
from __future__ import annotations

import sys
from pathlib import Path

from atomic import atomic_write_text

from . import budget, paired, studies, tables
from . import common as c
from .paper import PaperNumbers, load_paper_numbers
from .records import STATUSES, STUDY_FILES, Records, Skipped, load
from .render import Table, make_table, to_markdown, write_table

GENERATED_EXT = (".csv", ".tex", ".png")


class Writer:
    """Writes tables and figures under ``out`` and returns the Markdown that shows them."""

    def __init__(self, out: Path):
        self.out, self.fig_dir, self.tab_dir = out, out / "figures", out / "tables"
        self.files: set[Path] = set()

    def table(self, t: Table) -> str:
        if not t.cells:
            return "\nNo rows.\n"
        self.files.update(write_table(t, self.tab_dir))
        notes = "".join(f"\n{n}\n" for n in t.notes)
        return (f"\n{to_markdown(t)}{notes}\n"
                f"Files: [`tables/{t.name}.csv`](tables/{t.name}.csv), [`tables/{t.name}.tex`](tables/{t.name}.tex)\n")

    def figure(self, path: Path, caption: str) -> str:
        self.files.add(path)
        return f"\n![{caption}](figures/{path.name})\n"

    def remove_stale(self) -> None:
        for folder in (self.tab_dir, self.fig_dir):
            if folder.is_dir():
                for f in sorted(folder.iterdir()):
                    if f.suffix in GENERATED_EXT and f not in self.files:
                        f.unlink()


def _no_runs(command: str) -> str:
    return f"\nno runs yet: run `{command}`\n"


def _train_sections(recs: Records, paper: PaperNumbers, w: Writer) -> list[str]:
    rows = c.records(recs.runs)
    out = ["## 1. Runs\n" + (w.table(tables.inventory(rows)) if rows else _no_runs("make reproduce"))]

    text = ("## 2. Published protocols at an equal training-time budget\n\nEach algorithm runs with the settings "
            "its authors published for the dataset (`configs/experiment/`), for the same minutes of training on "
            "the same machine, and is tested on the same fixed test tasks with its own protocol's test-time "
            "adaptation. This measures what each method reaches in that budget, not the paper's number.\n")
    by_budget = budget.groups(rows)
    for key, members in by_budget.items():
        text += f"\n### {budget.budget_title(*key, members)}\n" + w.table(budget.protocol_table(key, members))
        fig = budget.curves_figure(key, members, w.fig_dir)
        if fig is not None:
            text += w.figure(fig, "Validation metric vs training wall-clock") + (
                "\nLines: the validation metric on the fixed validation tasks (`eval.val_tasks`, 30 in `make "
                "reproduce`) during training; stars: the final test on the fixed test tasks.\n")
    out.append(text if by_budget else text + _no_runs("make reproduce"))

    sweep = [r for r in rows if budget.is_sweep(r)]
    rows = [r for r in rows if not budget.is_sweep(r)]  # tables 3-5, pairs and claims: comparison a
    omni = [r for r in rows if r["dataset"] == "omniglot"]
    text = "## 3. Omniglot — iMAML Table 2 (5w1s / 5w5s / 20w1s / 20w5s)\n"
    text += (w.table(tables.paper_table("table2_omniglot", omni, paper, tables.omniglot_notes(paper))) if omni
             else _no_runs("make reproduce") + "(Omniglot 5-way 1-shot; other settings: "
                  "`python train.py dataset=omniglot ways=20 shots=1`, needs the Omniglot data)\n")
    out.append(text)

    mini = [r for r in rows if r["dataset"] == "miniimagenet"]
    text = "## 4. mini-ImageNet — iMAML Table 3 (5w1s / 5w5s)\n"
    text += (w.table(tables.paper_table("table3_miniimagenet", mini, paper, tables.miniimagenet_notes(paper)))
             if mini else _no_runs("python train.py dataset=miniimagenet") + "(needs the mini-ImageNet data)\n")
    out.append(text)

    sin = [r for r in rows if r["dataset"] == "sinusoid"]
    out.append("## 5. Sinusoid regression — MAML paper\n"
               + (w.table(tables.sinusoid_table(sin, paper)) if sin else _no_runs("make reproduce")))

    groups = tables.inner_steps_groups(sweep)
    text = ("## 6. Shared protocol: accuracy and MSE vs inner steps\n\nEvery algorithm uses the same inner loop "
            "(the MAML protocol's SGD step size and meta-batch; iMAML with λ = 2 and 5 CG steps) and sweeps the "
            "number of inner steps K, each run for the same minutes of training (`make sweep`). Sinusoid is tested "
            "after 10 steps (the MAML protocol), Omniglot after K.\n")
    if groups:
        text += w.table(tables.inner_steps_table(groups))
        figures = tables.inner_steps_figures(groups, w.fig_dir)
        text += "".join(w.figure(p, "Test metric vs inner steps") for p in figures)
    else:
        text += _no_runs("make sweep") + "(needs one algorithm trained at two or more inner-step counts)\n"
    out.append(text)

    pairs, refused, notes = paired.compare_all(rows)
    text = ("## 7. Paired comparisons on identical test tasks\n\nEvery algorithm is evaluated on the same "
            "seeded test tasks; two runs are compared task by task only when their test-task fingerprints "
            "match.\n")
    text += w.table(paired.paired_table(pairs)) if pairs else (
        "\nno pairs yet: needs two algorithms evaluated on the same test tasks; run `make reproduce`\n")
    if refused:
        text += "\n### Refused pairs (different test tasks)\n" + w.table(paired.refused_table(refused))
    if notes:
        text += "\n### Not paired\n\n" + "".join(f"- {n}\n" for n in notes)
    out.append(text)
    claims, claim_rows = paired.claims_table(paper.claims, pairs, refused, rows)
    text = ("## 8. The papers' claims\n\nA claim gets a verdict only from runs at the paper's budget; below it, "
            "it reads 'not tested at paper budget' and the comparison that was measured is shown with its budget "
            "in the next table.\n" + w.table(claims))
    at_budget = paired.budget_claims_table(claim_rows)
    if at_budget.cells:
        text += "\n### The claims' comparisons at the budgets measured\n" + w.table(at_budget)
    out.append(text)
    return out


def _study_sections(recs: Records, w: Writer, skipped: list[Skipped]) -> str:
    text = "## 9. Reviewer studies\n"
    for i, name in enumerate(studies.SECTIONS, 1):
        text += f"\n### 9.{i} {studies.TITLES[name]}\n"
        command = f"python study.py study={name}"
        for study, others in studies.picks(recs.studies, name):
            if study is None:
                text += _no_runs(command)
                continue
            text += f"\nFrom `{study['run']}` (status {study['status']}, device {study.get('device') or 'unknown'})"
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


def _skipped_section(skipped: list[Skipped], w: Writer) -> str:
    text = "## 10. Skipped records\n"
    if not skipped:
        return text + "\nnone\n"
    rows = [{"path": s.path, "reason": s.reason} for s in sorted(skipped, key=lambda s: (s.path, s.reason))]
    t = make_table("skipped", rows, [("record", lambda r: r["path"]), ("reason", lambda r: r["reason"])],
                   ("path", "reason"))
    return text + "\nThese records could not be read and are left out of every table above.\n" + w.table(t)


def _header(recs: Records, runs_name: str, n_skipped: int) -> str:
    counts = recs.runs["status"].value_counts().to_dict() if not recs.runs.empty else {}
    status = ", ".join(f"{counts[s]} {s}" for s in STATUSES if counts.get(s))
    return ("# metagrad-bench — results report\n\n"
            f"Generated by `python report.py` from the run records under `{runs_name}/` "
            "(each run's `summary.json` and `metrics.csv`, each study's `study.json` and CSVs): "
            f"{len(recs.runs)} training run(s){f' ({status})' if status else ''}, {len(recs.studies)} study run(s), "
            f"{n_skipped} skipped record(s). Every number traces to the run folder(s) named in its row "
            f"(paths start at `{runs_name.rsplit('/', 1)[-1]}/`). Tables are also written to `tables/` as CSV and booktabs LaTeX, "
            "figures to `figures/`.\n\n"
            f"{c.NOT_PAPER} marks a result below the paper's budget (the `cpu` profile, or a run stopped early): "
            "it checks the pipeline, not the paper's number.\n")


def generate(runs_root: Path, out: Path, paper: PaperNumbers | None = None) -> Path:
    """Write the report folder; returns the path of ``REPORT.md``."""
    runs_root, out = Path(runs_root), Path(out)
    paper = paper or load_paper_numbers()
    recs = load(runs_root)
    skipped = list(recs.skipped)
    w = Writer(out)
    body = _train_sections(recs, paper, w)
    body.append(_study_sections(recs, w, skipped))
    body.append(_skipped_section(skipped, w))
    shown = runs_root.name if runs_root.is_absolute() else runs_root.as_posix()
    text = _header(recs, shown or "runs", len(skipped)) + "\n" + "\n".join(body)
    report = out / "REPORT.md"
    atomic_write_text(report, text)
    w.files.add(report)
    w.remove_stale()
    return report


def main(runs: str, out: str) -> int:
    runs_root = Path(runs)
    if not runs_root.is_dir():
        print(f"report: no runs folder at {runs_root}; the report will say 'no runs yet' "
              "(train with `make reproduce` or pass --runs)", file=sys.stderr)
    report = generate(runs_root, Path(out))
    print(f"report: wrote {report}")
    return 0
