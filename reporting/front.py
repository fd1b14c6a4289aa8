"""The report's first page: did the papers reproduce, the reviewers' questions, the methods at equal compute,
and the findings.

Everything here comes from one tidy DataFrame (``summary``: one row per setting × algorithm × budget, its seeds
pooled) and from the tables the detail sections wrote. The questions and the findings are short templates in
``questions.yaml`` whose numbers are cells of those tables, so a sentence can only say what a table holds.
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import yaml

from . import budget, campaign, render
from . import common as c
from .paper import PaperNumbers
from .records import setting_name
from .render import TEXT, fmt, fmt_g, make_table, new_figure, save_figure

QUESTIONS = Path(__file__).with_name("questions.yaml")
SOURCES = ("imaml_t2", "imaml_t3", "maml_sinusoid")  # the papers' tables (paper_numbers.yaml) the first page checks
# Where a paper's number that we did not reach is explained by a measurement; any other row links its results.
EXPLAINED = {"iMAML-GD": "table-deviations_ladder", "iMAML-HF": "table-failures_by_algorithm",
             "Reptile": "table-deviations_reptile_ladder"}


def summary(rows: list[dict], bases: list[dict], judged: dict[str, dict]) -> pd.DataFrame:
    """One row per configuration, its seeds pooled (:func:`budget.pooled`)."""
    pool = rows + bases
    return pd.DataFrame([budget.pooled(runs, judged, pool) for runs in c.config_groups(c.records_sorted(pool))])


def outcome(s: pd.Series) -> str:
    """The vocabulary's word for a configuration's seeds."""
    if s["role"] == "baseline":
        return "a baseline"
    n, learned, chance = s["completed"], s["learned"], s["beat_chance"]
    words = [] if not n else ["learned" if learned == n else "beat chance only" if chance == n and not learned
                              else "did not learn" if not learned and not chance else f"learned in {learned} of {n}"]
    if s["diverged"]:
        words.append(f"diverged in {s['diverged']} of {s['seeds']}")
    return "; ".join(words) or "no result"


def _pm(s: pd.Series, step: int | None = None) -> str:
    """Ours as 'mean ± std over seeds', with one seed '± its 95% CI over test tasks' (the test metric only)."""
    scale, d = c.scale_of(s["metric"])
    mean, std = (s[f"mean_{step}"], s[f"std_{step}"]) if step else (s["mean"], s["std"])
    spread = s["ci95"] if s["completed"] == 1 and step in (None, 10) else std
    return "—" if render.is_missing(mean) else f"{fmt(mean, d, scale)} ± {fmt(spread, d, scale)}"


def ours_text(s: pd.Series, step: int | None = None) -> str:
    seeds = "1 seed, ± 95% CI over tasks" if s["completed"] == 1 else f"{s['completed']} seeds"
    return "—" if render.is_missing(s[f"mean_{step}" if step else "mean"]) else f"{_pm(s, step)} ({seeds})"


def _plateau(s: pd.Series) -> str:
    """Where the declared plateau rule ended the configuration's runs before the paper's iterations, if it did."""
    lo, hi = s["iterations_min"], s["iterations_max"]
    at = f"{lo:,}–{hi:,}" if lo < hi and not s["diverged"] else f"{hi:,}"  # a diverged seed's count is no rule's
    return f"ended by the plateau rule at {at} of {s['meta_iterations']:,}" if hi < s["meta_iterations"] else ""


def _validated(run: dict) -> str:
    """An unfinished campaign run's latest validation (on its validation tasks, never a test result), in words."""
    if run["val"] is None:
        return ""
    val, ci = run["val"], run.get("val_ci95")
    if c.metric_of(run["dataset"]) == "accuracy":
        value = f"{100 * val:.1f}" + ("" if ci is None else f" ± {100 * ci:.1f}") + "%"
    else:
        value = f"MSE {val:.3g}" + ("" if ci is None else f" ± {ci:.2g}")
    return f" (validation {value} at {run['val_iter']:,})"


