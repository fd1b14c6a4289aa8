"""The report's first page: did the papers reproduce, the reviewers' questions, the methods at equal
compute, and the findings.

Everything here comes from one tidy DataFrame (``summary``: one row per setting × algorithm ×
budget, its seeds pooled) and from the tables the detail sections wrote. The questions and the
findings are short templates in ``questions.yaml`` whose numbers are cells of those tables, so a
sentence can only say what a table holds.
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import yaml

from . import baselines, budget, campaign, render
from . import common as c
from .paper import PaperNumbers
from .records import setting_name
from .render import TEXT, fmt, fmt_g, make_table, new_figure, save_figure

QUESTIONS = Path(__file__).with_name("questions.yaml")
SOURCES = ("imaml_t2", "imaml_t3", "maml_sinusoid")  # the papers' tables (paper_numbers.yaml) the first page checks
# Where a paper's number that we did not reach is explained by a measurement; any other row links its results.
EXPLAINED = {"iMAML-GD": "table-deviations_ladder", "iMAML-HF": "table-failures_by_algorithm",
             "Reptile": "table-deviations_reptile_ladder"}


def _budget(r: dict) -> str:
    if r.get("max_train_minutes") is not None:
        return f"{fmt_g(r['max_train_minutes'])} min"
    return "paper" if r.get("profile") == "paper" else r.get("profile") or "?"


def summary(rows: list[dict], bases: list[dict], judged: dict[str, dict]) -> pd.DataFrame:
    """One row per configuration (its seeds pooled): outcome counts, metric over seeds, cost, run folders."""
    pool = rows + bases
    out = []
    for runs in c.config_groups(c.records_sorted(pool)):
        r, g = runs[0], c.over_seeds(runs)
        base = baselines.is_baseline(r)
        done = g["done"]
        chance = [baselines.judge(x, [], pool)["status"] == baselines.LEARNED for x in done] if not base else []
        peaks = [x.get("alloc_peak_bytes") for x in runs if x.get("alloc_peak_bytes") is not None]
        rates = [x["median_iter_s"] for x in runs if x.get("median_iter_s") is not None]
        steps = {k: [x["by_steps"].get(k) for x in done if isinstance(x.get("by_steps"), dict)] for k in (1, 5, 10)}
        out.append({
            "dataset": r["dataset"], "setting": r["setting"], "label": r["label"],
            "role": "baseline" if base else "method", "budget": _budget(r), "minutes": r.get("max_train_minutes"),
            "metric": r.get("metric") or c.metric_of(r["dataset"]),
            "seeds": len(runs), "completed": g["n"], "diverged": sum(x["status"] == "diverged" for x in runs),
            "at_paper_budget": sum(c.budget_kind(x) is not None for x in done),
            "learned": sum(judged.get(x["run"], {}).get("status") == baselines.LEARNED for x in done),
            "beat_chance": sum(chance), "mean": g["mean"], "std": g["std"],
            "ci95": sum(x["ci95"] for x in done) / len(done) if done else math.nan,
            **{f"{stat}_{k}": c.mean_std([y for y in vals if y is not None])[i] if any(y is not None for y in vals)
               else math.nan for k, vals in steps.items() for i, stat in ((0, "mean"), (1, "std"))},
            "iterations_min": min(x["iterations_done"] for x in runs), "iterations_max":
                max(x["iterations_done"] for x in runs), "meta_iterations": r["meta_iterations"], "bn_mode": r.get("bn_mode"),
            "s_per_iter": sum(rates) / len(rates) if rates else math.nan,
            "peak_mib": max(peaks) / 2**20 if peaks else math.nan, "experiment": r.get("experiment"),
            "run": c.runs_text(runs)})
    return pd.DataFrame(out)


def outcome(s: pd.Series) -> str:
    """The vocabulary's word for a configuration's seeds."""
    if s["role"] == "baseline":
        return "a baseline"
    n, parts = s["completed"], []
    if n:
        words = "learned" if s["learned"] == n else ("beat chance only" if s["beat_chance"] == n and not s["learned"]
                                                    else "did not learn" if not s["learned"] and not s["beat_chance"]
                                                    else f"learned in {s['learned']} of {n}")
        parts.append(words)
    if s["diverged"]:
        parts.append(f"diverged in {s['diverged']} of {s['seeds']}")
    return "; ".join(parts) or "no result"


def _value(s: pd.Series, step: int | None = None) -> tuple[float, float]:
    """(mean, half-width of our interval): the larger of the std over seeds and the mean 95% CI over test tasks
    (the CI only where the number is the test metric itself)."""
    mean, std = (s[f"mean_{step}"], s[f"std_{step}"]) if step else (s["mean"], s["std"])
    ci = s["ci95"] if not step or step == 10 else math.nan
    spread = [v for v in (std, ci) if not render.is_missing(v)]
    return mean, max(spread) if spread else math.nan


def ours_text(s: pd.Series, step: int | None = None) -> str:
    scale, d = c.scale_of(s["metric"])
    mean, half = _value(s, step)
    if render.is_missing(mean):
        return "—"
    if s["completed"] == 1:
        return f"{fmt(mean, d, scale)} ± {fmt(half, d, scale)} (1 seed, ± 95% CI over tasks)"
    std = s[f"std_{step}"] if step else s["std"]
    return f"{fmt(mean, d, scale)} ± {fmt(std, d, scale)} ({s['completed']} seeds)"


def _plateau(s: pd.Series) -> str:
    """Where the declared plateau rule ended the configuration's runs before the paper's iterations, if it did."""
    return (f"ended by the plateau rule at {s['iterations_max']:,} of {s['meta_iterations']:,}"
            if s["iterations_max"] < s["meta_iterations"] else "")


def _hours_to_run(paper_row, table: pd.DataFrame, plan: list[dict]) -> tuple[str, float]:
    """'not run' with the CPU-hours it would take: the campaign's hours left where the plan holds it, else
    the planned iterations at the seconds per iteration a run of the same setting and algorithm measured."""
    planned = [p for p in plan if (p["dataset"], p["ways"], p["shots"], p["label"])
               == (paper_row.dataset, paper_row.ways, paper_row.shots, paper_row.label)]
    left = [p["cpu_hours_left"] for p in planned if p["status"] not in ("completed", "diverged")]
    if left and all(h is not None for h in left):
        saved = "".join(f", {p['name']} saved at {p['done']:,} of {p['target']:,} iterations" for p in planned
                        if p["status"] == "saved")
        return f"not run: in the campaign plan{saved}; ≈ {sum(left):.1f} CPU-h left (`make campaign-status`)", sum(left)
    timed = table[(table["dataset"] == paper_row.dataset) & (table["label"].str.lower() == paper_row.label.lower())
                  & (table["setting"] == setting_name(paper_row.dataset, paper_row.ways, paper_row.shots))
                  & table["s_per_iter"].notna()]
    if timed.empty:
        return "not run: no run of this setting to time", math.nan
    t = timed.iloc[0]
    hours = t["meta_iterations"] * t["s_per_iter"] / 3600
    amount = f"{hours:,.0f}" if hours >= 10 else f"{hours:.2g}"
    return (f"not run: ≈ {amount} CPU-h ({t['meta_iterations']:,} iterations at the {t['s_per_iter']:.2f} "
            f"s/iteration of {t['run']})"), hours


def reproduction(table: pd.DataFrame, paper: PaperNumbers, plan: list[dict], anchors: set[str]):
    """A row per published number: ours at the paper's budget (or ended by the declared rule) and a verdict.
    Below-budget runs never appear here."""
    out = []
    for key in dict.fromkeys((p.dataset, p.ways, p.shots, p.label, p.steps) for p in paper.results
                             if p.source in SOURCES):
        setting = setting_name(*key[:3])
        mine = table[(table["dataset"] == key[0]) & (table["setting"] == setting) & (table["budget"] == "paper")
                     & (table["label"].str.lower() == key[3].lower())]
        mine = mine[(mine["at_paper_budget"] > 0) | (mine["diverged"] > 0)]
        # the transductive number for a transductive run, else the papers' other number where they give one
        p = paper.lookup(*key[:4], None if mine.empty else c.clean(mine.iloc[0]["bn_mode"]), steps=key[4])
        where = f"{c.title(p.dataset, setting)}" + (f", {p.steps} step{'s' * (p.steps > 1)}" if p.steps else "")
        row = {"source": p.source, "setting": where, "label": p.label, "paper": p.value, "ours": "—",
               "ours_mean": math.nan, "seeds": 0, "run": "—", "cpu_hours": math.nan}
        if mine.empty:
            row["verdict"], row["cpu_hours"] = _hours_to_run(p, table, plan)
            variants = table[(table["dataset"] == p.dataset) & (table["setting"] == setting)
                             & (table["at_paper_budget"] > 0) & table["label"].str.startswith(p.label + " (")]
            row["verdict"] += "".join(f"; {v['label']} reached {ours_text(v)}"
                                      + (f", {_plateau(v)}" if _plateau(v) else " at the paper's budget")
                                      for _, v in variants.iterrows())
        else:
            s = mine.iloc[0]
            scale, _ = c.scale_of(s["metric"])
            mean, half = _value(s, p.steps)
            row.update(ours=ours_text(s, p.steps), ours_mean=mean * scale, seeds=int(s["completed"]), run=s["run"])
            explained = EXPLAINED.get(p.label) if s["diverged"] or not c.is_regression(p.dataset) else None
            anchor = next((a for a in (explained, "table-" + c.slug("protocols", p.dataset, setting, "paper"))
                           if a in anchors), None)
            why = f" ([why](#{anchor}))" if anchor else ""
            diverged = f"diverged in {s['diverged']} of {s['seeds']} seeds"
            if render.is_missing(mean):
                row["verdict"] = f"not reproduced: {diverged}{why}"
            else:
                row["verdict"] = ("reproduced" if abs(mean * scale - p.value) <= half * scale
                                  else f"not reproduced ({mean * scale - p.value:+.2f}){why}")
                row["verdict"] += ((f"; {diverged}" if s["diverged"] else "")
                                   + (f"; {_plateau(s)}" if _plateau(s) else ""))
        out.append(row)
    cols = [("setting", "setting"), ("algorithm", "label"), ("paper", lambda r: fmt_g(r["paper"]), "paper", "source"),
            ("ours at the paper's budget", lambda r: r["ours"], "ours", "ours_mean", "seeds"), ("verdict", "verdict")]
    return make_table("reproduction", out, cols, [TEXT["reproduction_note"]], extra=("run", "cpu_hours"))


def equal_compute(table: pd.DataFrame):
    """Per equal-compute setting, one cell per algorithm: mean ± std over seeds and its outcome word."""
    eq = table[table["minutes"].notna()].copy()
    if eq.empty:
        return make_table("equal_compute", [], [("algorithm", str, "algorithm")]), eq
    eq["column"] = eq.apply(lambda s: f"{c.title(s['dataset'], s['setting'])} ({s['budget']})", axis=1)
    eq["cell"] = eq.apply(lambda s: f"{ours_text(s).split(' (')[0]} ({s['seeds']} seed{'s' * (s['seeds'] > 1)}"
                                    + (f", {s['completed']} completed" if s["completed"] < s["seeds"] else "")
                                    + f"; {outcome(s)})", axis=1)
    eq["algorithm"] = eq.apply(lambda s: s["label"] + (" (baseline)" if s["role"] == "baseline" else ""), axis=1)
    order = list(dict.fromkeys(eq["column"]))
    wide = eq.pivot_table(index="algorithm", columns="column", values="cell", aggfunc="first").reindex(columns=order)
    wide = wide.reindex(sorted(wide.index, key=lambda a: c.label_rank(a.replace(" (baseline)", ""))))
    rows = [{"algorithm": a, **r} for a, r in wide.fillna("—").iterrows()]
    cols = [("algorithm", "algorithm"), *((k, k) for k in order)]
    return make_table("equal_compute", rows, cols, [TEXT["equal_compute_note"]]), eq


def grid_figure(eq: pd.DataFrame, rows: list[dict], fig_dir: Path) -> Path | None:
    """One panel per equal-compute setting: validation metric vs training minutes, mean over seeds with a band
    from their minimum to their maximum, one colour per algorithm (``render.colour``)."""
    if eq.empty:
        return None
    import matplotlib.pyplot as plt

    n = eq["column"].nunique()
    ncols = 2 if n > 1 else 1
    nrows = math.ceil(n / ncols)
    new_figure()  # selects the Agg backend
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.0 * ncols, 3.6 * nrows), squeeze=False, layout="constrained")
    for ax, (key, sub) in zip(axes.flat, eq.groupby("column", sort=False)):
        for _, s in sub.iterrows():
            runs = [r for r in rows if (r["dataset"], r["setting"], r["label"], r.get("max_train_minutes"))
                    == (s["dataset"], s["setting"], s["label"], s["minutes"])]
            curves = [pts for pts in (budget.curve(r["folder"]) for r in runs if r.get("folder")) if pts]
            if not curves:
                continue
            scale, _ = c.scale_of(s["metric"])
            budget.plot_band(ax, [[(p[0], p[1] * scale) for p in pts] for pts in curves], render.colour(s["label"]),
                             s["algorithm"], band=True)
        ax.set_title(key, fontsize=9)
        budget.label_axes(ax, sub["metric"].iloc[0] == "mse", "training wall-clock (minutes)")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    return save_figure(fig, fig_dir / "equal_compute.png")


def cell(tables: dict[str, pd.DataFrame], spec: dict):
    """One number from a table the report wrote: ``table``, ``column``, an optional pandas ``where`` query,
    an ``agg`` (first, sum, max, min, median, mean, count) and a ``scale``; None when the table or row is missing."""
    df = tables.get(spec["table"])
    if df is None or spec["column"] not in df.columns:
        return None
    col = (df.query(spec["where"], engine="python") if spec.get("where") else df)[spec["column"]]
    agg = spec.get("agg", "first")
    if col.empty:
        return None
    value = (col.iloc[0] if agg == "first" else len(col) if agg == "count"
             else getattr(pd.to_numeric(col, errors="coerce"), agg)())
    if render.is_missing(value):
        return None
    return value * spec["scale"] if "scale" in spec else value


def fill(entry: dict, tables: dict[str, pd.DataFrame]) -> str | None:
    """An entry's template filled with its cells; None when a cell is missing."""
    values = {name: cell(tables, spec) for name, spec in (entry.get("cells") or {}).items()}
    if any(v is None for v in values.values()):
        return None
    return entry["answer"].format(**values)


