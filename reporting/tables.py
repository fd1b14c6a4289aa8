"""Training-run tables: the run inventory, metric vs inner steps (with a figure per setting), and the
protocol selections made on validation tasks."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from . import common as c
from .render import MARKERS, TEXT, Table, colour, fmt, fmt_g, fmt_pm, log_x, make_table, new_figure, save_figure


def inventory(rows: list[dict]) -> Table:
    """Every readable training record, whatever its status: a failure is a result."""
    cols = [("run", "run"), ("status", c.status_text, "status", "failure_iteration", "failure_reason"),
            ("algorithm", "label"), ("setting", lambda r: c.title(r["dataset"], r["setting"]), "dataset"),
            ("profile", "profile"), ("iterations", c.budget_text, "iterations_done", "meta_iterations"),
            ("seed", lambda r: fmt_g(r.get("seed")), "seed"),
            ("result (± 95% CI; accuracy % or MSE)", c.result_text, "mean", "ci95"),
            ("device", lambda r: r.get("device") or "—", "device"),
            ("commit", lambda r: (r.get("git_commit") or "—")[:10], "git_commit")]
    return make_table("runs", sorted(rows, key=lambda r: r["run"]), cols,
                      ["Results are shown for completed runs only; a stopped run shows its status and reason."],
                      extra=("variant", "algorithm", "ways", "shots", "query_shots", "test_shots", "test_query_shots",
                             "experiment", "metric", "std", "n", "fingerprint", "device_name", "dtype"))


def inner_steps_points(rows: list[dict]) -> pd.DataFrame:
    """One point per (dataset, setting, profile, algorithm, train inner steps K) over its completed runs,
    kept where the algorithm was run at two or more K (a sweep); in report order."""
    key = ["dataset", "setting", "profile", "label", "inner_steps"]
    rows = sorted((r for r in rows if r["status"] == "completed" and r.get("inner_steps") is not None), key=lambda r: (
        r["dataset"], c.setting_rank(r["setting"]), r["profile"], c.label_rank(r["label"]), int(r["inner_steps"])))
    df = pd.DataFrame(rows)  # in report order, which the groups below keep
    if df.empty:
        return df
    df = df.astype({"inner_steps": int})
    df = df[df.groupby(key[:-1], dropna=False)["inner_steps"].transform("nunique") >= 2]
    pts = df.groupby(key, sort=False, dropna=False).agg(
        metric=("metric", "first"), n_runs=("mean", "size"), mean=("mean", "mean"), std=("mean", "std"),
        ci95=("ci95", "first"), iterations=("iterations_done", "mean"), median_iter_s=("median_iter_s", "mean"),
        alloc_peak_bytes=("alloc_peak_bytes", "mean"), minutes=("max_train_minutes", "first"),
        test_steps=("test_steps", lambda s: sorted({int(t) for t in s.dropna()})), runs=("run", list)).reset_index()
    pts["ci95"] = pts["ci95"].where(pts["n_runs"] == 1)  # one run: its CI over test tasks; several: their std
    pts["err"] = pts["std"].where(pts["n_runs"] > 1, pts["ci95"])
    pts["text"] = [fmt_pm(mean, err, c.scale_of(metric)[1], c.scale_of(metric)[0])
                   for mean, err, metric in zip(pts["mean"], pts["err"], pts["metric"])]
    return pts


def sweep_section(rows: list[dict], w) -> str:
    """Per setting, a pivot of the test metric (rows algorithms, columns K) and a figure of metric, time
    and memory vs K; every point with its cost goes to ``tables/inner_steps.csv``."""
    pts = inner_steps_points(rows)
    if pts.empty:
        return ""
    w.files_only(make_table("inner_steps", pts.to_dict("records"), [
        ("setting", lambda g: f"{g['dataset']} {g['setting']} ({g['profile']})", "dataset", "setting", "profile"),
        ("algorithm", "label"), ("inner steps (train)", "inner_steps"),
        ("result", lambda g: g["text"] + (f" (std over {g['n_runs']} runs)" if g["n_runs"] > 1 else " (95% CI)"),
         "mean", "std", "ci95", "n_runs"),
        ("iterations reached", lambda g: fmt(g["iterations"], 0), "iterations"),
        ("s / iteration", lambda g: fmt(g["median_iter_s"], 4), "median_iter_s"),
        ("peak alloc MiB", lambda g: fmt(g["alloc_peak_bytes"], 1, 2.0**-20), "alloc_peak_bytes")],
        extra=("test_steps", "metric", "minutes", "runs")))
    text, figures = "", ""
    for key, sel in pts.groupby(["dataset", "setting", "profile"], sort=False):
        labels = sorted(sel["label"].unique(), key=c.label_rank)
        cells = sel.pivot(index="label", columns="inner_steps", values="text").reindex(labels).fillna("—")
        raw = sel.pivot(index="label", columns="inner_steps", values="mean").reindex(labels)
        raw.columns = [f"K={k}" for k in raw.columns]
        metric, minutes = sel["metric"].iloc[0], "/".join(sorted({fmt_g(m) for m in sel["minutes"].dropna()}))
        same_k = all(t == [k] for t, k in zip(sel["test_steps"], sel["inner_steps"]))
        note = TEXT["sweep_note"].format(
            metric="Test accuracy %" if metric == "accuracy" else "Test MSE", minutes=minutes or "?",
            spread="± 95% CI over test tasks (one run each)" if (sel["n_runs"] == 1).all() else "± std across runs",
            tests="K" if same_k else ", ".join(fmt_g(t) for t in sorted({t for ts in sel["test_steps"] for t in ts})))
        text += w.table(Table(c.slug("inner_steps", *key), ["algorithm", *raw.columns],
                              [[label, *row] for label, row in zip(labels, cells.values.tolist())],
                              raw.reset_index(), [note]))
        figures += w.figure(_sweep_figure(key, sel, labels, minutes, w.fig_dir), "Test metric vs inner steps")
    return text + figures


def _sweep_figure(key: tuple, sel: pd.DataFrame, labels: list[str], minutes: str, fig_dir: Path) -> Path:
    """Metric, seconds per iteration and peak allocation vs K, one line per algorithm."""
    (dataset, setting, profile), metric = key, sel["metric"].iloc[0]
    scale = c.scale_of(metric)[0]
    fig, axes = new_figure(ncols=3, width=5.0)
    for i, label in enumerate(labels):
        p = sel[sel["label"] == label]
        style = {"marker": MARKERS[i % len(MARKERS)], "label": label, "color": colour(label)}
        axes[0].errorbar(p["inner_steps"], p["mean"] * scale, yerr=p["err"].fillna(0) * scale, capsize=3, **style)
        axes[1].plot(p["inner_steps"], p["median_iter_s"], **style)
        axes[2].plot(p["inner_steps"], p["alloc_peak_bytes"].where(p["alloc_peak_bytes"] > 0) / 2**20, **style)
    ylabels = ("test accuracy (%)" if metric == "accuracy" else "test MSE", "s / meta-iteration",
               "peak allocation (MiB)")
    for ax, ylabel, yscale in zip(axes, ylabels, ("log" if metric == "mse" else "linear", "log", "linear")):
        log_x(ax, sel["inner_steps"])
        ax.set(xlabel="inner steps K (train)", ylabel=ylabel, yscale=yscale)
    axes[0].set_title(c.title(dataset, setting) + (f", {minutes} min per run" if minutes else ""), fontsize=10)
    axes[0].legend(fontsize=8)
    return save_figure(fig, fig_dir / f"inner_steps_{c.slug(dataset, setting, profile)}.png")


def selection_table(selections: list[dict], labels: dict) -> Table:
    """Every candidate of every selection on validation tasks, its validation score and the choice."""
    rows = [{"setting": c.title(*s["setting"].partition("_")[::2]).strip(), "run": s["run"], "metric": s["metric"],
             "algorithm": labels.get(s["experiment"], s["algorithm"]),
             "chosen": cand.get("candidate") == s.get("winner_name"), **cand}
            for s in selections for cand in s["candidate_rows"]]

    def score(r):
        if r.get("val_metric") is None:
            return f"— ({r.get('status', '?')})"
        scale, digits = c.scale_of(r["metric"])
        return fmt_pm(r["val_metric"], r.get("val_ci95") or 0, digits, scale)

    cols = [("setting", "setting"), ("algorithm", "algorithm"),
            ("candidate", lambda r: ", ".join(f"{k.rsplit('.', 1)[-1]} {fmt_g(v)}" for k, v in r["values"].items())
             if r.get("values") else r.get("candidate", "?"), "candidate"),
            ("iterations", lambda r: fmt_g(r.get("iterations_done")), "iterations_done"),
            ("validation (± 95% CI; MSE or accuracy %)", score, "val_metric", "val_ci95", "status"),
            ("chosen", lambda r: "**chosen**" if r["chosen"] else "", "chosen"),
            ("selection record", lambda r: f"`{r['run']}`", "run")]
    return make_table("selection", rows, cols, [TEXT["selection_note"]], extra=("metric", "val_fingerprint"))
