"""Comparison a: each algorithm at its published protocol, all at one training-time budget.

Runs are grouped by (dataset, test setting, budget): rows show the test metric, how far each
run got in that budget (iterations, seconds per iteration, peak memory) and its paired
difference from MAML on the identical test tasks. The learning-curve figure answers the
wall-clock question (R3): validation metric against minutes of training, one line per algorithm.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

from . import common as c
from .render import MARKERS, Table, fmt, fmt_g, make_table, new_figure, save_figure
from .stats import PairingError, improvement_interval, paired_comparison

BASELINE = "MAML"


def is_sweep(row: dict) -> bool:
    return (row.get("experiment") or "").startswith("sweep_")


def protocol_rows(rows: list[dict]) -> list[dict]:
    """Runs of named published-protocol experiments (comparison a), not of the inner-step sweep."""
    return [r for r in rows if r.get("experiment") and not is_sweep(r) and r.get("protocol")]


def budget_key(r: dict) -> tuple:
    return (r["dataset"], r["setting"], r.get("max_train_minutes"))


def budget_title(dataset: str, setting: str, minutes, rows: list[dict]) -> str:
    name = f"{c.DATASET_NAMES.get(dataset, dataset)} {setting if dataset != 'sinusoid' else ''}".strip()
    devices = sorted({r.get("device_name") or r.get("device") or "?" for r in rows})
    if minutes is None:
        return f"{name}: published protocols at the papers' iteration counts ({', '.join(devices)})"
    return (f"{name}: published protocols at an equal budget of {fmt_g(minutes)} min of training per run "
            f"({', '.join(devices)})")


def _peak_mib(r: dict):
    b = r.get("gpu_peak_bytes") if r.get("device") == "cuda" else r.get("alloc_peak_bytes")
    return None if b is None else b / 2**20


def _vs_baseline(r: dict, base: dict | None) -> dict:
    out = {"vs_mean": None, "vs_low": None, "vs_high": None, "vs_note": "—"}
    if base is None or r is base or r["status"] != "completed" or base["status"] != "completed":
        return out
    try:
        p = paired_comparison(r["per_task"], base["per_task"], r.get("fingerprint"), base.get("fingerprint"),
                              r["metric"] == "accuracy")
    except (PairingError, TypeError) as e:
        return dict(out, vs_note=f"not paired: {e}")
    m, lo, hi = improvement_interval(p, r["metric"] == "accuracy")
    return dict(out, vs_mean=m, vs_low=lo, vs_high=hi, vs_note="")


def protocol_table(key: tuple, rows: list[dict]) -> Table:
    dataset, setting, minutes = key
    base = next((r for r in rows if r["label"] == BASELINE and r["status"] == "completed"), None)
    out = []
    for r in rows:
        d = dict(r, peak_mib=_peak_mib(r), **_vs_baseline(r, base))
        out.append(d)
    s, digits = c.scale_of(rows[0].get("metric") or ("mse" if dataset == "sinusoid" else "accuracy"))

    def vs(r):
        if r["vs_mean"] is None:
            return r["vs_note"]
        return (f"{fmt(r['vs_mean'], digits, s)} [{fmt(r['vs_low'], digits, s)}, {fmt(r['vs_high'], digits, s)}]")

    cols = [("algorithm", c.label_text), ("protocol", lambda r: r.get("protocol") or "—"),
            ("status", c.status_text), ("test metric (± 95% CI)", c.result_text),
            (f"improvement over {BASELINE} [95% CI]", vs),
            ("iterations reached", lambda r: f"{r['iterations_done']:,}"),
            ("training min", lambda r: fmt(None if r.get("train_wall_s") is None else r["train_wall_s"] / 60, 1)),
            ("s / iteration", lambda r: fmt(r.get("median_iter_s"), 3)),
            ("peak MiB", lambda r: fmt(r["peak_mib"], 1)),
            ("steps train/test", c.steps_text), ("inner (opt lr)", c.inner_text),
            ("λ / CG", c.lam_cg_text), ("meta-batch", lambda r: fmt_g(r.get("meta_batch_size"))),
            ("shots train/test", c.shots_text), ("seed", lambda r: fmt_g(r.get("seed"))), ("run", lambda r: r["run"])]
    raw = ("label", "protocol", "experiment", "status", "metric", "mean", "ci95", "n", "vs_mean", "vs_low", "vs_high",
           "iterations_done", "meta_iterations", "max_train_minutes", "train_wall_s", "median_iter_s", "peak_mib",
           "inner_steps", "test_steps", "inner_optimizer", "inner_lr", "lam", "cg_steps", "meta_batch_size",
           "shots", "test_shots", "seed", "device", "device_name", "run")
    metric_word = "accuracy in %, differences in points" if s == 100 else "MSE (lower is better); improvement = MSE reduction"
    notes = [f"{metric_word}. Improvement over {BASELINE}: paired on the identical test tasks (a bootstrap 95% CI "
             "over tasks); every run is tested with its own protocol's test-time adaptation.",
             "s / iteration: median wall-clock of one meta-iteration (meta-gradient and outer step); peak MiB: "
             "the largest allocation peak sampled during training (CPU profiler; CUDA peak on a GPU).",
             f"{c.NOT_PAPER} stopped by the time budget before the paper's iteration count: the row measures what "
             "each method reaches in this budget, not the paper's number."]
    name = c.slug("protocols", dataset, setting, f"{fmt_g(minutes)}min" if minutes is not None else "paper")
    return make_table(name, out, cols, raw, notes)


def _curve(folder: str) -> list[tuple[float, float]]:
    """(training minutes, validation metric) of every validated iteration in metrics.csv."""
    path = Path(folder) / "metrics.csv"
    if not path.exists():
        return []
    pts = []
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            v, t = row.get("val_metric"), row.get("train_wall_s")
            if v not in (None, "") and t not in (None, ""):
                pts.append((float(t) / 60, float(v)))
    return pts


def curves_figure(key: tuple, rows: list[dict], fig_dir: Path) -> Path | None:
    """Validation metric vs training wall-clock, one line per run; the final test result as a star."""
    dataset, setting, minutes = key
    fig, (ax,) = new_figure()
    drawn = False
    for i, r in enumerate(sorted(rows, key=lambda r: (c.label_rank(r["label"]), r.get("seed") or 0))):
        pts = _curve(r["folder"])
        if not pts:
            continue
        s, _ = c.scale_of(r.get("metric") or ("mse" if dataset == "sinusoid" else "accuracy"))
        line, = ax.plot([p[0] for p in pts], [p[1] * s for p in pts], marker=MARKERS[i % len(MARKERS)],
                        markersize=3, label=f"{r['label']} (seed {r.get('seed')})")
        if r["status"] == "completed" and r.get("train_wall_s") is not None and not math.isnan(r["mean"]):
            ax.plot([r["train_wall_s"] / 60], [r["mean"] * s], marker="*", markersize=11, color=line.get_color())
        drawn = True
    if not drawn:
        return None
    if dataset == "sinusoid":
        ax.set_yscale("log")
    ax.set_xlabel("training wall-clock (minutes)")
    ax.set_ylabel("validation accuracy (%)" if dataset != "sinusoid" else "validation MSE")
    ax.set_title(f"{c.DATASET_NAMES.get(dataset, dataset)} {setting}: learning curves"
                 + (f" ({fmt_g(minutes)} min budget)" if minutes is not None else ""), fontsize=10)
    ax.legend(fontsize=7)
    name = c.slug("curves", dataset, setting, f"{fmt_g(minutes)}min" if minutes is not None else "paper")
    return save_figure(fig, fig_dir / f"{name}.png")


def groups(rows: list[dict]) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = {}
    for r in protocol_rows(rows):
        out.setdefault(budget_key(r), []).append(r)
    return {k: sorted(v, key=lambda r: (c.label_rank(r["label"]), r.get("seed") or 0, r["run"]))
            for k, v in sorted(out.items(), key=lambda kv: (kv[0][0], c.setting_rank(kv[0][1]),
                                                               kv[0][2] is None, kv[0][2] or 0))}
