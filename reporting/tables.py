"""Training-run tables: run inventory, iMAML Tables 2 and 3 side by side with the papers,
the MAML sinusoid table, and metric vs inner steps (with a figure per setting)."""
from __future__ import annotations

import math
from pathlib import Path

from . import baselines
from . import common as c
from .budget import learned_text
from .paper import PaperNumbers
from .render import MARKERS, Table, colour, column_keys, fmt, fmt_g, fmt_pm, log_x, make_table, new_figure, save_figure

SINUSOID_STEPS = (1, 5, 10)


def inventory(rows: list[dict]) -> Table:
    """Every readable training record, whatever its status: a failure is a result."""
    cols = [("run", lambda r: r["run"], "run"),
            ("status", c.status_text, "status", "failure_iteration", "failure_reason"),
            ("algorithm", lambda r: r["label"], "label"),
            ("setting", lambda r: f"{c.DATASET_NAMES.get(r['dataset'], r['dataset'])} {r['setting']}", "dataset"),
            ("profile", lambda r: r["profile"], "profile"),
            ("iterations", c.budget_text, "iterations_done", "meta_iterations"),
            ("seed", lambda r: fmt_g(r.get("seed")), "seed"),
            ("result (± 95% CI; accuracy % or MSE)", c.result_text, "mean", "ci95"),
            ("device", lambda r: r.get("device") or "—", "device"),
            ("commit", lambda r: (r.get("git_commit") or "—")[:10], "git_commit")]
    ordered = sorted(rows, key=lambda r: r["run"])
    return make_table("runs", ordered, cols,
                      ["Results are shown for completed runs only; a stopped run shows its status and reason."],
                      extra=("variant", "algorithm", "ways", "shots", "query_shots", "test_shots", "test_query_shots",
                             "experiment", "metric", "std", "n", "fingerprint", "device_name", "dtype"))


def _paper_rows(rows: list[dict], paper: PaperNumbers) -> list[dict]:
    groups = c.seed_groups(rows)
    out = []
    for r in rows:
        ref = paper.lookup(r["dataset"], r["ways"], r["test_shots"], r["label"], r.get("bn_mode"))
        seeds = c.seeds_raw(r, groups)  # accuracy fractions → percent, like the other columns
        d = dict(r, seeds_mean_pct=100 * seeds["seeds_mean"], seeds_std_pct=100 * seeds["seeds_std"],
                 seeds_runs=seeds["seeds_runs"], seeds_text=c.seeds_text(r, groups),
                 paper_value=ref.value if ref else None, paper_pm=ref.pm if ref else None,
                 paper_source=ref.source if ref else None, paper_transductive=ref.transductive if ref else None,
                 scale=c.scale_text(r), mean_pct=None, ci95_pct=None, diff=None, paper_in_ci=None)
        if r["status"] == "completed" and r["metric"] == "accuracy":
            d["mean_pct"], d["ci95_pct"] = 100 * r["mean"], 100 * r["ci95"]
            if ref is not None:
                d["diff"] = d["mean_pct"] - ref.value
                d["paper_in_ci"] = abs(d["diff"]) <= d["ci95_pct"]
        out.append(d)
    return out


def _yes_no(v) -> str:
    return "—" if v is None else ("yes" if v else "no")


def _in_ci_text(d: dict) -> str:
    if d.get("paper_in_ci") is None:
        return ""
    k, n = d["paper_in_ci"], d["paper_in_ci_of"]
    return f"; {'yes' if k == n else 'no' if k == 0 else 'partly'} ({k} of {n} seed{'s' if n > 1 else ''})"


def paper_table(name: str, rows: list[dict], paper: PaperNumbers, notes: list[str]) -> Table:
    """Our mean ± 95% CI beside the paper's number and the difference; the setup is in section 1."""
    cols = [("setting", lambda r: r["setting"], "setting"), ("algorithm", c.label_text, "label"),
            ("status", c.status_text, "status", "failure_reason"),
            ("ours % (± 95% CI)", lambda r: fmt_pm(r["mean_pct"], r["ci95_pct"]), "mean_pct", "ci95_pct"),
            ("paper %", lambda r: fmt_pm(r["paper_value"], r["paper_pm"], 2), "paper_value", "paper_pm"),
            ("ours − paper", lambda r: fmt(r["diff"]), "diff"),
            ("paper in our CI", lambda r: _yes_no(r["paper_in_ci"]), "paper_in_ci"),
            ("across seeds (mean ± std)", lambda r: r["seeds_text"], "seeds_mean_pct", "seeds_std_pct", "seeds_runs"),
            ("iterations", c.budget_text, "iterations_done", "meta_iterations"), ("run", lambda r: r["run"], "run")]
    return make_table(name, _paper_rows(rows, paper), cols, notes,
                      extra=("n", "scale", "profile", *column_keys(c.SETUP_COLUMNS), "paper_source",
                             "paper_transductive"))


