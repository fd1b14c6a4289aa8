"""Section 7, when the assumptions fail (R3.1): each comparison run's meta-gradient against the exact one along
training (its ``fid_*`` metrics), and per setting × algorithm who did not learn or diverged, where, with the
diagnoses of ``tools/diagnose.py`` (``records/diagnoses/<record>/diagnosis.json``) linked as evidence.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pandas as pd

from . import common as c
from .render import MARKERS, TEXT, colour, fmt, fmt_g, is_missing, make_table, new_figure, save_figure
from .studies import spec_column


def _diagnoses(r: dict, root: Path, pattern: str) -> list[tuple[dict, str]]:
    """Run ``r``'s diagnoses matching ``pattern``, each with its path from the report (``<top>/diagnoses/…``)."""
    top, *rest = Path(str(r["run"])).parts
    found = sorted((root / "diagnoses" / Path(*rest)).glob(pattern)) if rest else []
    return [(json.loads(p.read_text()), f"{top}/diagnoses/{p.relative_to(root / 'diagnoses').as_posix()}")
            for p in found]


def stage(r: dict, root: Path, judged: dict | None = None) -> tuple[str, list[str]]:
    """Where run ``r`` failed, in words, and the links to its diagnoses; one dissected the iteration before
    (``diagnose --at N``, saved as ``at-N/``) also names the failing task's exploded but finite inner losses."""
    try:
        d, link = next(iter(_diagnoses(r, root, "diagnosis.json")), (None, None))
    except ValueError:  # an unreadable diagnosis: none
        d, link = None, None
    links = [link] if link else []
    if r.get("failure_stage"):
        text = r["failure_stage"]
    elif d is None:
        text = (TEXT["not_better"].format(baseline=judged.get("missed")) if r["status"] == "completed" and judged
                else "not diagnosed")
    elif d.get("kind") == "unlearned":  # its numbers: the unlearned runs' table below
        text = TEXT["unlearned_stage"]
    elif d.get("kind") == "worst_test":
        text = TEXT["worst_test"].format(**d)  # its task, task_value, mean_without_task and median
    elif g := d.get("degradation"):
        dense = d.get("dense_implicit") or {}
        text = (f"degraded, dissected at iteration {g['iteration']}: "
                f"worst task's CG residual {max(g['cg_residuals']):.3g}")
        text += "" if "positive_definite" not in dense else "; its system " + (
            "positive definite" if dense["positive_definite"] else f"indefinite (λ_min {dense['system_eig_min']:.3g})")
    else:
        text = (d.get("anatomy") or {}).get("stage", "unknown") if d.get("failed_again") else \
            "did not fail again in the rerun"
    if r["status"] == "diverged":
        text += f" (iteration {r.get('failure_iteration')})"
    if r.get("failure_stage"):
        for before, where in _diagnoses(r, root, "at-*/diagnosis.json")[:1]:
            g = before["degradation"]
            losses = [e["loss"] for e in g["trace"] if e.get("stage") == "inner"]
            text += TEXT["precursor"].format(iteration=g["iteration"], task=g["task"], first=losses[0],
                                             last=losses[-1], steps=len(losses))
            links.append(where)
    if d and len(losses := (d.get("maml_inner_loop") or {}).get("inner_losses") or []) > 1:
        text += TEXT["maml_there"].format(first=losses[0], last=losses[-1], steps=len(losses))
    return text, links