def load_questions(path: Path = QUESTIONS) -> dict:
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def questions_table(doc: dict, tables: dict[str, pd.DataFrame], anchors: set[str]):
    out = [{"id": q["id"], "question": q["question"], "answer": fill(q, tables) or q.get("missing", "no records yet"),
            "evidence": f"[{q['evidence_name']}](#{q['evidence']})" if q["evidence"] in anchors else "—"}
           for q in doc["questions"]]
    cols = [("", "id"), ("question", "question"), ("answer (budget, seeds)", "answer"), ("evidence", "evidence")]
    return make_table("questions", out, cols)


def findings(doc: dict, tables: dict[str, pd.DataFrame], anchors: set[str]) -> list[str]:
    """The findings whose cells the tables hold, each with a link to its table where the report has it."""
    return [text + (f" ([table](#{f['evidence']}))" if f["evidence"] in anchors else "")
            for f in doc["findings"] if (text := fill(f, tables)) is not None]


def campaign_plan(runs_root: Path, table: pd.DataFrame) -> list[dict]:
    if not (runs_root / "campaign-cpu").is_dir():
        return []
    rates = {r["experiment"]: r["s_per_iter"] for _, r in table.iterrows()
             if r["experiment"] and not render.is_missing(r["s_per_iter"])}
    return campaign.runs(runs_root, rates)


