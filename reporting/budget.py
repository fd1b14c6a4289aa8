"""Comparison a: each algorithm at its published protocol, all at one training-time budget. Per (dataset, test
setting, budget): a setup table, a results table (test metric, baseline, how far the runs got) and learning curves."""
from __future__ import annotations

import math
from itertools import groupby
from pathlib import Path

from . import baselines, render
from . import common as c
from .campaign import OUTCOMES
from .records import setting_name
from .render import TEXT, Table, fmt, fmt_g, fmt_pm, make_table, new_figure, save_figure
from .stats import mean_std


def is_sweep(row: dict) -> bool:
    return (row.get("experiment") or "").startswith("sweep_")


def _name(kind: str, key: tuple) -> str:
    """The file stem of a budget group's table or figure: 'protocols_omniglot_5w1s_4min'."""
    dataset, setting, minutes = key
    return c.slug(kind, dataset, setting, "paper" if minutes is None else f"{fmt_g(minutes)}min")


def budget_title(dataset: str, setting: str, minutes, rows: list[dict]) -> str:
    name = c.DATASET_NAMES.get(dataset, dataset) + ("" if c.is_regression(dataset) else f" {setting}")
    devices = ", ".join(sorted({r.get("device_name") or r.get("device") or "?" for r in rows}))
    if minutes is None:
        early = " or ended by the declared plateau rule" if any(c.budget_kind(r) == "converged" for r in rows) else ""
        return f"{name}: published protocols at the papers' iteration counts{early} ({devices})"
    return f"{name}: published protocols at an equal budget of {fmt_g(minutes)} min of training per run ({devices})"


def _label(r: dict) -> str:
    """The run's label, marked † when it is below the paper's scale."""
    if baselines.is_baseline(r):
        return f"{r['label']} (baseline)"
    return r["label"] if c.budget_kind(r) is not None else f"{r['label']} †"


def _optimizer(r: dict, side: str) -> str:
    """'sgd 0.1, prox 2' or 'adam 0.001, clip 10, annealed': the side's optimizer, learning rate and options set."""
    options = ([f"prox {fmt_g(r['prox_lam'])}" if r.get("prox_lam") else ""] if side == "inner" else
               [f"clip {fmt_g(r['outer_clip'])}" if r.get("outer_clip") is not None else "",
                "annealed" if r.get("outer_anneal") else ""])
    return ", ".join([f"{r.get(side + '_optimizer') or '—'} {fmt_g(r.get(side + '_lr'))}", *filter(None, options)])


def setup_table(key: tuple, rows: list[dict]) -> Table:
    """How each configuration of the setting was set up, one row per configuration (its seeds together)."""
    cols = [("algorithm", _label, "label"), ("protocol", lambda r: r.get("protocol") or "—", "protocol"),
            ("inner (opt lr; steps train/test)",
             lambda r: f"{_optimizer(r, 'inner')}; {fmt_g(r.get('inner_steps'))}/{fmt_g(r.get('test_steps'))} steps",
             "inner_optimizer", "inner_lr", "prox_lam", "inner_steps", "test_steps"),
            ("λ / CG", lambda r: "—" if r.get("lam") is None and r.get("cg_steps") is None
             else f"{fmt_g(r.get('lam'))} / {fmt_g(r.get('cg_steps'))}", "lam", "cg_steps"),
            ("outer (opt lr)", lambda r: _optimizer(r, "outer"),
             "outer_optimizer", "outer_lr", "outer_clip", "outer_anneal"),
            ("meta-batch", lambda r: fmt_g(r.get("meta_batch_size")), "meta_batch_size"),
            *((f"{side} shots (support + query)", lambda r, s=s, q=q: f"{fmt_g(r.get(s))} + {fmt_g(r.get(q))}", s, q)
              for side, s, q in (("train", "shots", "query_shots"), ("test", "test_shots", "test_query_shots"))),
            ("BN", lambda r: r.get("bn_mode") or "—", "bn_mode"),
            ("run on", lambda r: f"seeds {r['seed']}, {r.get('device') or '—'}, {r.get('dtype') or '—'}",
             "seed", "device", "dtype")]
    out = [dict(runs[0], seed=c.seeds_list(runs), run=c.runs_text(runs)) for runs in c.config_groups(rows)]
    return make_table(_name("setup", key), out, cols,
                      extra=("experiment", "profile", "iterations_done", "meta_iterations", "device_name", "run"))


