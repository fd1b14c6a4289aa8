"""Section 7, when the assumptions fail (R3.1). Fidelity: each comparison run's meta-gradient against the
exact one along training (the trainer's ``fid_*`` metrics, ``trainer/fidelity.py``). Failures: per setting
× algorithm, who learned, did not learn or diverged, each divergence's stage from the record's own failure
anatomy or ``tools/diagnose.py``'s rerun (``records/diagnoses/<record>/diagnosis.json``, linked as
evidence), each unlearned run's ``diagnose --unlearned`` dissection against its control, and one
diagnosed run's training curves with its failure marked.
"""
from __future__ import annotations

import json
import statistics
from collections import Counter
from pathlib import Path

from . import common as c
from .render import MARKERS, TEXT, colour, fmt, fmt_g, make_table, new_figure, save_figure


def diagnosis(r: dict, root: Path) -> tuple[dict | None, str | None]:
    """(the diagnosis of run ``r``, its path relative to the report) where one exists."""
    rel = Path(str(r["run"])).relative_to(Path(str(r["run"])).parts[0])
    path = root / "diagnoses" / rel / "diagnosis.json"
    try:
        return json.loads(path.read_text()), f"{Path(str(r['run'])).parts[0]}/diagnoses/{rel.as_posix()}/diagnosis.json"
    except (OSError, ValueError):
        return None, None


def _precursor(r: dict, root: Path) -> tuple[str, str | None]:
    """A dissection of the iteration before a divergence (``diagnose --at N``, saved as ``at-N/``): the
    failing task's inner losses, when an exploded but finite adaptation moved θ first."""
    _, link = diagnosis(r, root)
    rel = Path(str(r["run"])).relative_to(Path(str(r["run"])).parts[0])
    for path in sorted((root / "diagnoses" / rel).glob("at-*/diagnosis.json")):
        g = json.loads(path.read_text())["degradation"]
        losses = [e["loss"] for e in g["trace"] if e.get("stage") == "inner"]
        where = f"{Path(str(r['run'])).parts[0]}/diagnoses/{path.relative_to(root / 'diagnoses').as_posix()}"
        return TEXT["precursor"].format(iteration=g["iteration"], task=g["task"], first=losses[0],
                                        last=losses[-1], steps=len(losses)), where
    return "", None


def stage(r: dict, root: Path, judged: dict | None = None) -> tuple[str, list[str]]:
    """Where run ``r`` failed, in words (a divergence with its iteration), and the links to its diagnoses."""
    text, links = _stage(r, root, judged)
    it = f" (iteration {r.get('failure_iteration')})" if r["status"] == "diverged" else ""
    before, at = _precursor(r, root) if r.get("failure_stage") else ("", None)
    return text + it + before, [x for x in (*links, at) if x]


def _stage(r: dict, root: Path, judged: dict | None) -> tuple[str, list[str | None]]:
    d, link = diagnosis(r, root)
    if r.get("failure_stage"):
        return r["failure_stage"], [link]
    if d is None:
        if r["status"] == "completed" and judged:
            return TEXT["not_better"].format(baseline=judged.get("missed")), []
        return "not diagnosed", []
    if d.get("kind") == "unlearned":
        ctrl = d.get("control") or {}
        on = "val" if ctrl.get("val") else "test"
        val = (ctrl.get(on) or {}).get("mean")
        tail = (TEXT["unlearned_control"].format(on=on, val=val)
                if ctrl.get("status") == "completed" and val is not None else "")
        return TEXT["unlearned_stage"].format(cos=d["cos_procedure_of_mean"], dense=d["medians"]["cos_dense"],
                                              left=d["medians"]["inner_residual_rel"], tail=tail), [link]
    if d.get("kind") == "worst_test":
        return TEXT["worst_test"].format(task=d["task"], value=d["task_value"], without=d["mean_without_task"],
                                         median=d["median"]), [link]
    if d.get("degradation"):
        g, dense = d["degradation"], d.get("dense_implicit") or {}
        pd_text = ("" if "positive_definite" not in dense else
                   "; its system " + ("positive definite" if dense["positive_definite"] else
                                      f"indefinite (λ_min {dense['system_eig_min']:.3g})"))
        return (f"degraded, dissected at iteration {g['iteration']}: worst task's CG residual "
                f"{max(g['cg_residuals']):.3g}{pd_text}"), [link]
    if not d.get("failed_again"):
        return "did not fail again in the rerun", [link]
    return (d.get("anatomy") or {}).get("stage", "unknown"), [link]


def protocol(r: dict) -> str:
    """The inner loop a row ran, short: what tells apart protocols of one algorithm."""
    lam = r.get("prox_lam")
    return f"K={r['inner_steps']}, α={r['inner_lr']:g}" + (f", λ={lam:g}" if lam and lam == lam else "")


