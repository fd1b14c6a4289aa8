"""The deviation-ladder studies' sections (``study=deviations``, ``deviations.csv``): a protocol as its paper
writes it → a reference implementation (the official iMAML release, hypertorch's example, the Reptile reference
code), one deviation at a time at one training budget. The study computed every difference (paired on identical
test tasks, else unpaired); this module lays them out. The Reptile ladder keeps one study folder per seed and is
pooled here: each rung's mean ± std over seeds, its gain as the per-task difference averaged over seeds.
"""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pandas as pd
import yaml

from .render import TEXT, fmt, fmt_g, fmt_p, fmt_pm, is_missing, make_table, new_figure, save_figure

S = 100.0  # accuracy in percent


def is_long(study: dict) -> bool:
    df = study["tables"].get("deviations.csv")
    return df is not None and bool((df["group"] == "endpoints").any())


def _ladders() -> dict[str, dict]:
    """Every deviation ladder's report block (``configs/study/*.yaml`` of study ``deviations``), by the
    experiment its top rung composes to (``release``), in file order (the release's ladder first)."""
    out = {}
    for path in sorted((Path(__file__).resolve().parents[1] / "configs" / "study").glob("*.yaml")):
        cfg = yaml.safe_load(path.read_text())
        if cfg.get("name") == "deviations":
            out[cfg["release"]] = {**cfg["report"], "experiment": cfg["release"], "config": f"configs/study/{path.name}"}
    return out


LADDERS = _ladders()


def target(study: dict) -> dict:
    """The report block of the ladder a study climbed (matched by its ``release``; the first ladder's otherwise)."""
    top = str((((study.get("config") or {}).get("study")) or {}).get("release") or "")
    return LADDERS.get(top) or next(iter(LADDERS.values()))


def _rows(df: pd.DataFrame, group: str) -> list[dict]:
    rows = df[df["group"] == group].to_dict("records")
    return [{k: (None if is_missing(v) else v) for k, v in r.items()} for r in rows]


def _acc(r: dict) -> str:
    if r.get("accuracy") is None:
        return "—" if r.get("status") == "completed" else str(r.get("status"))
    return f"{fmt(r['accuracy'], 2, S)} ± {fmt(r['ci95'], 2, S)}"


def _diff(r: dict, key: str = "diff") -> str:
    """``key``'s mean [95% interval], marked where unpaired."""
    if r.get(f"{key}_mean") is None:
        return "—"
    text = f"{fmt(r[f'{key}_mean'], 2, S)} [{fmt(r[f'{key}_low'], 2, S)}, {fmt(r[f'{key}_high'], 2, S)}]"
    return text + (" (unpaired)" if r.get(f"{key}_kind") == "unpaired" else "")


def _split(r: dict) -> str:
    if r.get("test_split") is None:
        return "—"
    sizes = r.get("split_sizes") or "—"
    if r["test_split"] == "release_leaky":
        test = str(sizes).split("/")[-1]
        return f"release_leaky: {fmt_g(r.get('test_train_overlap'))} of {test} are training characters"
    return f"held-out, split seed {fmt_g(r.get('split_seed'))} ({sizes})"


def _table(name: str, rows: list[dict], first: list, diff_title: str, notes: list[str], more: tuple = ()):
    """A ladder table: ``first`` (the rung's columns), the test and its difference, ``more``, the run."""
    cols = [*first, ("tested on", _split, "test_split", "split_seed", "split_sizes"),
            ("test accuracy % (± 95% CI)", _acc, "accuracy", "ci95", "status"),
            (diff_title, _diff, "diff_mean", "diff_low", "diff_high", "diff_kind"),
            ("p (Wilcoxon)", lambda r: fmt_p(r.get("diff_p")), "diff_p"), *more,
            ("iterations", lambda r: fmt_g(r.get("iterations_done")), "iterations_done"),
            ("s / iteration", lambda r: fmt(r.get("median_iter_s"), 2), "median_iter_s"),
            ("run", lambda r: f"{r.get('run_dir') or '—'}", "run_dir")]
    return make_table(name, rows, cols, notes,
                      extra=("group", "rung", "deviations", "algorithm", "n", "vs", "train_minutes"))


