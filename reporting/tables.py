"""Training-run tables: the run inventory, metric vs inner steps (with a figure per setting), and the
protocol selections made on validation tasks."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from . import common as c
from .render import MARKERS, TEXT, Table, colour, fmt, fmt_g, fmt_pm, log_x, make_table, new_figure, save_figure


def inventory(rows: list[dict]) -> Table:
    """Every readable training record, whatever its status: a failure is a result."""
    cols = [("run", "run"), ("status", c.status_text, "status", "failure_iteration", "failure_reason"),
            ("algorithm", "label"),
            ("setting", lambda r: f"{c.title(r['dataset'], r['setting'])}", "dataset"),
            ("profile", "profile"), ("iterations", c.budget_text, "iterations_done", "meta_iterations"),
            ("seed", lambda r: fmt_g(r.get("seed")), "seed"),
            ("result (± 95% CI; accuracy % or MSE)", c.result_text, "mean", "ci95"),
            ("device", lambda r: r.get("device") or "—", "device"),
            ("commit", lambda r: (r.get("git_commit") or "—")[:10], "git_commit")]
    ordered = sorted(rows, key=lambda r: r["run"])
    return make_table("runs", ordered, cols,
                      ["Results are shown for completed runs only; a stopped run shows its status and reason."],
                      extra=("variant", "algorithm", "ways", "shots", "query_shots", "test_shots", "test_query_shots",
                             "experiment", "metric", "std", "n", "fingerprint", "device_name", "dtype"))


def inner_steps_groups(rows: list[dict]) -> list[dict]:
    """Completed runs grouped by (dataset, setting, profile, algorithm, train inner steps),
    kept where an algorithm was run at two or more inner-step counts (a sweep)."""
    key = ["dataset", "setting", "profile", "label", "inner_steps"]
    cols = [*key, "metric", "mean", "ci95", "test_steps", "median_iter_s", "alloc_peak_bytes", "iterations_done",
            "max_train_minutes", "run"]
    df = pd.DataFrame([[int(r[k]) if k == "inner_steps" else r.get(k) for k in cols] for r in rows
                       if r["status"] == "completed" and r.get("inner_steps") is not None], columns=cols, dtype=object)
    df = df[df.groupby(key[:-1], dropna=False)["inner_steps"].transform("nunique") >= 2]

    def point(m: pd.DataFrame) -> dict:
        known = lambda col: c.mean_std([v for v in m[col] if v is not None])[0]  # noqa: E731
        mean, std, n = c.mean_std(list(m["mean"]))
        return {"metric": m["metric"].iloc[0], "n_runs": n, "mean": mean, "std": std,
                "ci95": m["ci95"].iloc[0] if n == 1 else math.nan,
                "test_steps": sorted({t for t in m["test_steps"] if t is not None}),
                "median_iter_s": known("median_iter_s"), "alloc_peak_bytes": known("alloc_peak_bytes"),
                "iterations": c.mean_std(list(m["iterations_done"]))[0], "minutes": m["max_train_minutes"].iloc[0],
                "runs": list(m["run"])}
    out = [dict(zip(key, map(c.clean, k)), **point(m)) for k, m in df.groupby(key, sort=False, dropna=False)]
    return sorted(out, key=lambda g: (g["dataset"], c.setting_rank(g["setting"]), g["profile"],
                                      c.label_rank(g["label"]), g["inner_steps"]))


def _cell(g: dict) -> str:
    """A point's mean ± its std over runs, or ± one run's 95% CI."""
    s, d = c.scale_of(g["metric"])
    return fmt_pm(g["mean"], g["std"] if g["n_runs"] > 1 else g["ci95"], d, s)


def _by_setting(groups: list[dict]) -> list[tuple[tuple, list[dict]]]:
    """The points of each (dataset, setting, profile), in report order."""
    keys = sorted({(g["dataset"], g["setting"], g["profile"]) for g in groups},
                  key=lambda k: (k[0], c.setting_rank(k[1]), k[2]))
    return [(k, [g for g in groups if (g["dataset"], g["setting"], g["profile"]) == k]) for k in keys]


def inner_steps_table(groups: list[dict]) -> Table:
    """Every (setting, algorithm, K) point with its cost: the long form behind the pivots (files only)."""
    cols = [("setting", lambda g: f"{g['dataset']} {g['setting']} ({g['profile']})", "dataset", "setting", "profile"),
            ("algorithm", "label"), ("inner steps (train)", "inner_steps"),
            ("result", lambda g: f"{_cell(g)} (" + (f"std over {g['n_runs']} runs" if g["n_runs"] > 1 else "95% CI") + ")",
             "mean", "std", "ci95", "n_runs"),
            ("iterations reached", lambda g: fmt(g["iterations"], 0), "iterations"),
            ("s / iteration", lambda g: fmt(g["median_iter_s"], 4), "median_iter_s"),
            ("peak alloc MiB", lambda g: fmt(g["alloc_peak_bytes"], 1, 2.0**-20), "alloc_peak_bytes")]
    return make_table("inner_steps", groups, cols, extra=("test_steps", "metric", "minutes", "runs"))


def inner_steps_pivots(groups: list[dict]) -> list[Table]:
    """One table per setting: rows algorithms, columns the inner steps K, cells the test metric."""
    out = []
    for key, sel in _by_setting(groups):
        ks = sorted({g["inner_steps"] for g in sel})
        rows = []
        for label in sorted({g["label"] for g in sel}, key=c.label_rank):
            mine = [g for g in sel if g["label"] == label]
            rows.append({"label": label, **{f"K={g['inner_steps']}": g["mean"] for g in mine},
                         **{f"text_{g['inner_steps']}": _cell(g) for g in mine}})
        cols = [("algorithm", "label"),
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
    paths = []
    for (dataset, setting, profile), sel in _by_setting(groups):
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
        ax.set_title(f"{c.title(dataset, setting)}{budget}", fontsize=10)
        ax.legend(fontsize=8)
        paths.append(save_figure(fig, fig_dir / f"inner_steps_{c.slug(dataset, setting, profile)}.png"))
    return paths


def selection_table(selections: list[dict], labels: dict) -> Table:
    """Every candidate of every selection on validation tasks, its validation score and the choice."""
    rows = [{"setting": s["setting"], "algorithm": labels.get(s["experiment"], s["algorithm"]), "run": s["run"],
             "metric": s["metric"], "chosen": cand.get("candidate") == s.get("winner_name"), **cand}
            for s in selections for cand in s["candidate_rows"]]

    def score(r):
        if r.get("val_metric") is None:
            return f"— ({r.get('status', '?')})"
        scale, digits = (1, 3) if r["metric"] == "mse" else (100, 2)
        return f"{scale * r['val_metric']:.{digits}f} ± {scale * (r.get('val_ci95') or 0):.{digits}f}"

    cols = [("setting", "setting"), ("algorithm", "algorithm"),
            ("candidate", lambda r: ", ".join(f"{k.rsplit('.', 1)[-1]} {fmt_g(v)}" for k, v in r["values"].items())
             if r.get("values") else r.get("candidate", "?"), "candidate"),
            ("iterations", lambda r: fmt_g(r.get("iterations_done")), "iterations_done"),
            ("validation (± 95% CI; MSE or accuracy %)", score, "val_metric", "val_ci95", "status"),
            ("chosen", lambda r: "**chosen**" if r["chosen"] else "", "chosen"),
            ("selection record", lambda r: f"`{r['run']}`", "run")]
    return make_table("selection", rows, cols, [TEXT["selection_note"]], extra=("metric", "val_fingerprint"))