def omniglot_notes(paper: PaperNumbers) -> list[str]:
    nt = [paper.lookup("omniglot", w, s, "Reptile", "non_transductive") for w, s in ((5, 1), (5, 5), (20, 1), (20, 5))]
    nt_text = " / ".join(fmt_g(r.value) for r in nt if r is not None)
    return ["ours: mean test accuracy over the fixed test tasks ± 95% CI (1.96·std/√n); 'paper in our CI' asks "
            "whether the paper's mean lies in that interval (the paper's own ± is not used).",
            "The iMAML paper's Reptile row (97.68 / 99.48 / 89.43 / 97.12) is transductive (Nichol et al., batch "
            "statistics shared across the query set); the Reptile paper's non-transductive numbers are "
            f"{nt_text} (5w1s / 5w5s / 20w1s / 20w5s), used for runs whose batch-norm mode is not transductive.",
            f"Sources: imaml_t2 = {paper.sources['imaml_t2']} reptile_t2 = {paper.sources['reptile_t2']}"]


def miniimagenet_notes(paper: PaperNumbers) -> list[str]:
    return ["The iMAML paper reports 5-way 1-shot only; 5-way 5-shot numbers come from the MAML and Reptile papers "
            "(no iMAML number). Reptile 49.97 / 65.99 are transductive; its non-transductive 47.07 / 62.74 are used "
            "for runs whose batch-norm mode is not transductive.",
            f"Sources: imaml_t3 = {paper.sources['imaml_t3']} maml_t1 = {paper.sources['maml_t1']} "
            f"reptile_t1 = {paper.sources['reptile_t1']}"]


def _budget_of(runs: list[dict]) -> str:
    r = runs[0]
    if r.get("max_train_minutes") is None:
        if c.budget_kind(r) == "converged":
            return c.scale_text(r)
        return f"{r['meta_iterations']:,} iterations (the paper's)" if c.is_paper_scale(r) else c.budget_text(r)
    return f"{fmt_g(r['max_train_minutes'])} min"


def _steps_over_seeds(runs: list[dict], k: int):
    vals = [r["by_steps"].get(k) for r in runs if r["status"] == "completed"]
    vals = [v for v in vals if v is not None]
    return c.mean_std(vals)[0] if vals else None


def sinusoid_table(rows: list[dict], paper: PaperNumbers, judged: dict[str, dict]) -> Table:
    """MSE after 1 / 5 / 10 test steps against the MAML paper (5-shot), one row per configuration and
    budget (its seeds averaged), the pretrained baseline beside the paper's."""
    out = []
    for runs in c.config_groups(rows):
        r = runs[0]
        base = baselines.is_baseline(r)
        name = "pretrained" if base else r["label"]
        ref = {k: paper.lookup("sinusoid", 1, 5, name, None, steps=k) for k in SINUSOID_STEPS}
        comparable = r["test_shots"] == 5 and all(ref.values())
        g = c.over_seeds(runs)
        d = dict(r, _runs=runs, seeds=c.seeds_list(runs), seeds_mean=g["mean"], seeds_std=g["std"], seeds_runs=g["n"],
                 run=c.runs_text(runs), comparable=comparable, baseline=base, budget_label=_budget_of(runs))
        for k in SINUSOID_STEPS:
            ours = _steps_over_seeds(runs, k)
            d[f"mse_{k}"] = ours
            d[f"paper_{k}"] = ref[k].value if ref[k] else None
            d[f"diff_{k}"] = ours - ref[k].value if comparable and ours is not None else None
        last = SINUSOID_STEPS[-1]
        done = [x for x in runs if x["status"] == "completed" and x.get("mean") is not None]
        d["paper_in_ci"] = (sum(abs(x["mean"] - ref[last].value) <= x["ci95"] for x in done)
                            if comparable and done and (r.get("test_steps_used") or r.get("test_steps")) == last else None)
        d["paper_in_ci_of"] = len(done)
        out.append(d)
    out.sort(key=lambda d: (d["max_train_minutes"] is None, d["max_train_minutes"] or 0, c.label_rank(d["label"])))

    def triple(prefix: str, digits: int = 3):
        return lambda r: " / ".join(fmt(r[f"{prefix}_{k}"], digits) for k in SINUSOID_STEPS)

    def steps(prefix: str) -> list[str]:
        return [f"{prefix}_{k}" for k in SINUSOID_STEPS]

    cols = [("algorithm", lambda d: f"{d['label']} (baseline)" if d["baseline"] else c.label_text(d), "label",
             "baseline"),
            ("budget", lambda d: d["budget_label"], "budget_label"), ("seeds", lambda d: d["seeds"], "seeds"),
            ("status", lambda d: c.status_summary(d["_runs"]), "status"),
            ("ours after 1 / 5 / 10 steps (mean over seeds)", triple("mse"), *steps("mse")),
            ("after 10 steps: ± std over seeds (one seed: 95% CI)", lambda d: c.spread_text(d["_runs"]),
             "seeds_mean", "seeds_std", "seeds_runs"),
            ("paper (K=5) 1 / 5 / 10", triple("paper", 2), *steps("paper")),
            ("ours − paper; paper in our 10-step 95% CI", lambda d: triple("diff")(d) + _in_ci_text(d),
             *steps("diff"), "paper_in_ci", "paper_in_ci_of"),
            ("vs baseline", lambda d: learned_text(d["_runs"], judged)), ("runs", lambda d: d["run"], "run")]
    notes = ["Test MSE on the fixed 5-shot test tasks after 1 / 5 / 10 steps of the protocol's test-time adaptation, "
             "averaged over the configuration's completed seeds. The MAML paper reports MAML and its pretrained "
             "baseline only, tested at K=5; other algorithms have no paper number, and 'ours − paper' is shown only "
             "where the test K and the algorithm match. 'paper in our 10-step 95% CI': in how many seeds the "
             "paper's 10-step number lies within that seed's mean ± 95% CI over test tasks. vs baseline: see "
             "section 1.",
             f"Source: maml_sinusoid = {paper.sources['maml_sinusoid']}"]
    return make_table("sinusoid", out, cols, notes, extra=("test_shots", "n", "test_steps_used", "comparable",
                                                          "profile", *column_keys(c.SETUP_COLUMNS)))


