"""The Reptile ladder's section (``study=deviations_reptile``, one study folder per seed).

From Reptile as the suite ran it before its reference audit to openai/supervised-reptile, one
difference at a time (``configs/study/deviations_reptile.yaml``). Each rung is shown as the mean
± std over seeds of its test accuracy, and its gain over the rung before it pooled over seeds:
the per-task difference (identical test tasks: same fingerprint in every seed) averaged over the
seeds, with a normal 95% interval over the tasks; a rung tested on other tasks than the one
before it (the data rung) gets the unpaired interval of the difference of the pooled means.
"""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from .render import fmt, fmt_g, make_table, new_figure, save_figure

S = 100.0
EXPERIMENTS = ("experiment=omniglot_5w_reptile_fresh", "experiment=omniglot_5w_reptile_openai")


def is_reptile(study: dict) -> bool:
    top = str((((study.get("config") or {}).get("study")) or {}).get("release") or "")
    return "reptile" in top


def _per_task(study: dict, row: dict) -> list[float] | None:
    path = Path(study["folder"]) / str(row["run_dir"]) / str(row["evaluation"])
    try:
        return [float(v) for v in json.loads(path.read_text())["test"]["per_task"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def rungs(seeds: list[dict]) -> list[dict]:
    """One dict per ladder rung: its per-seed accuracies and per-task values, fingerprints, iterations."""
    out: dict[str, dict] = {}
    for study in seeds:
        df = study["tables"]["deviations.csv"]
        for r in df[df["group"] == "ladder"].to_dict("records"):
            d = out.setdefault(r["rung"], {"rung": r["rung"], "acc": [], "tasks": [], "fp": set(), "iters": [],
                                           "seeds": []})
            values = _per_task(study, r)
            if values is None or r["status"] != "completed":
                continue
            d["acc"].append(float(r["accuracy"]))
            d["tasks"].append(values)
            d["fp"].add(r["fingerprint"])
            d["iters"].append(int(r["iterations_done"]))
            d["seeds"].append(int(((study.get("config") or {}).get("seed")) or 0))
    return list(out.values())


def gain(a: dict, b: dict) -> tuple[float, float, float, str] | None:
    """b − a (accuracy points as fractions) with its 95% interval and kind, pooled over the seeds both have."""
    if not a["tasks"] or not b["tasks"] or len(a["tasks"]) != len(b["tasks"]) or a["seeds"] != b["seeds"]:
        return None
    if a["fp"] == b["fp"] and len(a["fp"]) == 1:
        diffs = [statistics.fmean(bs[i] - as_[i] for as_, bs in zip(a["tasks"], b["tasks"]))
                 for i in range(len(a["tasks"][0]))]
        m, sd, n = statistics.fmean(diffs), statistics.pstdev(diffs), len(diffs)
        h = 1.96 * sd / math.sqrt(n)
        return m, m - h, m + h, "paired"
    pa = [v for t in a["tasks"] for v in t]
    pb = [v for t in b["tasks"] for v in t]
    m = statistics.fmean(pb) - statistics.fmean(pa)
    h = 1.96 * math.sqrt(statistics.pvariance(pa) / len(pa) + statistics.pvariance(pb) / len(pb))
    return m, m - h, m + h, "unpaired"


def section(seeds: list[dict], w) -> str:
    rows = rungs(seeds)
    minutes = sorted({fmt_g(m) for s in seeds for m in s["tables"]["deviations.csv"]["budget_minutes"].dropna()})
    devices = sorted({str(d) for s in seeds for d in s["tables"]["deviations.csv"]["device"].dropna()})
    table_rows = []
    for i, r in enumerate(rows):
        g = gain(rows[i - 1], r) if i else None
        table_rows.append({
            "rung": r["rung"], "seeds": len(r["acc"]),
            "accuracy_mean": statistics.fmean(r["acc"]) if r["acc"] else None,
            "accuracy_std": statistics.pstdev(r["acc"]) if len(r["acc"]) > 1 else None,
            "gain_mean": g[0] if g else None, "gain_low": g[1] if g else None, "gain_high": g[2] if g else None,
            "gain_kind": g[3] if g else None,
            "iterations": "/".join(f"{v:,}" for v in r["iters"]) or "—"})
    cols = [("rung", lambda r: "fresh state (the suite before)" if r["rung"] == "paper" else f"+ {r['rung']}", "rung"),
            ("seeds", lambda r: str(r["seeds"]), "seeds"),
            ("test accuracy % (mean ± std over seeds)",
             lambda r: "—" if r["accuracy_mean"] is None else fmt(r["accuracy_mean"], 2, S) + (
                 "" if r["accuracy_std"] is None else f" ± {fmt(r['accuracy_std'], 2, S)}"), "accuracy_mean", "accuracy_std"),
            ("gain over the rung above, pooled over seeds [95% CI]",
             lambda r: "—" if r["gain_mean"] is None else
             f"{fmt(r['gain_mean'], 2, S)} [{fmt(r['gain_low'], 2, S)}, {fmt(r['gain_high'], 2, S)}]"
             + (" (unpaired)" if r["gain_kind"] == "unpaired" else ""),
             "gain_mean", "gain_low", "gain_high", "gain_kind"),
            ("iterations per seed", lambda r: r["iterations"], "iterations")]
    iters = sorted({int(m) for st in seeds if (m := ((st.get("config") or {}).get("study") or {}).get("meta_iterations"))})
    budget = (f"{', '.join(f'{m:,}' for m in iters)} iterations per run (the outer step annealed to 0 over them)" if iters
              else f"{', '.join(minutes) or '?'} min of training per run")
    at = f"{budget} on {', '.join(devices) or 'an unrecorded device'}"
    out = (f"\nOmniglot 5-way 1-shot, Reptile as the suite ran it before its reference audit (`{EXPERIMENTS[0]}`) → "
           f"everything openai/supervised-reptile does (`{EXPERIMENTS[1]}`), one difference at a time "
           f"(`configs/study/deviations_reptile.yaml`; the audit: [docs/fidelity_audit.md](../docs/fidelity_audit.md)), "
           f"{at}, {len(seeds)} seed(s). `+ eval_state` tests the rung above's trained parameters and state again; "
           "`+ network` is comparison a's Reptile row (`experiment=omniglot_5w_reptile`); `+ data` changes the test "
           "characters, so its gain is unpaired.\n")
    out += w.table(make_table("deviations_reptile_ladder", table_rows, cols,
                              ["Gains are accuracy points; paired rows average each test task's difference over the "
                               "seeds, then take a normal 95% interval over the tasks."]))
    fig = _figure(rows, w.fig_dir, at)
    if fig is not None:
        out += w.figure(fig, "Reptile ladder: test accuracy per rung")
    return out


def _figure(rows: list[dict], fig_dir, at: str):
    rows = [r for r in rows if r["acc"]]
    if not rows:
        return None
    fig, (ax,) = new_figure(1, width=5.6, height=3.2)
    y = list(range(len(rows)))[::-1]
    for yi, r in zip(y, rows):
        ax.plot([a * S for a in r["acc"]], [yi] * len(r["acc"]), "o", color="tab:green", alpha=0.5, ms=4)
        ax.plot([statistics.fmean(r["acc"]) * S], [yi], "|", color="black", ms=14)
    ax.set_yticks(y, ["fresh state" if r["rung"] == "paper" else f"+ {r['rung']}" for r in rows], fontsize=8)
    ax.set_xlabel("test accuracy % (dots: seeds; bar: mean)")
    ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"Reptile, Omniglot 5w1s: the suite's earlier protocol → the reference code, {at}", fontsize=8)
    return save_figure(fig, fig_dir / "deviations_reptile.png")
