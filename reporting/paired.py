"""Paired comparisons between algorithms on identical test tasks, and the claims table.

Within a setting (dataset, ways/shots, profile) each algorithm is represented by one
configuration: the one run as a named experiment, then the one with most runs, then the
longest trained, then the latest folder. Its runs are paired with another algorithm's
runs of the same seed, task by task, and only when the test-task fingerprints match;
every refused pair is listed with its reason.
"""
from __future__ import annotations

from . import common as c
from .paper import Claim
from .render import Table, fmt, fmt_g, fmt_p, make_table
from .stats import PairingError, claim_verdict, direction, improvement_interval, mean_std, paired_comparison


def _setting(r: dict) -> tuple:
    return (r["dataset"], r["setting"], r["profile"])


def representatives(rows: list[dict]) -> tuple[dict[tuple, dict[str, list[dict]]], list[str]]:
    """(setting → algorithm → runs of its representative configuration, notes)."""
    notes = []
    cands: dict[tuple, dict[str, dict[tuple, list[dict]]]] = {}
    for r in rows:
        if r["status"] != "completed":
            continue
        if r.get("per_task") is None:
            notes.append(f"{r['run']}: no per-task test metrics in the record, not paired")
            continue
        cands.setdefault(_setting(r), {}).setdefault(r["label"], {}).setdefault(c.config_key(r), []).append(r)
    chosen: dict[tuple, dict[str, list[dict]]] = {}
    for setting, by_label in cands.items():
        for label, configs in by_label.items():
            def rank(item):
                runs = item[1]
                return (runs[0].get("experiment") is not None, len(runs),
                        max(r["iterations_done"] for r in runs), max(r["run"] for r in runs))
            best_key, best = max(configs.items(), key=rank)
            chosen.setdefault(setting, {})[label] = sorted(best, key=lambda r: r["run"])
            kept = set(r["run"] for r in _by_seed(chosen[setting][label]).values())
            repeats = [r["run"] for r in chosen[setting][label] if r["run"] not in kept]
            if repeats:
                notes.append(f"{label} {setting[0]} {setting[1]} ({setting[2]}): a seed run more than once; the "
                             f"latest folder is paired, not: {', '.join(repeats)}")
            others = sorted(r["run"] for k, runs in configs.items() if k != best_key for r in runs)
            if others:
                notes.append(f"{label} {setting[0]} {setting[1]} ({setting[2]}): paired runs of one configuration; "
                             f"other configurations not paired: {', '.join(others)}")
    return chosen, sorted(notes)


def _by_seed(runs: list[dict]) -> dict:
    """seed → run; a seed run twice with one configuration keeps its latest folder (runs are sorted)."""
    return {r.get("seed"): r for r in runs}