def inner_steps_groups(rows: list[dict]) -> list[dict]:
    """Completed runs grouped by (dataset, setting, profile, algorithm, train inner steps),
    kept where an algorithm was run at two or more inner-step counts (a sweep)."""
    done = [r for r in rows if r["status"] == "completed" and r.get("inner_steps") is not None]
    by_algo: dict[tuple, dict[int, list[dict]]] = {}
    for r in done:
        by_algo.setdefault((r["dataset"], r["setting"], r["profile"], r["label"]), {}).setdefault(
            int(r["inner_steps"]), []).append(r)
    out = []
    for (dataset, setting, profile, label), steps in by_algo.items():
        if len(steps) < 2:
            continue
        for k, members in steps.items():
            mean, std, n = c.mean_std([m["mean"] for m in members])
            metric = members[0]["metric"]
            out.append({"dataset": dataset, "setting": setting, "profile": profile, "label": label,
                        "inner_steps": k, "metric": metric, "n_runs": n, "mean": mean, "std": std,
                        "ci95": members[0]["ci95"] if n == 1 else math.nan,
                        "test_steps": sorted({m["test_steps"] for m in members if m.get("test_steps") is not None}),
                        "median_iter_s": c.mean_std([m["median_iter_s"] for m in members
                                                     if m.get("median_iter_s") is not None])[0],
                        "alloc_peak_bytes": c.mean_std([m["alloc_peak_bytes"] for m in members
                                                        if m.get("alloc_peak_bytes") is not None])[0],
                        "iterations": c.mean_std([m["iterations_done"] for m in members])[0],
                        "minutes": members[0].get("max_train_minutes"),
                        "runs": [m["run"] for m in members]})
    return sorted(out, key=lambda g: (g["dataset"], c.setting_rank(g["setting"]), g["profile"],
                                      c.label_rank(g["label"]), g["inner_steps"]))


def _spread(g: dict) -> str:
    s, d = c.scale_of(g["metric"])
    text = fmt_pm(g["mean"], g["std"] if g["n_runs"] > 1 else g["ci95"], d, s)
    return f"{text} ({'std over ' + str(g['n_runs']) + ' runs' if g['n_runs'] > 1 else '95% CI'})"


def inner_steps_table(groups: list[dict]) -> Table:
    """Every (setting, algorithm, K) point with its cost: the long form behind the pivots (files only)."""
    cols = [("setting", lambda g: f"{g['dataset']} {g['setting']} ({g['profile']})", "dataset", "setting", "profile"),
            ("algorithm", lambda g: g["label"], "label"),
            ("inner steps (train)", lambda g: str(g["inner_steps"]), "inner_steps"),
            ("result", _spread, "mean", "std", "ci95", "n_runs"),
            ("iterations reached", lambda g: fmt(g["iterations"], 0), "iterations"),
            ("s / iteration", lambda g: fmt(g["median_iter_s"], 4), "median_iter_s"),
            ("peak alloc MiB", lambda g: fmt(g["alloc_peak_bytes"], 1, 2.0**-20), "alloc_peak_bytes")]
    return make_table("inner_steps", groups, cols, extra=("test_steps", "metric", "minutes", "runs"))