def _reached(runs: list[dict]) -> str:
    done = sorted(r["iterations_done"] for r in runs)
    span = f"{done[0]:,}" if done[0] == done[-1] else f"{done[0]:,}–{done[-1]:,}"
    rule = sum(c.budget_kind(r) == "converged" for r in runs)
    tail = "" if not rule else ", ended by the plateau rule" + ("" if rule == len(runs) else f" in {rule} seeds")
    return f"{span} of {runs[0]['meta_iterations']:,}{tail}"


def _mean_of(runs: list[dict], key: str) -> float:
    return mean_std([r[key] for r in runs if r.get(key) is not None])[0]


def pooled(runs: list[dict], judged: dict[str, dict], pool: list[dict]) -> dict:
    """A configuration's seeds pooled (a row of the report's ``summary``): outcome counts, the test metric over seeds
    (and after 1, 5 and 10 test steps), cost and run folders. ``pool``: where to find a zero predictor."""
    r, base, minutes = runs[0], baselines.is_baseline(runs[0]), runs[0].get("max_train_minutes")
    done = [x for x in runs if x["status"] == "completed"]
    mean, std, n = mean_std([x["mean"] for x in done])
    steps = {k: mean_std([x["by_steps"][k] for x in done if (x.get("by_steps") or {}).get(k) is not None])
             for k in (1, 5, 10)}
    peaks = [x.get("gpu_peak_bytes") if x.get("device") == "cuda" else x.get("alloc_peak_bytes") for x in runs]
    return {
        "dataset": r["dataset"], "setting": r["setting"], "label": r["label"], "role": "baseline" if base else "method",
        "budget": r.get("profile") or "?" if minutes is None else f"{fmt_g(minutes)} min", "minutes": minutes,
        "metric": r.get("metric") or c.metric_of(r["dataset"]),
        "seeds": len(runs), "completed": n, "diverged": sum(x["status"] == "diverged" for x in runs),
        "at_paper_budget": sum(c.budget_kind(x) is not None for x in done),
        "learned": sum(judged.get(x["run"], {}).get("status") == baselines.LEARNED for x in done),
        "beat_chance": 0 if base else sum(baselines.judge(x, [], pool)["status"] == baselines.LEARNED for x in done),
        "mean": mean, "std": std, "ci95": mean_std([x["ci95"] for x in done])[0],
        **{f"{stat}_{k}": ms[i] for k, ms in steps.items() for i, stat in enumerate(("mean", "std"))},
        "iterations_min": min(x["iterations_done"] for x in runs),
        "iterations_max": max(x["iterations_done"] for x in runs),
        "meta_iterations": r["meta_iterations"], "bn_mode": r.get("bn_mode"),
        "train_minutes": _mean_of(runs, "train_wall_s") / 60, "s_per_iter": _mean_of(runs, "median_iter_s"),
        "peak_mib": max((p / 2**20 for p in peaks if p is not None), default=math.nan),
        "experiment": r.get("experiment"), "run": c.runs_text(runs)}


def _status(runs: list[dict]) -> str:
    """'completed' when every seed completed, else each stopped seed's status."""
    if not (bad := [r for r in runs if r["status"] != "completed"]):
        return "completed"
    if len(runs) == 1:
        return c.status_text(bad[0])
    return f"{len(runs) - len(bad)} of {len(runs)} completed; " + "; ".join(
        f"seed {fmt_g(r.get('seed'))} {c.status_text(r)}" for r in bad)