def rows_of(rows: list[dict], judged: dict, root: Path) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        budget = (f"{r['max_train_minutes']:g} min of training" if r.get("max_train_minutes")
                  else f"{r['meta_iterations']:,} iterations" + (" or the plateau rule" if r.get("early_stop") else ""))
        groups.setdefault((r["setting"], r["label"], protocol(r), budget), []).append(r)
    out = []
    for (setting, label, proto, budget), runs in sorted(groups.items(),
                                                        key=lambda kv: (kv[0][0], c.label_rank(kv[0][1]), kv[0][3], kv[0][2])):
        counts: Counter = Counter()
        stages, links = [], []
        for r in runs:
            done = r["status"] == "completed"
            verdict = (judged.get(r["run"]) or {}).get("status", "no baseline record") if done else str(r["status"])
            counts[verdict] += 1
            if verdict not in ("diverged", "did not learn"):
                continue
            where, found = stage(r, root, judged.get(r["run"]))
            stages.append(f"s{r.get('seed')}: {where}")
            links += found
        out.append({"setting": setting, "algorithm": label, "protocol": proto, "budget": budget, "seeds": len(runs),
                    "outcome": ", ".join(f"{k} {v}" for k, v in sorted(counts.items())),
                    "stages": "; ".join(stages) or "—", "evidence": ", ".join(f"[{i + 1}]({link})"
                                                                              for i, link in enumerate(links)) or "—"})
    return out


def section(rows: list[dict], judged: dict, root: Path, w) -> str:
    table_rows = [r for r in rows_of(rows, judged, root) if r["stages"] != "—" or "did not learn" in r["outcome"]]
    text = TEXT["failures_intro"]
    if not table_rows:
        return text + "\nNo run diverged or failed to learn.\n"
    cols = [("setting", "setting"), ("algorithm", "algorithm"), ("inner loop", "protocol"), ("budget", "budget"),
            ("outcome (runs)", lambda r: r["outcome"], "outcome", "seeds"),
            ("where it diverged or degraded", "stages"), ("evidence", "evidence")]
    text += w.table(make_table("failures_by_algorithm", table_rows, cols))
    controls = control_rows(root)
    if controls:
        text += TEXT["controls_intro"]
        ccols = [("record", lambda r: f"`{r['record']}`", "record"), ("iterations", lambda r: f"{r['iterations']:,}", "iterations"),
                 ("cosine with the procedure's gradient (batch mean)", lambda r: f"{r['cos_procedure']:.2f}", "cos_procedure"),
                 ("cosine with a float64 dense solve (median)", lambda r: f"{r['cos_dense']:.2f}", "cos_dense"),
                 ("inner problem left (median ‖∇G(φ_K)‖ / ‖∇G(θ)‖)", lambda r: f"{r['inner_left']:.0%}", "inner_left"),
                 ("tasks whose I + H/λ is indefinite", lambda r: f"{r['indefinite']} of {r['tasks']}", "indefinite", "tasks"),
                 ("final MSE on", "on"), ("iMAML", lambda r: f"{r['val']:.3g}", "val"),
                 ("control", lambda r: f"{r['control_val']:.3g}" if r["control_val"] is not None else "—",
                  "control_val")]
        text += w.table(make_table("unlearned_controls", controls, ccols, [TEXT["controls_note"]]))
    fig = figure(rows, root, w.fig_dir)
    if fig is not None:
        text += w.figure(fig, "Anatomy of one divergence")
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
                    "inner_left": d["medians"]["inner_residual_rel"], "on": {"val": "validation", "test": "test"}[on], "val": (rec.get(on) or {}).get("mean"),
                    "indefinite": sum(1 for t in d["tasks"] if (t.get("system_eig_min") or 0) < 0),
                    "tasks": len(d["tasks"]),
                    "control_val": (ctrl.get(on) or {}).get("mean") if ctrl.get("status") == "completed" else None})
    return out


def figure(rows: list[dict], root: Path, fig_dir: Path):
    """Training loss, CG residual and inner-gradient norm of the first diagnosed diverged iMAML run."""
    for r in rows:
        d, _ = diagnosis(r, root) if r["status"] == "diverged" else (None, None)
        if not d or not d.get("failed_again") or not r.get("folder"):
            continue
        metrics = c.metrics_rows(r["folder"])
        series = {k: [(int(float(m["iter"])), float(m[k])) for m in metrics if m.get(k) not in (None, "")]
                  for k in ("train_loss", "cg_residual", "inner_grad_norm")}
        if not series["cg_residual"]:
            continue
        fig, axes = new_figure(3, width=3.4, height=2.8)
        for ax, (k, pts) in zip(axes, series.items()):
            ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=0.8)
            ax.axvline(d["failure_iteration"], color="red", ls="--", lw=0.8)
            ax.set_yscale("log")
            ax.set_xlabel("iteration")
            ax.set_title(k.replace("_", " "), fontsize=9)
        a = d.get("anatomy") or {}
        fig.suptitle(f"{r['label']}, {r['setting']}, seed {r.get('seed')}: non-finite at iteration "
                     f"{d['failure_iteration']}, {a.get('stage')} (red)", fontsize=8)
        return save_figure(fig, fig_dir / "failure_anatomy.png")
    return None