def rows_of(rows: list[dict], judged: dict, root: Path) -> list[dict]:
    """Per setting × algorithm × inner loop × budget with a run that diverged or did not learn: outcomes, stages."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        budget = (f"{r['max_train_minutes']:g} min of training" if r.get("max_train_minutes")
                  else f"{r['meta_iterations']:,} iterations" + (" or the plateau rule" if r.get("early_stop") else ""))
        lam = f", λ={r['prox_lam']:g}" if r.get("prox_lam") and not is_missing(r["prox_lam"]) else ""
        protocol = f"K={r['inner_steps']}, α={r['inner_lr']:g}{lam}"  # what tells apart protocols of one algorithm
        groups.setdefault((r["setting"], r["label"], budget, protocol), []).append(r)
    out, order = [], lambda kv: (kv[0][0], c.label_rank(kv[0][1]), *kv[0][2:])  # setting, algorithm, budget, loop
    for (setting, label, budget, proto), runs in sorted(groups.items(), key=order):
        verdicts = [(judged.get(r["run"]) or {}).get("status", "no baseline record") if r["status"] == "completed"
                    else str(r["status"]) for r in runs]
        failed = [(r, stage(r, root, judged.get(r["run"])))
                  for r, v in zip(runs, verdicts) if v in ("diverged", "did not learn")]
        if not failed:
            continue
        links = [link for _, (_, found) in failed for link in found]
        out.append({"setting": setting, "algorithm": label, "protocol": proto, "budget": budget, "seeds": len(runs),
                    "outcome": ", ".join(f"{k} {v}" for k, v in sorted(Counter(verdicts).items())),
                    "stages": "; ".join(f"s{r.get('seed')}: {where}" for r, (where, _) in failed),
                    "evidence": ", ".join(f"[{i}]({link})" for i, link in enumerate(links, 1)) or "—"})
    return out


def section(rows: list[dict], judged: dict, root: Path, w) -> str:
    table_rows, text = rows_of(rows, judged, root), TEXT["failures_intro"]
    if not table_rows:
        return text + "\nNo run diverged or failed to learn.\n"
    cols = [("setting", "setting"), ("algorithm", "algorithm"), ("inner loop", "protocol"), ("budget", "budget"),
            ("outcome (runs)", lambda r: r["outcome"], "outcome", "seeds"),
            ("where it diverged or degraded", "stages"), ("evidence", "evidence")]
    text += w.table(make_table("failures_by_algorithm", table_rows, cols))
    if controls := control_rows(root):
        ccols = [("record", lambda r: f"`{r['record']}`", "record"), spec_column("iterations", ",", "iterations"),
                 spec_column("cosine with the procedure's gradient (batch mean)", ".2f", "cos_procedure"),
                 spec_column("cosine with a float64 dense solve (median)", ".2f", "cos_dense"),
                 spec_column("inner problem left (median ‖∇G(φ_K)‖ / ‖∇G(θ)‖)", ".0%", "inner_left"),
                 ("tasks whose I + H/λ is indefinite", lambda r: f"{r['indefinite']} of {r['tasks']}", "indefinite",
                  "tasks"), ("final MSE on", "on"), spec_column("the run", ".3g", "val"),
                 spec_column("control", ".3g", "control_val")]
        text += TEXT["controls_intro"] + w.table(make_table("unlearned_controls", controls, ccols,
                                                            [TEXT["controls_note"]]))
    return text


def control_rows(root: Path) -> list[dict]:
    """Every ``diagnose --unlearned`` dissection under ``root/diagnoses`` with its run's validation score."""
    out = []
    for path in sorted((root / "diagnoses").glob("**/diagnosis.json")):
        d = json.loads(path.read_text())
        if d.get("kind") != "unlearned":
            continue
        rec = json.loads((root / d["record"] / "summary.json").read_text())
        ctrl = d.get("control") or {}
        on = "val" if rec.get("val") else "test"  # the run's own final score: validation (a candidate) or test
        out.append({"record": f"records/{d['record']}", "iterations": int(d.get("checkpoint_iteration") or 0),
                    "cos_procedure": d["cos_procedure_of_mean"], "cos_dense": d["medians"]["cos_dense"],
                    "inner_left": d["medians"]["inner_residual_rel"], "on": {"val": "validation", "test": "test"}[on],
                    "val": (rec.get(on) or {}).get("mean"), "tasks": len(d["tasks"]),
                    "indefinite": sum(1 for t in d["tasks"] if (t.get("system_eig_min") or 0) < 0),
                    "control_val": (ctrl.get(on) or {}).get("mean") if ctrl.get("status") == "completed" else None})
    return out


FIELDS = ("fid_cos_exact", "fid_cos_solved", "fid_rel_exact")  # iMAML-HF has no exact one: no unrolled Newton solve
KEY = ["dataset", "setting", "minutes"]


