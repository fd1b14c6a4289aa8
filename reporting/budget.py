"""Comparison a: each algorithm at its published protocol, all at one training-time budget.

Runs are grouped by (dataset, test setting, budget): one setup table says how each run was
configured, one results table shows the test metric, whether it beat its baseline and how far
each run got in that budget (iterations, seconds per iteration, peak memory). The learning-curve
figure plots the validation metric against minutes of training, one line per algorithm.
"""
from __future__ import annotations

import math
from pathlib import Path

from . import baselines, render
from . import common as c
from .render import TEXT, Table, fmt, fmt_g, fmt_pm, make_table, new_figure, save_figure


def is_sweep(row: dict) -> bool:
    return (row.get("experiment") or "").startswith("sweep_")


def budget_title(dataset: str, setting: str, minutes, rows: list[dict]) -> str:
    name = c.DATASET_NAMES.get(dataset, dataset) + ("" if c.is_regression(dataset) else f" {setting}")
    devices = ", ".join(sorted({r.get("device_name") or r.get("device") or "?" for r in rows}))
    if minutes is None:
        early = " or ended by the declared plateau rule" if any(c.budget_kind(r) == "converged" for r in rows) else ""
        return f"{name}: published protocols at the papers' iteration counts{early} ({devices})"
    return f"{name}: published protocols at an equal budget of {fmt_g(minutes)} min of training per run ({devices})"


def _peak_mib(r: dict):
    b = r.get("gpu_peak_bytes") if r.get("device") == "cuda" else r.get("alloc_peak_bytes")
    return None if b is None else b / 2**20


def _label(r: dict) -> str:
    return f"{r['label']} (baseline)" if baselines.is_baseline(r) else c.label_text(r)


# What defines a run's setup, kept in the setup table's CSV whether or not a column shows it.
SETUP_KEYS = ("iterations_done", "meta_iterations", "shots", "test_shots", "query_shots", "test_query_shots",
              "outer_optimizer", "outer_lr", "outer_clip", "outer_anneal", "inner_optimizer", "inner_lr", "prox_lam",
              "inner_steps", "test_steps", "lam", "cg_steps", "bn_mode", "meta_batch_size", "seed", "device", "dtype")


def setup_table(key: tuple, rows: list[dict]) -> Table:
    """What each configuration of the setting was set up with (one row per configuration, its seeds
    together): one table per setting, so the results tables carry results only."""
    dataset, setting, minutes = key
    cols = [("algorithm", _label, "label"), ("protocol", lambda r: r.get("protocol") or "—", "protocol"),
            ("inner (opt lr; steps train/test)", lambda r: f"{c.inner_text(r)}; {c.steps_text(r)} steps",
             "inner_optimizer", "inner_lr", "prox_lam", "inner_steps", "test_steps"),
            ("λ / CG", c.lam_cg_text, "lam", "cg_steps"),
            ("outer (opt lr)", c.outer_text, "outer_optimizer", "outer_lr", "outer_clip", "outer_anneal"),
            ("meta-batch", lambda r: fmt_g(r.get("meta_batch_size")), "meta_batch_size"),
            *((f"{side} shots (support + query)", lambda r, s=s, q=q: f"{fmt_g(r.get(s))} + {fmt_g(r.get(q))}", s, q)
              for side, s, q in (("train", "shots", "query_shots"), ("test", "test_shots", "test_query_shots"))),
            ("BN", lambda r: r.get("bn_mode") or "—", "bn_mode"),
            ("run on", lambda r: f"seeds {r['seed']}, {r.get('device') or '—'}, {r.get('dtype') or '—'}",
             "seed", "device", "dtype")]
    out = [dict(runs[0], seed=c.seeds_list(runs), run=c.runs_text(runs)) for runs in c.config_groups(rows)]
    name = c.slug("setup", dataset, setting, f"{fmt_g(minutes)}min" if minutes is not None else "paper")
    return make_table(name, out, cols, extra=("experiment", "profile", *SETUP_KEYS, "device_name", "run"))


def learned_text(runs: list[dict], judged: dict[str, dict]) -> str:
    """Whether the configuration beat its baselines: one run's judgement, or how many seeds did."""
    if baselines.is_baseline(runs[0]):
        return "— (a baseline)"
    done = [r for r in runs if r["run"] in judged]
    if len(done) <= 1:
        return baselines.text(done[0], judged) if done else "—"
    states = [judged[r["run"]]["status"] for r in done]
    if len(set(states)) == 1:
        return f"{states[0]} (all {len(done)} seeds)"
    bad = [fmt_g(r.get("seed")) for r in done if judged[r["run"]]["status"] == baselines.DID_NOT_LEARN]
    return f"learned in {len(done) - len(bad)} of {len(done)} seeds; did not learn: seed {', '.join(bad)}"