FIELDS = ("fid_cos_exact", "fid_cos_solved", "fid_rel_exact")  # iMAML-HF has no exact one: no unrolled Newton solve


def fidelity_points(folder: str) -> list[dict]:
    """The fidelity rows of a run's metrics.csv: iteration and the ``fid_*`` values present."""
    return [{"iter": int(float(row["iter"])), **{k: float(row[k]) for k in FIELDS if row.get(k) not in (None, "")}}
            for row in c.metrics_rows(folder) if any(row.get(k) not in (None, "") for k in FIELDS)]


def fidelity_groups(rows: list[dict]) -> dict[tuple, list[dict]]:
    """Runs with fidelity rows, by (dataset, setting, time cap) and then label."""
    out: dict[tuple, dict[str, list[dict]]] = {}
    for r in rows:
        pts = fidelity_points(r["folder"])
        if pts:
            key = (r["dataset"], r["setting"], r.get("max_train_minutes"))
            out.setdefault(key, {}).setdefault(r["label"], []).append({**r, "_fid": pts})
    return {k: dict(sorted(v.items(), key=lambda kv: c.label_rank(kv[0])))
            for k, v in sorted(out.items(), key=lambda kv: (kv[0][0], c.setting_rank(kv[0][1])))}


def _first_last(runs: list[dict], field: str) -> str:
    """Medians over the runs of their first and of their last measurement of ``field``."""
    first, last = ([r["_fid"][i][field] for r in runs if field in r["_fid"][i]] for i in (0, -1))
    return f"{fmt(statistics.median(first), 2)} → {fmt(statistics.median(last) if last else None, 2)}" if first else "—"


def _name(key: tuple) -> str:
    dataset, setting, minutes = key
    return c.slug("fidelity_train", dataset, setting, f"{fmt_g(minutes)}min" if minutes is not None else "paper")


def fidelity_table(key: tuple, by_label: dict[str, list[dict]]):
    dataset, setting, minutes = key
    rows = []
    for label, runs in by_label.items():
        rows.append({"label": label, "seeds": c.seeds_list(runs), "n_points": sum(len(r["_fid"]) for r in runs),
                     "last_iter": max(r["_fid"][-1]["iter"] for r in runs),
                     "cos_exact": _first_last(runs, "fid_cos_exact"), "cos_solved": _first_last(runs, "fid_cos_solved"),
                     "rel_exact": _first_last(runs, "fid_rel_exact"), "run": c.runs_text(runs)})
    cols = [("algorithm", "label"), ("seeds", "seeds"),
            ("measurements (last iteration)", lambda r: f"{r['n_points']} ({fmt_g(r['last_iter'])})", "n_points",
             "last_iter"),
            ("cos with the exact meta-gradient: first → last", "cos_exact"),
            ("relative error vs exact: first → last", "rel_exact"),
            ("iMAML: cos with its solved system: first → last", "cos_solved"),
            ("runs", "run")]
    notes = [f"{c.title(dataset, setting)}"
             + (f", {fmt_g(minutes)} min of training per run" if minutes is not None else "")
             + TEXT["fidelity_train_note"]]
    return make_table(_name(key), rows, cols, notes)


def fidelity_figure(key: tuple, by_label: dict[str, list[dict]], fig_dir: Path) -> Path | None:
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
    ax.set_title(f"{c.title(dataset, setting)}: fidelity along training"
                 + (f" ({fmt_g(minutes)} min budget)" if minutes is not None else ""), fontsize=10)
    ax.legend(fontsize=7)
    return save_figure(fig, fig_dir / f"{_name(key)}.png")


def fidelity_section(rows: list[dict], w) -> str:
    found = fidelity_groups(rows)
    if not found:
        return TEXT["fidelity_train_intro"] + TEXT["fidelity_train_none"]
    out = TEXT["fidelity_train_intro"]
    for key, by_label in found.items():
        out += w.table(fidelity_table(key, by_label))
        fig = fidelity_figure(key, by_label, w.fig_dir)
        if fig is not None:
            out += w.figure(fig, "Cosine with the exact meta-gradient along training")
    return out