def fidelity_points(rows: list[dict]) -> pd.DataFrame:
    """Every run's ``fid_*`` rows of its metrics.csv, with its label, seed and (dataset, setting, time cap)."""
    frames = [pd.DataFrame(c.metrics_rows(r["folder"]), columns=["iter", *FIELDS]).apply(pd.to_numeric, errors="coerce")
              .dropna(subset=list(FIELDS), how="all")
              .assign(run=r["run"], label=r["label"], seed=r.get("seed"), dataset=r["dataset"], setting=r["setting"],
                      minutes=r.get("max_train_minutes")) for r in rows]
    df = pd.concat([f for f in frames if len(f)] or [pd.DataFrame(columns=["iter", *FIELDS, "run", "label", *KEY])])
    ranks = {label: i for i, label in enumerate(sorted(set(df["label"]), key=c.label_rank))}
    return df.astype({"iter": int}).assign(rank=df["label"].map(ranks))


def _name(key: tuple) -> str:
    dataset, setting, minutes = key
    return c.slug("fidelity_train", dataset, setting, "paper" if is_missing(minutes) else f"{fmt_g(minutes)}min")


def fidelity_table(key: tuple, df: pd.DataFrame):
    """Per algorithm, the medians over its runs of their first and of their last measurement of each field."""
    dataset, setting, minutes = key
    rows = []
    for label, g in df.groupby(["rank", "label"], sort=True):
        ends = [g.groupby("run", sort=False).nth(i).median(numeric_only=True) for i in (0, -1)]
        runs = [{"run": r.run, "seed": None if is_missing(r.seed) else r.seed}
                for r in g.drop_duplicates("run").itertuples()]
        rows.append({"label": label[1], "seeds": c.seeds_list(runs), "n_points": len(g), "last_iter": g["iter"].max(),
                     **{k.removeprefix("fid_"): "—" if is_missing(ends[0][k]) else
                        f"{fmt(ends[0][k])} → {fmt(ends[1][k])}" for k in FIELDS}, "run": c.runs_text(runs)})
    cols = [("algorithm", "label"), ("seeds", "seeds"),
            ("measurements (last iteration)", lambda r: f"{r['n_points']} ({fmt_g(r['last_iter'])})", "n_points",
             "last_iter"),
            ("cos with the exact meta-gradient: first → last", "cos_exact"),
            ("relative error vs exact: first → last", "rel_exact"),
            ("iMAML: cos with its solved system: first → last", "cos_solved"), ("runs", "run")]
    budget = "" if is_missing(minutes) else f", {fmt_g(minutes)} min of training per run"
    return make_table(_name(key), rows, cols, [c.title(dataset, setting) + budget + TEXT["fidelity_train_note"]])


def fidelity_figure(key: tuple, df: pd.DataFrame, fig_dir: Path) -> Path:
    """Cosine with the exact meta-gradient vs iteration: a colour per algorithm, a line per seed."""
    dataset, setting, minutes = key
    fig, (ax,) = new_figure()
    for (_, label), g in df.dropna(subset=["fid_cos_exact"]).groupby(["rank", "label"], sort=True):
        n = g["run"].nunique()
        for i, (_, run) in enumerate(g.groupby("run", sort=False)):
            ax.plot(run["iter"], run["fid_cos_exact"], marker=MARKERS[i % len(MARKERS)], markersize=2, lw=0.8,
                    color=colour(label), label=None if i else f"{label} ({n} seed{'s' * (n > 1)})")
    ax.set_xscale("symlog", linthresh=10)
    ax.set(xlabel="meta-iteration", ylabel="cosine with the exact meta-gradient", ylim=(-1.05, 1.05))
    ax.grid(alpha=0.3)
    ax.set_title(f"{c.title(dataset, setting)}: fidelity along training"
                 + ("" if is_missing(minutes) else f" ({fmt_g(minutes)} min budget)"), fontsize=10)
    ax.legend(fontsize=7)
    return save_figure(fig, fig_dir / f"{_name(key)}.png")


def fidelity_section(rows: list[dict], w) -> str:
    df = fidelity_points(rows)
    out = TEXT["fidelity_train_intro"]
    if df.empty:
        return out + TEXT["fidelity_train_none"]
    order = lambda kv: (kv[0][0], c.setting_rank(kv[0][1]))  # dataset, then setting
    for key, g in sorted(df.groupby(KEY, sort=False, dropna=False), key=order):
        out += w.table(fidelity_table(key, g)) + w.figure(fidelity_figure(key, g, w.fig_dir),
                                                          "Cosine with the exact meta-gradient along training")
    return out