def _figure(df: pd.DataFrame, prefix: str, at: str, fig_dir, goal: str = "release"):
    """Test accuracy ± 95% CI per rung: the ladder (left) and each deviation removed alone (right)."""
    panels = [(g, rows) for g in ("ladder", "removed")
              if (rows := [r for r in _rows(df, g) if r.get("accuracy") is not None])]
    if not panels:
        return None
    fig, axes = new_figure(len(panels), width=5.2, height=3.6)
    for ax, (group, rows) in zip(axes, panels):
        names = [("paper" if r["rung"] == "paper" else f"+ {r['rung']}") if group == "ladder" else
                 (f"full {goal}" if r["rung"] == "release" else f"− {r['rung']}") for r in rows]
        y = list(range(len(rows)))[::-1]
        ax.errorbar([r["accuracy"] * S for r in rows], y, xerr=[r["ci95"] * S for r in rows], fmt="o", capsize=3)
        ax.set_yticks(y, names, fontsize=8)
        ax.set_xlabel("test accuracy % (± 95% CI)")
        ax.set_title("deviations added one at a time" if group == "ladder" else f"each removed from the {goal}",
                     fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"iMAML on Omniglot 5w1s, paper → {goal}, {at}", fontsize=9)
    return save_figure(fig, fig_dir / f"{prefix}.png")


def section(study: dict, w) -> str:
    if "seeds" in study:
        return reptile_section(study["seeds"], w)
    df = study["tables"]["deviations.csv"]
    long, goal = is_long(study), target(study)
    prefix = ("deviations_long" if long else "deviations") + goal["suffix"]
    goal_words, goal_exp, goal_cfg = goal["words"], goal["experiment"], goal["config"]
    minutes = ", ".join(sorted({fmt_g(m) for m in df["budget_minutes"].dropna()})) or "?"
    devices = ", ".join(sorted({str(d) for d in df["device"].dropna()})) if "device" in df else ""
    at = f"at {minutes} min of training per run on {devices or 'an unrecorded device'}"
    n = ", ".join(sorted({fmt_g(v) for v in df["n"].dropna()})) or "—"
    out = TEXT["ladder_intro"].format(goal=goal_words, experiment=goal_exp, config=goal_cfg, minutes=minutes, n=n,
                                      steps="the two end points" if long else "one deviation at a time")
    out += TEXT["ladder_long_budget" if long else "ladder_short_budget"] + TEXT["ladder_differences"]
    out += TEXT[f"ladder_{goal['text']}_split"]
    top = goal["top"]
    ladder = {r["rung"]: r for r in _rows(df, "ladder")}
    plus = lambda bottom: (lambda r: r["rung"] if r["rung"] == bottom else f"+ {r['rung']}")
    last = goal["last"]
    tables = {  # group → heading, the rung's columns, the difference's title, notes, more columns
        "endpoints": ("The paper as written and the full release", [("end point", "rung"),
                      ("deviations on", lambda r: "none" if r.get("deviations") in (None, "none")
                       else str(r["deviations"]).replace("+", " + "), "deviations")], "release − paper [95% CI]", [], ()),
        "ladder": ("The ladder: deviations added one at a time", [("rung", plus("paper"), "rung")],
                   "gain over the previous rung [95% CI]",
                   [f"Each rung adds one deviation to the rung above it; the last is {last}."], ()),
        "removed": (f"Each deviation removed alone from {top}",
                    [("removed", lambda r: f"none ({top})" if r["rung"] == "release" else f"− {r['rung']}", "rung")],
                    f"difference from {top} [95% CI]", [f"Negative: {top} is better with the deviation than without it."],
                    ()),
        "leaky": ("The release's leaky evaluation split",
                  [("test characters", lambda r: "clean" if r["rung"] == "clean" else "leaky", "rung")],
                  "inflation: leaky − clean [95% CI]", [TEXT["ladder_leaky_note"]], ()),
        "maml": ("MAML beside the ladder", [("MAML rung", plus("maml"), "rung")],
                 "gain over the previous MAML rung [95% CI]", [TEXT["ladder_maml_note"]],
                 (("iMAML ladder's gain from the same deviation [95% CI]",
                   lambda r: _diff(ladder[r["rung"]]) if r["rung"] in ladder else "—"),))}
    for group, (heading, first, diff_title, notes, more) in tables.items():
        if (df["group"] == group).any():
            out += f"\n#### {heading}, {at}\n" + w.table(_table(f"{prefix}_{group}", _rows(df, group), first,
                                                                 diff_title, notes, more))
        if group == "endpoints" and (fig := _figure(df, prefix, at, w.fig_dir, goal["figure"])) is not None:
            out += w.figure(fig, "Deviation ladder: test accuracy per rung")
    return out


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