def compare_all(rows: list[dict]) -> tuple[list[dict], list[dict], list[str]]:
    """(paired rows, refused rows, notes) for every pair of algorithms in every setting."""
    chosen, notes = representatives(rows)
    pairs, refused = [], []
    for setting in sorted(chosen, key=lambda s: (s[0], c.setting_rank(s[1]), s[2])):
        labels = sorted(chosen[setting], key=c.label_rank)
        for j, a_label in enumerate(labels):
            for b_label in labels[:j]:  # a comes later in the canonical order: "a vs b"
                a_by_seed, b_by_seed = _by_seed(chosen[setting][a_label]), _by_seed(chosen[setting][b_label])
                for seed in sorted(set(a_by_seed) & set(b_by_seed), key=lambda s: (s is None, s or 0)):
                    a, b = a_by_seed[seed], b_by_seed[seed]
                    base = {"dataset": setting[0], "setting": setting[1], "profile": setting[2], "a": a_label,
                            "b": b_label, "seed": seed, "a_run": a["run"], "b_run": b["run"]}
                    try:
                        if a["metric"] != b["metric"]:
                            raise PairingError(f"different metrics ({a['metric']} vs {b['metric']})")
                        p = paired_comparison(a["per_task"], b["per_task"], a.get("fingerprint"),
                                              b.get("fingerprint"), a["metric"] == "accuracy")
                    except PairingError as e:
                        refused.append(dict(base, reason=str(e)))
                        continue
                    pairs.append(dict(base, metric=a["metric"], p=p, n=p.n, mean_diff=p.mean_diff,
                                      ci_low=p.ci_low, ci_high=p.ci_high, p_value=p.p_value, a_better=p.a_better,
                                      b_better=p.b_better, ties=p.ties, a_iters=c.budget_text(a),
                                      b_iters=c.budget_text(b), a_minutes=a.get("max_train_minutes"),
                                      b_minutes=b.get("max_train_minutes"),
                                      device_name=a.get("device_name") or a.get("device"),
                                      paper_scale=c.is_paper_scale(a) and c.is_paper_scale(b)))
                unpaired = sorted(set(a_by_seed) ^ set(b_by_seed), key=lambda s: (s is None, s or 0))
                if unpaired:
                    notes.append(f"{a_label} vs {b_label}, {setting[0]} {setting[1]} ({setting[2]}): seed(s) "
                                 f"{', '.join(str(s) for s in unpaired)} run by only one of the two")
    groups: dict[tuple, list[float]] = {}
    for r in pairs:
        groups.setdefault((r["dataset"], r["setting"], r["profile"], r["a"], r["b"]), []).append(r["mean_diff"])
    for r in pairs:
        m, s, n = mean_std(groups[(r["dataset"], r["setting"], r["profile"], r["a"], r["b"])])
        r.update(seeds_mean=m if n > 1 else None, seeds_std=s if n > 1 else None, seeds_runs=n)
    return pairs, refused, sorted(notes)


def _better(r: dict) -> str:
    lo, hi = improvement_interval(r["p"], r["metric"] == "accuracy")[1:]
    return {"better": r["a"], "worse": r["b"], "tie": "no significant difference"}[direction(lo, hi)]


def paired_table(pairs: list[dict]) -> Table:
    def d(r, key):
        s, digits = c.scale_of(r["metric"])
        return fmt(r[key], digits, s)

    cols = [("dataset", lambda r: r["dataset"]), ("setting", lambda r: r["setting"]),
            ("comparison (a vs b)", lambda r: f"{r['a']} vs {r['b']}"), ("metric", lambda r: r["metric"]),
            ("seed", lambda r: str(r["seed"])), ("tasks", lambda r: str(r["n"])),
            ("mean a − b", lambda r: d(r, "mean_diff")),
            ("95% CI (bootstrap)", lambda r: f"[{d(r, 'ci_low')}, {d(r, 'ci_high')}]"),
            ("Wilcoxon p", lambda r: fmt_p(r["p_value"])),
            ("a better / b better / tie", lambda r: f"{r['a_better']} / {r['b_better']} / {r['ties']}"),
            ("better", _better),
            ("across seeds (mean ± std)", lambda r: "—" if r["seeds_mean"] is None else
             f"{d(r, 'seeds_mean')} ± {d(r, 'seeds_std')} ({r['seeds_runs']} seeds)"),
            ("budget", lambda r: f"{r['profile']}; a {r['a_iters']} it., b {r['b_iters']} it."
             + ("" if r["paper_scale"] else f" {c.NOT_PAPER}")),
            ("runs (a; b)", lambda r: f"{r['a_run']}; {r['b_run']}")]
    raw = ("dataset", "setting", "profile", "a", "b", "metric", "seed", "n", "mean_diff", "ci_low", "ci_high",
           "p_value", "a_better", "b_better", "ties", "seeds_mean", "seeds_std", "seeds_runs", "a_iters", "b_iters",
           "paper_scale", "a_run", "b_run")
    notes = ["Differences are a − b per test task (accuracy in percentage points here, as a fraction in the CSV; "
             "MSE as is, lower is better), "
             "so 'better' honours each metric's direction. CI: percentile bootstrap over tasks, 10,000 resamples, "
             "resampling seed 0. p: two-sided Wilcoxon signed-rank test, zero differences dropped.",
             f"{c.NOT_PAPER} at least one run is not paper-scale."]
    return make_table("paired", pairs, cols, raw, notes)


