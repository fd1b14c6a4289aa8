"""Training-run tables: run inventory, iMAML Tables 2 and 3 side by side with the papers,
the MAML sinusoid table, and metric vs inner steps (with a figure per setting)."""
from __future__ import annotations

import math
from pathlib import Path

from . import common as c
from .paper import PaperNumbers
from .render import MARKERS, Table, fmt, fmt_g, fmt_pm, log_x, make_table, new_figure, save_figure

SINUSOID_STEPS = (1, 5, 10)


def inventory(rows: list[dict]) -> Table:
    """Every readable training record, whatever its status: a failure is a result."""
    cols = [("run", lambda r: r["run"]), ("status", c.status_text), ("algorithm", lambda r: r["label"]),
            ("dataset", lambda r: r["dataset"]), ("test setting", lambda r: r["setting"]),
            ("profile", lambda r: r["profile"]), ("iterations", c.budget_text),
            ("seed", lambda r: fmt_g(r.get("seed"))), ("test metric", lambda r: r.get("metric") or "—"),
            ("result (± 95% CI)", c.result_text), ("device", lambda r: r.get("device") or "—"),
            ("commit", lambda r: (r.get("git_commit") or "—")[:10])]
    raw = ("run", "status", "failure_iteration", "failure_reason", "label", "variant", "algorithm", "dataset",
           "ways", "shots", "query_shots", "test_shots", "test_query_shots", "profile", "experiment",
           "iterations_done", "meta_iterations",
           "seed", "metric", "mean", "std", "ci95", "n", "fingerprint", "device", "device_name", "dtype",
           "git_commit")
    ordered = sorted(rows, key=lambda r: r["run"])
    return make_table("runs", ordered, cols, raw,
                      ["Results are shown for completed runs only; a stopped run shows its status and reason."])


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


def paper_table(name: str, rows: list[dict], paper: PaperNumbers, notes: list[str]) -> Table:
    """Our mean ± 95% CI beside the paper's number, the difference and the budget run."""
    cols = [("setting", lambda r: r["setting"]), ("algorithm", c.label_text), ("status", c.status_text),
            ("ours % (± 95% CI)", lambda r: fmt_pm(r["mean_pct"], r["ci95_pct"])),
            ("paper %", lambda r: fmt_pm(r["paper_value"], r["paper_pm"], 2)),
            ("ours − paper", lambda r: fmt(r["diff"])), ("paper in our CI", lambda r: _yes_no(r["paper_in_ci"])),
            ("across runs (mean ± std)", lambda r: r["seeds_text"]), ("scale", lambda r: r["scale"]),
            *c.SETUP_COLUMNS, ("paper source", lambda r: r["paper_source"] or "—"), ("run", lambda r: r["run"])]
    raw = ("setting", "label", "status", "failure_reason", "mean_pct", "ci95_pct", "n", "paper_value",
           "paper_pm", "diff", "paper_in_ci", "seeds_mean_pct", "seeds_std_pct", "seeds_runs", "scale", *c.SETUP_RAW,
           "paper_source", "paper_transductive", "run")
    return make_table(name, _paper_rows(rows, paper), cols, raw, notes)


def omniglot_notes(paper: PaperNumbers) -> list[str]:
    nt = [paper.lookup("omniglot", w, s, "Reptile", "non_transductive") for w, s in ((5, 1), (5, 5), (20, 1), (20, 5))]
    nt_text = " / ".join(fmt_g(r.value) for r in nt if r is not None)
    return [c.NOT_PAPER_NOTE,
            "ours: mean test accuracy over the fixed test tasks ± 95% CI (1.96·std/√n); 'paper in our CI' asks "
            "whether the paper's mean lies in that interval (the paper's own ± is not used).",
            "The iMAML paper's Reptile row (97.68 / 99.48 / 89.43 / 97.12) is transductive (Nichol et al., batch "
            "statistics shared across the query set); the Reptile paper's non-transductive numbers are "
            f"{nt_text} (5w1s / 5w5s / 20w1s / 20w5s), used for runs whose batch-norm mode is not transductive.",
            f"Sources: imaml_t2 = {paper.sources['imaml_t2']} reptile_t2 = {paper.sources['reptile_t2']}"]


def miniimagenet_notes(paper: PaperNumbers) -> list[str]:
    return [c.NOT_PAPER_NOTE,
            "The iMAML paper reports 5-way 1-shot only; 5-way 5-shot numbers come from the MAML and Reptile papers "
            "(no iMAML number). Reptile 49.97 / 65.99 are transductive; its non-transductive 47.07 / 62.74 are used "
            "for runs whose batch-norm mode is not transductive.",
            f"Sources: imaml_t3 = {paper.sources['imaml_t3']} maml_t1 = {paper.sources['maml_t1']} "
            f"reptile_t1 = {paper.sources['reptile_t1']}"]