def _hours_to_run(paper_row, table: pd.DataFrame, plan: list[dict]) -> dict:
    """The row's ``verdict`` ('not run' with the CPU-hours it would take), ``needs`` (those hours, for the claims
    table), ``cpu_hours`` and ``in_campaign`` (whether the campaign plan holds it). Where it does: each of its runs not
    yet ended with its hours left, then its variants' (e.g. "iMAML-GD (release)", whose results are not the row's);
    the row's first result will come from the first, the run ``needs`` names. Else: the planned iterations at the
    seconds per iteration a run of the same setting and algorithm measured."""
    here = [p for p in plan if (p["dataset"], p["ways"], p["shots"]) == (paper_row.dataset, paper_row.ways,
                                                                         paper_row.shots)
            and p["status"] not in campaign.OUTCOMES]
    planned = [p for p in here if p["label"] == paper_row.label]
    if planned and all(p["cpu_hours_max"] is not None for p in planned):
        planned += [p for p in here if p["label"].startswith(f"{paper_row.label} (") and p["cpu_hours_max"] is not None]
        each = "; ".join(f"{p['name']} " + (f"at {p['done']:,} of {p['planned']:,} iterations" if p["done"]
                                            else "not started") + _validated(p) + f", {campaign.hours(p)}"
                         for p in planned)
        return {"verdict": f"not run: in the campaign plan ({each}; `make campaign-status`)", "in_campaign": True,
                "cpu_hours": planned[0]["cpu_hours_max"],
                "needs": f"{campaign.hours(planned[0])} in the campaign ({planned[0]['name']})"}
    timed = table[(table["dataset"] == paper_row.dataset) & (table["label"].str.lower() == paper_row.label.lower())
                  & (table["setting"] == setting_name(paper_row.dataset, paper_row.ways, paper_row.shots))
                  & table["s_per_iter"].notna()]
    if timed.empty:
        return {"verdict": "not run: no run of this setting to time", "needs": "no run to time"}
    t = timed.iloc[0]
    hours = t["meta_iterations"] * t["s_per_iter"] / 3600
    amount = f"{hours:,.0f}" if hours >= 10 else f"{hours:.2g}"
    return {"verdict": f"not run: ≈ {amount} CPU-h ({t['meta_iterations']:,} iterations at the {t['s_per_iter']:.2f} "
                       f"s/iteration of {t['run']})", "cpu_hours": hours, "needs": f"≈ {amount} CPU-h"}