def _spread(r: dict) -> str:
    """A pooled row's test metric: mean ± std over its completed seeds, or one run's mean ± 95% CI."""
    s, d = c.scale_of(r["metric"])
    if r["completed"] < 2:
        return fmt_pm(r["mean"], r["ci95"], d, s)
    return f"{fmt(r['mean'], d, s)} ± {fmt(r['std'], d, s)} ({r['completed']} seeds)"


def _per_seed(r: dict) -> str:
    """Each seed's result ± 95% CI over test tasks, or its status."""
    return "; ".join(f"s{fmt_g(x.get('seed'))} {c.result_text(x) if x['status'] == 'completed' else x['status']}"
                     for x in r["_runs"])


def protocol_table(key: tuple, rows: list[dict], judged: dict[str, dict], pool: list[dict]) -> Table:
    """Results at the budget, one row per configuration: the test metric, whether it beat its baselines and
    how far the runs got. ``pool``: every record, where a zero predictor on the same test tasks is found."""
    dataset, configs = key[0], c.config_groups(rows)
    out = [{**runs[0], **pooled(runs, judged, [*rows, *pool]), "_runs": runs, "seeds": c.seeds_list(runs),
            "learned": baselines.text(runs, judged)} for runs in configs]
    several = any(len(runs) > 1 for runs in configs)
    spread = ("test metric (mean ± std over seeds)" if several else "test metric (± 95% CI)", _spread,
              "mean", "std", "completed")
    cols = [("algorithm", _label, "label"), ("status", lambda r: _status(r["_runs"]), "status"),
            *([spread, ("per seed (± 95% CI over test tasks)", _per_seed, "seeds")] if several
              else [("seed", "seeds"), spread]),
            ("vs baseline", "learned"),
            ("iterations (of the paper's)", lambda r: _reached(r["_runs"]), "iterations_done", "meta_iterations"),
            ("training min", lambda r: fmt(r["train_minutes"], 1), "train_minutes"),
            ("s / iteration", lambda r: fmt(r["s_per_iter"], 3), "s_per_iter"),
            ("peak MiB", lambda r: fmt(r["peak_mib"], 1), "peak_mib"), ("run", "run")]
    accuracy = (rows[0].get("metric") or c.metric_of(dataset)) == "accuracy"
    notes = [TEXT["protocols_note"].format(metric="accuracy in %" if accuracy else "MSE (lower is better)")]
    if c.DATASETS.get(dataset, {}).get("baseline") == "zero_predictor":
        zero = next(filter(None, (baselines.zero_predictor(r, [*rows, *pool]) for r in rows)), None)
        none = "" if any(baselines.is_baseline(r) for r in rows) else " (none at this budget)"
        notes.append(TEXT["regression_baseline_note"].format(none=none) + (
            TEXT["zero_predictor_note"].format(mse=fmt_pm(zero["mean"], zero["ci95"], 3)) if zero else ""))
    return make_table(_name("protocols", key), out, cols, notes,
                      extra=("protocol", "experiment", "metric", "max_train_minutes", "device", "device_name"))


def curve(folder: str) -> list[tuple[float, float, int]]:
    """(training minutes, validation metric, iteration) of every validated iteration in metrics.csv."""
    return [(float(row["train_wall_s"]) / 60, float(row["val_metric"]), int(float(row["iter"])))
            for row in c.metrics_rows(folder) if row.get("val_metric") and row.get("train_wall_s")]