def _reached(runs: list[dict]) -> str:
    done = sorted(r["iterations_done"] for r in runs)
    span = f"{done[0]:,}" if done[0] == done[-1] else f"{done[0]:,}–{done[-1]:,}"
    rule = sum(c.budget_kind(r) == "converged" for r in runs)
    tail = "" if not rule else ", ended by the plateau rule" + ("" if rule == len(runs) else f" in {rule} seeds")
    return f"{span} of {runs[0]['meta_iterations']:,}{tail}"


def _mean_of(runs: list[dict], key: str) -> float | None:
    vals = [r[key] for r in runs if r.get(key) is not None]
    return sum(vals) / len(vals) if vals else None


def protocol_table(key: tuple, rows: list[dict], judged: dict[str, dict], pool: list[dict] = ()) -> Table:
    """Results at the budget, one row per configuration: the test metric (mean ± std over seeds and
    each seed's value with its 95% CI, or one run's value ± 95% CI), whether it beat its baselines and
    how far the runs got. ``pool``: every record, where a zero predictor on the same test tasks is found."""
    dataset, setting, minutes = key
    configs = c.config_groups(rows)
    several = any(len(runs) > 1 for runs in configs)
    out = []
    for runs in configs:
        g = c.over_seeds(runs)
        peaks = [p for p in (_peak_mib(r) for r in runs) if p is not None]
        out.append(dict(runs[0], _runs=runs, seeds=c.seeds_list(runs), seeds_mean=g["mean"], seeds_std=g["std"],
                        seeds_runs=g["n"], peak_mib=max(peaks) if peaks else None, learned=learned_text(runs, judged),
                        run=c.runs_text(runs), train_wall_s=_mean_of(runs, "train_wall_s"),
                        median_iter_s=_mean_of(runs, "median_iter_s")))
    spread = ("seeds_mean", "seeds_std", "seeds_runs")
    cols = [("algorithm", _label, "label"),
            ("status", lambda r: c.status_summary(r["_runs"]), "status")]
    if several:
        cols += [("test metric (mean ± std over seeds)", lambda r: c.spread_text(r["_runs"]), *spread),
                 ("per seed (± 95% CI over test tasks)", lambda r: c.per_seed_text(r["_runs"]), "seeds")]
    else:
        cols += [("seed", "seeds"), ("test metric (± 95% CI)", lambda r: c.spread_text(r["_runs"]), *spread)]
    cols += [("vs baseline", "learned"),
             ("iterations (of the paper's)", lambda r: _reached(r["_runs"]), "iterations_done", "meta_iterations"),
             ("training min", lambda r: fmt(None if r.get("train_wall_s") is None else r["train_wall_s"] / 60, 1),
              "train_wall_s"),
             ("s / iteration", lambda r: fmt(r.get("median_iter_s"), 3), "median_iter_s"),
             ("peak MiB", lambda r: fmt(r["peak_mib"], 1), "peak_mib"), ("run", "run")]
    accuracy = (rows[0].get("metric") or c.metric_of(dataset)) == "accuracy"
    notes = [TEXT["protocols_note"].format(metric="accuracy in %" if accuracy else "MSE (lower is better)")]
    if c.DATASETS.get(dataset, {}).get("baseline") == "zero_predictor":
        notes += _baseline_note(rows, [*rows, *pool])
    name = c.slug("protocols", dataset, setting, f"{fmt_g(minutes)}min" if minutes is not None else "paper")
    return make_table(name, out, cols, notes,
                      extra=("protocol", "experiment", "metric", "max_train_minutes", "device", "device_name"))


def _baseline_note(rows: list[dict], pool: list[dict]) -> list[str]:
    """What a regression row is judged against, with the zero predictor's value on these test tasks."""
    zero = next((z for z in (baselines.zero_predictor(r, pool) for r in rows) if z), None)
    note = TEXT["regression_baseline_note"].format(
        none="" if any(baselines.is_baseline(r) for r in rows) else " (none at this budget)")
    return [note + (TEXT["zero_predictor_note"].format(mse=fmt_pm(zero["mean"], zero["ci95"], 3)) if zero else "")]