def inner_steps_pivots(groups: list[dict]) -> list[Table]:
    """One table per setting: rows algorithms, columns the inner steps K, cells the test metric."""
    out = []
    for key in sorted({(g["dataset"], g["setting"], g["profile"]) for g in groups},
                      key=lambda k: (k[0], c.setting_rank(k[1]), k[2])):
        sel = [g for g in groups if (g["dataset"], g["setting"], g["profile"]) == key]
        ks = sorted({g["inner_steps"] for g in sel})
        rows = []
        for label in sorted({g["label"] for g in sel}, key=c.label_rank):
            row = {"label": label}
            for g in (g for g in sel if g["label"] == label):
                s, d = c.scale_of(g["metric"])
                row[f"K={g['inner_steps']}"] = g["mean"]
                row[f"text_{g['inner_steps']}"] = fmt_pm(g["mean"], g["std"] if g["n_runs"] > 1 else g["ci95"], d, s)
            rows.append(row)
        cols = [("algorithm", lambda r: r["label"], "label"),
                *((f"K={k}", (lambda k: lambda r: r.get(f"text_{k}", "—"))(k), f"K={k}") for k in ks)]
        metric, minutes = sel[0]["metric"], sorted({fmt_g(g["minutes"]) for g in sel if g["minutes"] is not None})
        tests = sorted({t for g in sel for t in g["test_steps"]})
        test_rule = "tested after K steps" if all(g["test_steps"] == [g["inner_steps"]] for g in sel) else \
            f"tested after {', '.join(fmt_g(t) for t in tests)} steps"
        n_runs = sorted({g["n_runs"] for g in sel})
        spread = "± 95% CI over test tasks (one run each)" if n_runs == [1] else "± std across runs"
        notes = [f"{'Test accuracy %' if metric == 'accuracy' else 'Test MSE'} {spread}; every run trained for "
                 f"{'/'.join(minutes) or '?'} min with K inner steps, {test_rule}. Time and memory per point: "
                 "`tables/inner_steps.csv` and the figure."]
        out.append(make_table(c.slug("inner_steps", *key), rows, cols, notes))
    return out


def inner_steps_figures(groups: list[dict], fig_dir: Path) -> list[Path]:
    """Metric vs inner steps, one line per algorithm, one figure per dataset setting."""
    keys = sorted({(g["dataset"], g["setting"], g["profile"]) for g in groups},
                  key=lambda k: (k[0], c.setting_rank(k[1]), k[2]))
    paths = []
    for dataset, setting, profile in keys:
        sel = [g for g in groups if (g["dataset"], g["setting"], g["profile"]) == (dataset, setting, profile)]
        fig, (ax, ax_t, ax_m) = new_figure(ncols=3, width=5.0)
        for i, label in enumerate(sorted({g["label"] for g in sel}, key=c.label_rank)):
            pts = [g for g in sel if g["label"] == label]
            s, _ = c.scale_of(pts[0]["metric"])
            err = [(g["std"] if g["n_runs"] > 1 else g["ci95"]) * s for g in pts]
            ks = [g["inner_steps"] for g in pts]
            style = {"marker": MARKERS[i % len(MARKERS)], "label": label, "color": colour(label)}
            ax.errorbar(ks, [g["mean"] * s for g in pts], yerr=[0 if e != e else e for e in err], capsize=3, **style)
            ax_t.plot(ks, [g["median_iter_s"] for g in pts], **style)
            ax_m.plot(ks, [(g["alloc_peak_bytes"] or math.nan) / 2**20 for g in pts], **style)
        metric = sel[0]["metric"]
        minutes = sorted({g["minutes"] for g in sel if g["minutes"] is not None})
        for a, ylabel in ((ax, "test accuracy (%)" if metric == "accuracy" else "test MSE"),
                          (ax_t, "s / meta-iteration"), (ax_m, "peak allocation (MiB)")):
            log_x(a, [g["inner_steps"] for g in sel])
            a.set_xlabel("inner steps K (train)")
            a.set_ylabel(ylabel)
        if metric == "mse":
            ax.set_yscale("log")
        ax_t.set_yscale("log")
        budget = f", {'/'.join(fmt_g(m) for m in minutes)} min per run" if minutes else ""
        ax.set_title(f"{c.DATASET_NAMES.get(dataset, dataset)} {setting}{budget}", fontsize=10)
        ax.legend(fontsize=8)
        paths.append(save_figure(fig, fig_dir / f"inner_steps_{c.slug(dataset, setting, profile)}.png"))
    return paths