def limitations(table: pd.DataFrame, paper: PaperNumbers, devices: list[str]):
    """At most 8 rows, each a limit of what the records can say, counted from the summary."""
    m = table[table["role"] == "method"]
    below = m[m["at_paper_budget"] < m["completed"].clip(lower=1)]
    frac = below["iterations_max"] / below["meta_iterations"]
    ran = set(zip(table["dataset"], table["setting"]))
    missing = sorted({(p.dataset, setting_name(p.dataset, p.ways, p.shots)) for p in paper.results} - ran)
    at_paper = sorted(set(m[m["at_paper_budget"] > 0]["dataset"]))
    unlearned = m[(m["learned"] < m["completed"])]
    measured = {
        "seeds": f"{(m['seeds'] == 1).sum()} of {len(m)} configurations have one seed",
        "budget": f"{len(below)} of {len(m)} configurations ran below the paper's budget "
                  f"({100 * frac.min():.2g}%–{100 * frac.max():.3g}% of its iterations)",
        "paper budget": f"reached on {', '.join(c.DATASET_NAMES.get(d, d) for d in at_paper) or 'no dataset'} only",
        "settings never run": ", ".join(f"{c.title(d, s)}" for d, s in missing) or "none",
        "stopped runs": f"{int(table['diverged'].sum())} runs diverged",
        "did not learn": f"{len(unlearned)} configurations have seeds that did not beat every baseline",
        "baselines": "classification is judged against chance (and baseline records, where there are any)",
        "devices": ", ".join(devices) or "none"}
    out = [dict(limit=row["limit"], measured=measured[row["limit"]], so=row["so"], anchor=row["anchor"])
           for row in load_questions()["limitations"]]
    cols = [("limit", "limit"), ("measured", "measured"),
            ("what it means", lambda r: f"{r['so']} ([table](#{r['anchor']}))", "so", "anchor")]
    return make_table("limitations", out, cols)