def reptile_section(seeds: list[dict], w) -> str:
    rows = rungs(seeds)
    minutes = sorted({fmt_g(m) for s in seeds for m in s["tables"]["deviations.csv"]["budget_minutes"].dropna()})
    devices = sorted({str(d) for s in seeds for d in s["tables"]["deviations.csv"]["device"].dropna()})
    table_rows = [{"rung": r["rung"], "seeds": len(r["acc"]),
                   "accuracy_mean": statistics.fmean(r["acc"]) if r["acc"] else None,
                   "accuracy_std": statistics.pstdev(r["acc"]) if len(r["acc"]) > 1 else None,
                   **dict(zip(("gain_mean", "gain_low", "gain_high", "gain_kind"),
                              (gain(rows[i - 1], r) if i else None) or (None,) * 4)),
                   "iterations": "/".join(f"{v:,}" for v in r["iters"]) or "—"} for i, r in enumerate(rows)]
    cols = [("rung", lambda r: "fresh state (the suite before)" if r["rung"] == "paper" else f"+ {r['rung']}", "rung"),
            ("seeds", "seeds"),
            ("test accuracy % (mean ± std over seeds)", lambda r: fmt_pm(r["accuracy_mean"], r["accuracy_std"], 2, S),
             "accuracy_mean", "accuracy_std"),
            ("gain over the rung above, pooled over seeds [95% CI]", lambda r: _diff(r, "gain"),
             "gain_mean", "gain_low", "gain_high", "gain_kind"),
            ("iterations per seed", "iterations")]
    iters = sorted({int(m) for st in seeds if (m := ((st.get("config") or {}).get("study") or {}).get("meta_iterations"))})
    budget = (f"{', '.join(f'{m:,}' for m in iters)} iterations per run (the outer step annealed to 0 over them)" if iters
              else f"{', '.join(minutes) or '?'} min of training per run")
    at = f"{budget} on {', '.join(devices) or 'an unrecorded device'}"
    out = TEXT["reptile_ladder_intro"].format(at=at, seeds=len(seeds))
    out += w.table(make_table("deviations_reptile_ladder", table_rows, cols, [TEXT["reptile_ladder_note"]]))
    done = [r for r in rows if r["acc"]]
    if done:  # each seed's accuracy per rung (dots) and their mean (bar)
        fig, (ax,) = new_figure(1, width=5.6, height=3.2)
        y = list(range(len(done)))[::-1]
        for yi, r in zip(y, done):
            ax.plot([a * S for a in r["acc"]], [yi] * len(r["acc"]), "o", color="tab:green", alpha=0.5, ms=4)
            ax.plot([statistics.fmean(r["acc"]) * S], [yi], "|", color="black", ms=14)
        ax.set_yticks(y, ["fresh state" if r["rung"] == "paper" else f"+ {r['rung']}" for r in done], fontsize=8)
        ax.set_xlabel("test accuracy % (dots: seeds; bar: mean)")
        ax.grid(axis="x", alpha=0.3)
        fig.suptitle(f"Reptile, Omniglot 5w1s: the suite's earlier protocol → the reference code, {at}", fontsize=8)
        out += w.figure(save_figure(fig, w.fig_dir / "deviations_reptile.png"), "Reptile ladder: test accuracy per rung")
    return out