def sinusoid_table(rows: list[dict], paper: PaperNumbers) -> Table:
    """MSE after 1 / 5 / 10 test steps against the MAML paper (5-shot)."""
    groups = c.seed_groups(rows)
    out = []
    for r in rows:
        ref = {k: paper.lookup("sinusoid", 1, 5, r["label"], None, steps=k) for k in SINUSOID_STEPS}
        comparable = r["test_shots"] == 5 and all(ref.values())
        d = dict(r, seeds_text=c.seeds_text(r, groups), scale=c.scale_text(r), **c.seeds_raw(r, groups),
                 comparable=comparable)
        for k in SINUSOID_STEPS:
            ours = r["by_steps"].get(k) if r["status"] == "completed" else None
            d[f"mse_{k}"] = ours
            d[f"paper_{k}"] = ref[k].value if ref[k] else None
            d[f"diff_{k}"] = ours - ref[k].value if comparable and ours is not None else None
        out.append(d)

    def triple(prefix: str, digits: int = 3):
        return lambda r: " / ".join(fmt(r[f"{prefix}_{k}"], digits) for k in SINUSOID_STEPS)

    cols = [("test K", lambda r: str(r["test_shots"])), ("algorithm", c.label_text), ("status", c.status_text),
            ("ours MSE (± 95% CI)", c.result_text), ("test steps", lambda r: fmt_g(r.get("test_steps_used"))),
            ("ours after 1 / 5 / 10 steps", triple("mse")), ("paper (K=5) 1 / 5 / 10", triple("paper", 2)),
            ("ours − paper", triple("diff")), ("comparable", lambda r: "yes" if r["comparable"] else "no"),
            ("across runs (mean ± std)", lambda r: r["seeds_text"]), ("scale", lambda r: r["scale"]),
            *c.SETUP_COLUMNS, ("run", lambda r: r["run"])]
    raw = ("test_shots", "label", "status", "failure_reason", "mean", "ci95", "n", "test_steps_used",
           *(f"{p}_{k}" for p in ("mse", "paper", "diff") for k in SINUSOID_STEPS), "comparable",
           "seeds_mean", "seeds_std", "seeds_runs", "scale", *c.SETUP_RAW, "run")
    base = [paper.lookup("sinusoid", 1, 5, "pretrained", None, steps=k) for k in SINUSOID_STEPS]
    notes = [c.NOT_PAPER_NOTE,
             "The MAML paper reports MAML only, tested at K=5 (5 support points); other algorithms and other test K "
             "have no paper number, and 'ours − paper' is shown only where the test K and the algorithm match. "
             f"Its pretrained baseline reaches {' / '.join(fmt_g(b.value) for b in base if b)}.",
             f"Source: maml_sinusoid = {paper.sources['maml_sinusoid']}"]
    return make_table("sinusoid", out, cols, raw, notes)


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
    cols = [("dataset", lambda g: g["dataset"]), ("setting", lambda g: g["setting"]),
            ("profile", lambda g: g["profile"]), ("algorithm", lambda g: g["label"]),
            ("inner steps (train)", lambda g: str(g["inner_steps"])),
            ("test steps", lambda g: ", ".join(fmt_g(s) for s in g["test_steps"]) or "—"),
            ("metric", lambda g: g["metric"]), ("result", _spread),
            ("budget min", lambda g: fmt_g(g["minutes"])), ("iterations reached", lambda g: fmt(g["iterations"], 0)),
            ("s / iteration", lambda g: fmt(g["median_iter_s"], 4)),
            ("peak alloc MiB", lambda g: fmt(g["alloc_peak_bytes"], 1, 2.0**-20)),
            ("runs", lambda g: "; ".join(g["runs"]))]
    raw = ("dataset", "setting", "profile", "label", "inner_steps", "test_steps", "metric", "n_runs", "mean",
           "std", "ci95", "minutes", "iterations", "median_iter_s", "alloc_peak_bytes", "runs")
    return make_table("inner_steps", groups, cols, raw,
                      ["accuracy in percent; result is the mean over runs ± std across runs (± the run's 95% CI "
                       "when there is one run); time and memory are the runs' mean median time per "
                       "meta-iteration and peak allocated bytes."])


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
            style = {"marker": MARKERS[i % len(MARKERS)], "label": label}
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