def refused_table(refused: list[dict]) -> Table:
    cols = [("dataset", lambda r: r["dataset"]), ("setting", lambda r: r["setting"]),
            ("profile", lambda r: r["profile"]), ("comparison", lambda r: f"{r['a']} vs {r['b']}"),
            ("seed", lambda r: str(r["seed"])), ("reason", lambda r: r["reason"]),
            ("runs (a; b)", lambda r: f"{r['a_run']}; {r['b_run']}")]
    return make_table("paired_refused", refused, cols,
                      ("dataset", "setting", "profile", "a", "b", "seed", "reason", "a_run", "b_run"))


def claims_table(claims: tuple[Claim, ...], pairs: list[dict], refused: list[dict], rows: list[dict]) -> Table:
    """One row per paper claim and profile: our verdict from the paired comparisons."""
    out = []
    for cl in claims:
        setting = f"{cl.ways}w{cl.shots}s"
        mine = [p for p in pairs if (p["dataset"], p["setting"]) == (cl.dataset, setting)
                and {p["a"], p["b"]} == {cl.better, cl.worse}]
        base = {"claim": cl.text, "paper": f"{cl.evidence} ({cl.source})", "relation": cl.relation}
        profiles = sorted({p["profile"] for p in mine})
        if not profiles:
            why = [f["reason"] for f in refused if (f["dataset"], f["setting"]) == (cl.dataset, setting)
                   and {f["a"], f["b"]} == {cl.better, cl.worse}]
            have = {r["label"] for r in rows if (r["dataset"], r["setting"]) == (cl.dataset, setting)
                    and r["status"] == "completed"}
            verdict = (f"not paired: {why[0]}" if why else
                       "no paired runs" if {cl.better, cl.worse} <= have else "no runs")
            out.append(dict(base, verdict=verdict, profile=None, budget=None, seeds=0, improvement=None, at_paper=False,
                            spread=None, cis=None, pvalues=None, tally=None, runs=None, metric=None))
            continue
        for profile in profiles:
            sel = [p for p in mine if p["profile"] == profile]
            ints, dirs = [], []
            for p in sel:
                m, lo, hi = improvement_interval(p["p"], p["metric"] == "accuracy")
                if p["a"] != cl.better:
                    m, lo, hi = -m, -hi, -lo
                ints.append((m, lo, hi))
                dirs.append(direction(lo, hi))
            mean, std, n = mean_std([i[0] for i in ints])
            s, digits = c.scale_of(sel[0]["metric"])
            # A verdict on the paper's claim needs the paper's budget; below it the result is shown as
            # what it is, a comparison at that budget (budget_claims_table), never as a verdict.
            at_paper = all(p["paper_scale"] for p in sel)
            verdict = claim_verdict(dirs, cl.relation) if at_paper else "not tested at paper budget"
            out.append(dict(base, verdict=verdict, profile=profile, seeds=n, at_paper=at_paper,
                            minutes=sel[0]["a_minutes"] if sel[0]["a_minutes"] == sel[0]["b_minutes"] else None,
                            device_name=sel[0]["device_name"], better_label=cl.better, worse_label=cl.worse,
                            metric=sel[0]["metric"], improvement=mean, spread=std if n > 1 else None,
                            budget=f"{profile}, " + "; ".join(sorted({
                                f"{p['a']} {p['a_iters']}, {p['b']} {p['b_iters']}" for p in sel}))
                            + ("" if all(p["paper_scale"] for p in sel) else f" {c.NOT_PAPER}"),
                            cis="; ".join(f"[{fmt(lo, digits, s)}, {fmt(hi, digits, s)}]" for _, lo, hi in ints),
                            pvalues="; ".join(fmt_p(p["p_value"]) for p in sel),
                            tally=f"{dirs.count('better')} / {dirs.count('tie')} / {dirs.count('worse')}",
                            runs="; ".join(f"{p['a_run']} vs {p['b_run']}" for p in sel)))

    def imp(r):
        if r["improvement"] is None:
            return "—"
        s, digits = c.scale_of(r["metric"])
        text = fmt(r["improvement"], digits, s)
        return text if r["spread"] is None else f"{text} ± {fmt(r['spread'], digits, s)}"

    def text(key):
        return lambda r: r[key] or "—"

    cols = [("claim", text("claim")), ("paper", text("paper")), ("verdict", text("verdict")),
            ("improvement (mean ± std over seeds)", imp), ("95% CI per seed", text("cis")),
            ("Wilcoxon p per seed", text("pvalues")), ("seeds better / tie / worse", text("tally")),
            ("budget", text("budget")), ("runs", text("runs"))]
    raw = ("claim", "paper", "relation", "verdict", "profile", "seeds", "metric", "improvement", "spread", "cis",
           "pvalues", "tally", "budget", "runs")
    notes = ["improvement: the claimed-better algorithm's advantage (accuracy in percentage points here, a "
             "fraction in the CSV; or MSE reduction), paired on identical test tasks. '>' is supported when "
             "every seed's 95% bootstrap CI lies above 0; '≥' when no seed's CI lies below 0; contradicted when some seed is significantly worse and "
             "none better; otherwise not supported.",
             "A verdict needs both runs at the paper's budget (completed at the paper's iteration count); "
             "anything less reads 'not tested at paper budget'.",
             "no runs: train both algorithms in that setting with the same test tasks (`make reproduce`, or "
             "`python train.py` with the setting's dataset, ways and shots); no paired runs: both were run but "
             "not with the same seed."]
    return make_table("claims", out, cols, raw, notes), out