def reproduction(table: pd.DataFrame, paper: PaperNumbers, plan: list[dict], anchors: set[str]):
    """A row per published number: ours at the paper's budget (or ended by the declared rule) and a verdict.
    Below-budget runs never appear here."""
    out = []
    for key in dict.fromkeys((p.dataset, p.ways, p.shots, p.label, p.steps) for p in paper.results
                             if p.source in SOURCES):
        setting = setting_name(*key[:3])
        here = table[(table["dataset"] == key[0]) & (table["setting"] == setting)]
        mine = here[(here["budget"] == "paper") & (here["label"].str.lower() == key[3].lower())
                    & ((here["at_paper_budget"] > 0) | (here["diverged"] > 0))]
        # the transductive number for a transductive run, else the papers' other number where they give one
        p = paper.lookup(*key[:4], None if mine.empty else c.clean(mine.iloc[0]["bn_mode"]), steps=key[4])
        row = {"source": p.source, "label": p.label, "paper": p.value, "ours": "—", "ours_mean": math.nan,
               "seeds": 0, "run": "—", "cpu_hours": math.nan, "in_campaign": False, "needs": "—", "dataset": p.dataset,
               "test_setting": setting, "setting": c.title(p.dataset, setting)
               + (f", {p.steps} step{'s' * (p.steps > 1)}" if p.steps else "")}
        # the same algorithm under another protocol (the release's, a fresh inner state) at the paper's budget
        variants = here[(here["at_paper_budget"] > 0) & here["label"].str.startswith(p.label + " (")]
        also = "".join(f"; {v['label']} reached {ours_text(v)}"
                       + (f", {_plateau(v)}" if _plateau(v) else " at the paper's budget") for _, v in variants.iterrows())
        if mine.empty:
            row |= _hours_to_run(p, table, plan)
            row["verdict"] += also
            out.append(row)
            continue
        s = mine.iloc[0]
        scale, _ = c.scale_of(s["metric"])
        mean, std = (s[f"mean_{p.steps}"], s[f"std_{p.steps}"]) if p.steps else (s["mean"], s["std"])
        # the larger of the std over seeds and the mean 95% CI over test tasks (the CI of the test metric only)
        half = pd.Series([std, s["ci95"] if p.steps in (None, 10) else math.nan]).max()
        row.update(ours=ours_text(s, p.steps), ours_mean=mean * scale, seeds=int(s["completed"]), run=s["run"])
        explained = EXPLAINED.get(p.label) if s["diverged"] or not c.is_regression(p.dataset) else None
        anchor = next((a for a in (explained, "table-" + c.slug("protocols", p.dataset, setting, "paper"))
                       if a in anchors), None)
        why = f" ([why](#{anchor}))" if anchor else ""
        diverged = f"diverged in {s['diverged']} of {s['seeds']} seeds"
        if render.is_missing(mean):
            row["verdict"] = f"not reproduced: {diverged}{why}"
        else:
            inside = abs(mean * scale - p.value) <= half * scale
            # an interval wider than a quarter of the paper's number would "reproduce" very different results
            row["verdict"] = (f"not reproduced ({mean * scale - p.value:+.2f}){why}" if not inside
                              else "reproduced" if half * scale <= p.value / 4
                              else f"inconclusive: our spread ± {half * scale:.3g} exceeds a quarter of the paper's number")
            row["verdict"] += (f"; {diverged}" if s["diverged"] else "") + (f"; {_plateau(s)}" if _plateau(s) else "")
        row["verdict"] += also
        out.append(row)
    cols = [("setting", "setting"), ("algorithm", "label"), ("paper", lambda r: fmt_g(r["paper"]), "paper", "source"),
            ("ours at the paper's budget", lambda r: r["ours"], "ours", "ours_mean", "seeds"), ("verdict", "verdict")]
    return make_table("reproduction", out, cols, [TEXT["reproduction_note"]],
                      extra=("run", "cpu_hours", "in_campaign", "needs", "dataset", "test_setting"))


def claims(claims, claims_raw: pd.DataFrame, repro_raw: pd.DataFrame):
    """One row per paper claim: its verdict at the paper's budget (section 4's table) or, without one,
    what each side still needs at that budget (the reproduction table's CPU-hours and campaign state)."""
    out = []
    for cl in claims:
        found = claims_raw[claims_raw["claim"] == cl.text]
        final = found[~found["verdict"].isin(["not tested at paper budget"])]
        verdict = (final if not final.empty else found)["verdict"].iloc[0] if not found.empty else "no runs"
        needs = []
        for side in (cl.better, cl.worse):
            r = repro_raw[(repro_raw["dataset"] == cl.dataset) & (repro_raw["test_setting"] == cl.setting)
                          & (repro_raw["label"] == side) & (repro_raw["ours"] == "—")]
            if not r.empty:
                needs.append(f"{side}: {r['needs'].iloc[0]}")
        out.append({"claim": cl.text, "paper": f"{cl.evidence} ({cl.source})", "verdict": verdict,
                    "needs": "; ".join(needs) or "—"})
    cols = [("claim", "claim"), ("paper", "paper"), ("verdict", "verdict"),
            ("still needed at the paper's budget", "needs")]
    return make_table("claims_summary", out, cols, [TEXT["claims_summary_note"]])