def curve(folder: str) -> list[tuple[float, float, int]]:
    """(training minutes, validation metric, iteration) of every validated iteration in metrics.csv."""
    pts = []
    for row in c.metrics_rows(folder):
        v, t = row.get("val_metric"), row.get("train_wall_s")
        if v not in (None, "") and t not in (None, ""):
            pts.append((float(t) / 60, float(v), int(float(row["iter"]))))
    return pts


def plot_band(ax, curves: list[list[tuple[float, float]]], colour: str, label: str, band: bool) -> None:
    """The seeds' curves on one grid (the points of all, up to where the shortest ends): their mean as a
    line and, with ``band``, their minimum-to-maximum as a shaded band."""
    import numpy as np

    end = min(cv[-1][0] for cv in curves)
    grid = np.array(sorted({x for cv in curves for x, _ in cv if x <= end}))
    ys = np.array([np.interp(grid, [x for x, _ in cv], [y for _, y in cv]) for cv in curves])
    ax.plot(grid, ys.mean(0), color=colour, lw=1.4, label=label)
    if band:
        ax.fill_between(grid, ys.min(0), ys.max(0), color=colour, alpha=0.2, lw=0)


def label_axes(ax, regression: bool, xlabel: str) -> None:
    """A learning-curve panel's axes: the validation metric (MSE log-scaled) against ``xlabel``."""
    if regression:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("validation MSE" if regression else "validation accuracy (%)")


def curves_figure(key: tuple, rows: list[dict], fig_dir: Path) -> Path | None:
    """Validation metric vs training wall-clock per algorithm: the mean over its seeds, a band from their
    minimum to their maximum, one colour per algorithm (``render.colour``), the final test results as
    stars; for runs without a time cap (the papers' budgets) also against iterations, in a second panel."""
    dataset, setting, minutes = key
    fig, axes = new_figure(1 if minutes is not None else 2)
    by_label: dict[str, list[dict]] = {}
    for r in sorted(rows, key=lambda r: (c.label_rank(r["label"]), r.get("seed") or 0)):
        by_label.setdefault(r["label"], []).append(r)
    drawn = False
    for label, runs in by_label.items():
        s, _ = c.scale_of(runs[0].get("metric") or c.metric_of(dataset))
        colour = render.colour(label)
        curves = [(r, pts) for r in runs if (pts := curve(r["folder"]))]
        if not curves:
            continue
        for ax, x, end in zip(axes, (0, 2), ("train_wall_s", "iterations_done")):
            plot_band(ax, [[(p[x], p[1] * s) for p in pts] for _, pts in curves], colour,
                      f"{label} ({len(curves)} seed{'s' * (len(curves) > 1)})", band=len(curves) > 1)
            for r, _ in curves:
                if r["status"] == "completed" and not math.isnan(r["mean"]) and r.get(end) is not None:
                    ax.plot([r[end] / 60 if x == 0 else r[end]], [r["mean"] * s], marker="*", markersize=9,
                            color=colour, linestyle="none")
        drawn = True
    if not drawn:
        return None
    for ax, xlabel in zip(axes, ("training wall-clock (minutes)", "meta-iteration")):
        label_axes(ax, c.is_regression(dataset), xlabel)
    axes[0].set_title(f"{c.title(dataset, setting)}: learning curves"
                      + (f" ({fmt_g(minutes)} min budget)" if minutes is not None else ""), fontsize=10)
    axes[0].legend(fontsize=7)
    name = c.slug("curves", dataset, setting, f"{fmt_g(minutes)}min" if minutes is not None else "paper")
    return save_figure(fig, fig_dir / f"{name}.png")


def groups(rows: list[dict]) -> dict[tuple, list[dict]]:
    """Runs of named published-protocol experiments (comparison a, not the inner-step sweep) by
    (dataset, test setting, training-minutes cap)."""
    out: dict[tuple, list[dict]] = {}
    for r in rows:
        if r.get("experiment") and not is_sweep(r) and r.get("protocol"):
            out.setdefault((r["dataset"], r["setting"], r.get("max_train_minutes")), []).append(r)
    return {k: sorted(v, key=lambda r: (c.label_rank(r["label"]), r.get("seed") or 0, r["run"]))
            for k, v in sorted(out.items(), key=lambda kv: (kv[0][0], c.setting_rank(kv[0][1]),
                                                               kv[0][2] is None, kv[0][2] or 0))}