def budget_claims_table(claim_rows: list[dict]) -> Table:
    """The claims' comparisons measured below the paper's budget, each with the budget it rests on."""
    rows = [r for r in claim_rows if r.get("improvement") is not None and not r["at_paper"]]

    def budget(r):
        where = f" on {r['device_name']}" if r.get("device_name") else ""
        if r["minutes"] is not None:
            return f"{fmt_g(r['minutes'])} min of training per run{where}"
        return f"{r['profile']} profile, iterations: {r['budget']}"

    def result(r):
        s, digits = c.scale_of(r["metric"])
        unit = " points" if r["metric"] == "accuracy" else " MSE"
        sign = "+" if r["improvement"] >= 0 else "−"
        text = f"{r['better_label']} vs {r['worse_label']}: {sign}{fmt(abs(r['improvement']), digits, s)}{unit} {r['cis']}"
        lead = {"better": f"{r['better_label']} > {r['worse_label']}",
                "worse": f"{r['worse_label']} > {r['better_label']}"}
        tally = r["tally"].split(" / ")
        if len(tally) == 3 and int(tally[0]) == r["seeds"]:
            return f"{lead['better']} ({text})"
        if len(tally) == 3 and int(tally[2]) == r["seeds"]:
            return f"{lead['worse']} ({text})"
        return f"no significant difference ({text})"

    cols = [("paper claim", lambda r: r["claim"]), ("budget", budget), ("result at this budget [95% CI]", result),
            ("seeds", lambda r: str(r["seeds"])), ("runs", lambda r: r["runs"])]
    raw = ("claim", "profile", "minutes", "device_name", "metric", "improvement", "cis", "tally", "seeds", "runs")
    return make_table("claims_at_budget", rows, cols, raw,
                      ["A comparison at a smaller budget than the paper's says which method learns faster on this "
                       "machine, not whether the paper's claim holds: the claims table above gives those claims no "
                       "verdict. Improvement of the claimed-better algorithm, paired on identical test tasks."])
