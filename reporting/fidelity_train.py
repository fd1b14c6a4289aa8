"""When the assumptions fail: each comparison run's meta-gradient against the exact one, along training.

The trainer's ``fidelity_every`` (``trainer/fidelity.py``) measures, in float64 on the run's own
meta-batch and off the budget clock, the cosine between the run's estimator and the exact
meta-gradient of the objective it optimises (second-order MAML through the same inner loop:
``fid_cos_exact``) and, for iMAML, between its CG solution and its own linear system solved with
100 CG steps (``fid_cos_solved``). iMAML's implicit gradient equals the exact one only when the inner
problem is solved and strongly convex (Rajeswaran et al. 2019, Theorem 1); this section shows how
far each estimator is from the exact gradient where those assumptions fail.
"""
from __future__ import annotations

import statistics
from pathlib import Path

from . import common as c
from .render import MARKERS, TEXT, colour, fmt, fmt_g, make_table, new_figure, save_figure

FIELDS = ("fid_cos_exact", "fid_cos_solved", "fid_rel_exact")  # iMAML-HF has no exact one: no unrolled Newton solve


def points(folder: str) -> list[dict]:
    """The fidelity rows of a run's metrics.csv: iteration and the ``fid_*`` values present."""
    return [{"iter": int(float(row["iter"])), **{k: float(row[k]) for k in FIELDS if row.get(k) not in (None, "")}}
            for row in c.metrics_rows(folder) if any(row.get(k) not in (None, "") for k in FIELDS)]


def groups(rows: list[dict]) -> dict[tuple, list[dict]]:
    """Runs with fidelity rows, by (dataset, setting, time cap) and then label."""
    out: dict[tuple, dict[str, list[dict]]] = {}
    for r in rows:
        pts = points(r["folder"])
        if pts:
            key = (r["dataset"], r["setting"], r.get("max_train_minutes"))
            out.setdefault(key, {}).setdefault(r["label"], []).append({**r, "_fid": pts})
    return {k: dict(sorted(v.items(), key=lambda kv: c.label_rank(kv[0])))
            for k, v in sorted(out.items(), key=lambda kv: (kv[0][0], c.setting_rank(kv[0][1])))}


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _first_last(runs: list[dict], field: str) -> str:
    first = _median([r["_fid"][0][field] for r in runs if field in r["_fid"][0]])
    last = _median([r["_fid"][-1][field] for r in runs if field in r["_fid"][-1]])  # each run's last measurement
    if first is None:
        return "—"
    return f"{fmt(first, 2)} → {fmt(last, 2)}"


def table(key: tuple, by_label: dict[str, list[dict]]):
    dataset, setting, minutes = key
    rows = []
    for label, runs in by_label.items():
        rows.append({"label": label, "seeds": c.seeds_list(runs), "n_points": sum(len(r["_fid"]) for r in runs),
                     "last_iter": max(r["_fid"][-1]["iter"] for r in runs),
                     "cos_exact": _first_last(runs, "fid_cos_exact"), "cos_solved": _first_last(runs, "fid_cos_solved"),
                     "rel_exact": _first_last(runs, "fid_rel_exact"), "run": c.runs_text(runs)})
    cols = [("algorithm", lambda r: r["label"], "label"), ("seeds", lambda r: r["seeds"], "seeds"),
            ("measurements (last iteration)", lambda r: f"{r['n_points']} ({fmt_g(r['last_iter'])})", "n_points",
             "last_iter"),
            ("cos with the exact meta-gradient: first → last", lambda r: r["cos_exact"], "cos_exact"),
            ("relative error vs exact: first → last", lambda r: r["rel_exact"], "rel_exact"),
            ("iMAML: cos with its solved system: first → last", lambda r: r["cos_solved"], "cos_solved"),
            ("runs", lambda r: r["run"], "run")]
    name = c.slug("fidelity_train", dataset, setting, f"{fmt_g(minutes)}min" if minutes is not None else "paper")
    notes = [f"{c.DATASET_NAMES.get(dataset, dataset)} {setting}"
             + (f", {fmt_g(minutes)} min of training per run" if minutes is not None else "")
             + TEXT["fidelity_train_note"]]
    return make_table(name, rows, cols, notes)


def figure(key: tuple, by_label: dict[str, list[dict]], fig_dir: Path) -> Path | None:
    """Cosine with the exact meta-gradient vs training iteration, one line per run."""
    dataset, setting, minutes = key
    fig, (ax,) = new_figure()
    for label, runs in by_label.items():  # one colour per algorithm, a thin line per seed, one legend entry
        first = True
        for i, r in enumerate(runs):
            pts = [p for p in r["_fid"] if "fid_cos_exact" in p]
            if not pts:
                continue
            ax.plot([p["iter"] for p in pts], [p["fid_cos_exact"] for p in pts], marker=MARKERS[i % len(MARKERS)],
                    markersize=2, lw=0.8, color=colour(label),
                    label=f"{label} ({len(runs)} seed{'s' * (len(runs) > 1)})" if first else None)
            first = False
    ax.set_xscale("symlog", linthresh=10)
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel("cosine with the exact meta-gradient")
    ax.set_ylim(-1.05, 1.05)
    ax.grid(alpha=0.3)
    ax.set_title(f"{c.DATASET_NAMES.get(dataset, dataset)} {setting}: fidelity along training"
                 + (f" ({fmt_g(minutes)} min budget)" if minutes is not None else ""), fontsize=10)
    ax.legend(fontsize=7)
    name = c.slug("fidelity_train", dataset, setting, f"{fmt_g(minutes)}min" if minutes is not None else "paper")
    return save_figure(fig, fig_dir / f"{name}.png")


def section(rows: list[dict], w) -> str:
    found = groups(rows)
    if not found:
        return TEXT["fidelity_train_intro"] + "\nNo run recorded fidelity yet: `make reproduce` runs with `fidelity_every` on.\n"
    out = TEXT["fidelity_train_intro"]
    for key, by_label in found.items():
        out += w.table(table(key, by_label))
        fig = figure(key, by_label, w.fig_dir)
        if fig is not None:
            out += w.figure(fig, "Cosine with the exact meta-gradient along training")
    return out