def draw(axes: list, rows: list[dict], dataset: str) -> bool:
    """Each algorithm's validation metric against training minutes (and iterations, on a second axis if given):
    the mean over its seeds up to where the shortest ends, a band from their min to max. False without curves."""
    import numpy as np

    scale, _ = c.scale_of(c.metric_of(dataset))
    for label, runs in groupby(sorted(rows, key=lambda r: (c.label_rank(r["label"]), r.get("seed") or 0)),
                               key=lambda r: r["label"]):
        curves = [pts for r in runs if r.get("folder") and (pts := curve(r["folder"]))]
        if not curves:
            continue
        for ax, x in zip(axes, (0, 2)):
            last = min(pts[-1][x] for pts in curves)
            grid = np.array(sorted({p[x] for pts in curves for p in pts if p[x] <= last}))
            ys = np.array([np.interp(grid, [p[x] for p in pts], [p[1] * scale for p in pts]) for pts in curves])
            ax.plot(grid, ys.mean(0), color=render.colour(label), lw=1.4,
                    label=f"{label} ({len(curves)} seed{'s' * (len(curves) > 1)})")
            if len(curves) > 1:
                ax.fill_between(grid, ys.min(0), ys.max(0), color=render.colour(label), alpha=0.2, lw=0)
    regression = c.is_regression(dataset)
    for ax, xlabel in zip(axes, ("training wall-clock (minutes)", "meta-iteration")):
        ax.set(xlabel=xlabel, ylabel="validation MSE" if regression else "validation accuracy (%)",
               yscale="log" if regression else "linear")
    return bool(axes[0].lines)


def unfinished(key: tuple, plan: list[dict]) -> list[dict]:
    """The campaign runs (:func:`reporting.campaign.runs`) of the group (papers' budgets only) that have validated but
    not ended."""
    dataset, setting, minutes = key
    return [r for r in plan if minutes is None and r["curve"] and r["status"] not in OUTCOMES
            and (r["dataset"], setting_name(r["dataset"], r["ways"], r["shots"])) == (dataset, setting)]


def curves_figure(key: tuple, rows: list[dict], fig_dir: Path, running: list[dict] = ()) -> Path | None:
    """The group's learning curves (:func:`draw`); without a time cap (the papers' budgets) also vs iterations,
    with the saved validations of its campaign runs not yet ended (:func:`unfinished`) dashed against iterations."""
    dataset, setting, minutes = key
    fig, axes = new_figure(1 if minutes is not None else 2)
    if not draw(axes, rows, dataset) and not running:
        return None
    scale, _ = c.scale_of(c.metric_of(dataset))
    for r in running:  # against iterations only: its minutes may mix machines, and they would squash the rest
        axes[-1].plot([p[0] for p in r["curve"]], [p[1] * scale for p in r["curve"]], ls="--", lw=1.2,
                      color=render.colour(r["label"]), label=f"{r['label']} (s{r['seed']}, unfinished: "
                                                              f"{r['done']:,} of {r['planned']:,})")
    axes[0].set_title(f"{c.title(dataset, setting)}: learning curves"
                      + (f" ({fmt_g(minutes)} min budget)" if minutes is not None else ""), fontsize=10)
    for ax in axes[:1] if not running else axes:  # the dashed runs' legend beside them
        if ax.lines:
            ax.legend(fontsize=7)
    return save_figure(fig, fig_dir / f"{_name('curves', key)}.png")


def groups(rows: list[dict]) -> dict[tuple, list[dict]]:
    """Runs of named published-protocol experiments (comparison a, not the inner-step sweep) by
    (dataset, test setting, training-minutes cap), each group's runs by algorithm and seed."""
    ours = sorted((r for r in rows if r.get("experiment") and not is_sweep(r) and r.get("protocol")),
                  key=lambda r: (r["dataset"], c.setting_rank(r["setting"]), r.get("max_train_minutes") is None,
                                 r.get("max_train_minutes") or 0, c.label_rank(r["label"]), r.get("seed") or 0,
                                 r["run"]))
    key = lambda r: (r["dataset"], r["setting"], r.get("max_train_minutes"))  # noqa: E731
    return {k: list(g) for k, g in groupby(ours, key=key)}