def equal_compute(table: pd.DataFrame):
    """Per equal-compute setting, one cell per algorithm: mean ± std over seeds and its outcome word."""
    eq = table[table["minutes"].notna()].copy()
    if eq.empty:
        return make_table("equal_compute", [], [("algorithm", str, "algorithm")]), eq
    eq["column"] = [f"{c.title(d, s)} ({b})" for d, s, b in zip(eq["dataset"], eq["setting"], eq["budget"])]
    eq["algorithm"] = eq["label"] + eq["role"].map({"baseline": " (baseline)"}).fillna("")
    eq["cell"] = [f"{_pm(s)} ({s['seeds']} seed{'s' * (s['seeds'] > 1)}"
                  + (f", {s['completed']} completed" if s["completed"] < s["seeds"] else "") + f"; {outcome(s)})"
                  for _, s in eq.iterrows()]
    order = list(dict.fromkeys(eq["column"]))
    wide = eq.pivot_table(index="algorithm", columns="column", values="cell", aggfunc="first").reindex(columns=order)
    wide = wide.reindex(sorted(wide.index, key=lambda a: c.label_rank(a.removesuffix(" (baseline)"))))
    rows = [{"algorithm": a, **r} for a, r in wide.fillna("—").iterrows()]
    cols = [("algorithm", "algorithm"), *((k, k) for k in order)]
    return make_table("equal_compute", rows, cols, [TEXT["equal_compute_note"]]), eq


def grid_figure(eq: pd.DataFrame, rows: list[dict], fig_dir: Path) -> Path | None:
    """One panel per equal-compute setting (a column of the table), drawn as section 1 draws its curves."""
    if eq.empty:
        return None
    import matplotlib.pyplot as plt

    panels = list(dict.fromkeys(zip(eq["column"], eq["dataset"], eq["setting"], eq["minutes"])))
    ncols = 2 if len(panels) > 1 else 1
    nrows = math.ceil(len(panels) / ncols)
    new_figure()  # selects the Agg backend
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.0 * ncols, 3.6 * nrows), squeeze=False, layout="constrained")
    for ax, (title, *key) in zip(axes.flat, panels):
        budget.draw([ax], [r for r in rows if (r["dataset"], r["setting"], r.get("max_train_minutes")) == tuple(key)],
                    key[0])
        ax.set_title(title, fontsize=9)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(panels):]:
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
    return None if None in values.values() else entry["answer"].format(**values)


def load_questions(path: Path = QUESTIONS) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


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


def campaign_plan(runs_root: Path) -> list[dict]:
    return campaign.runs(runs_root / "campaign-cpu") if (runs_root / "campaign-cpu").is_dir() else []


def limitations(table: pd.DataFrame, paper: PaperNumbers, devices: list[str]):
    """At most 8 rows, each a limit of what the records can say, counted from the summary."""
    m = table[table["role"] == "method"]
    below = m[m["at_paper_budget"] < m["completed"].clip(lower=1)]
    frac = below["iterations_max"] / below["meta_iterations"]
    missing = sorted({(p.dataset, setting_name(p.dataset, p.ways, p.shots)) for p in paper.results}
                     - set(zip(table["dataset"], table["setting"])))
    at_paper = sorted(set(m[m["at_paper_budget"] > 0]["dataset"]))
    unlearned = m[m["learned"] < m["completed"]]
    measured = {
        "seeds": f"{(m['seeds'] == 1).sum()} of {len(m)} configurations have one seed",
        "budget": f"{len(below)} of {len(m)} configurations ran below the paper's budget "
                  f"({100 * frac.min():.2g}%–{100 * frac.max():.3g}% of its iterations)",
        "paper budget": f"reached on {', '.join(c.DATASET_NAMES.get(d, d) for d in at_paper) or 'no dataset'} only",
        "settings never run": ", ".join(c.title(d, s) for d, s in missing) or "none",
        "stopped runs": f"{int(table['diverged'].sum())} runs diverged",
        "did not learn": f"{len(unlearned)} configurations have seeds that did not beat every baseline",
        "baselines": "classification is judged against chance (and baseline records, where there are any)",
        "devices": ", ".join(devices) or "none"}
    cols = [("limit", "limit"), ("measured", "measured"),
            ("what it means", lambda r: f"{r['so']} ([table](#{r['anchor']}))", "so", "anchor")]
    return make_table("limitations", [dict(r, measured=measured[r["limit"]]) for r in load_questions()["limitations"]],
                      cols)
