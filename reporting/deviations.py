"""The deviation-ladder studies' sections (``deviations.csv``): a protocol as its paper writes it → a reference
implementation (the iMAML release, hypertorch's example, the Reptile code), one deviation at a time. The study
computed every difference; this module lays them out, and pools the Reptile ladder's one study per seed.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from .render import TEXT, fmt, fmt_g, fmt_p, fmt_pm, is_missing, make_table

S = 100.0  # accuracy in percent


def is_long(study: dict) -> bool:
    df = study["tables"].get("deviations.csv")
    return df is not None and bool((df["group"] == "endpoints").any())


def _ladders() -> dict[str, dict]:
    """Every deviation ladder's report block (``configs/study/*.yaml``) by its top rung's experiment, in file order."""
    out = {}
    for path in sorted((Path(__file__).resolve().parents[1] / "configs" / "study").glob("*.yaml")):
        cfg = yaml.safe_load(path.read_text())
        if cfg.get("name") == "deviations":
            out[cfg["release"]] = {**cfg["report"], "experiment": cfg["release"],
                                   "config": f"configs/study/{path.name}"}
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
        test = str(sizes).split("/")[-1]  # sizes: train/val/test
        return f"release_leaky: {fmt_g(r.get('test_train_overlap'))} of {test} are training characters"
    return f"held-out, split seed {fmt_g(r.get('split_seed'))} ({sizes})"


def _where(frames: list[pd.DataFrame]) -> tuple[str, str]:
    """(the training minutes per run, the devices) of some ``deviations.csv`` tables, in words."""
    df = pd.concat(frames)
    minutes = ", ".join(sorted({fmt_g(m) for m in df["budget_minutes"].dropna()})) or "?"
    devices = sorted({str(d) for d in df.get("device", pd.Series(dtype=object)).dropna()})
    return minutes, ", ".join(devices) or "an unrecorded device"


def section(study: dict, w) -> str:
    """A table per group of rows the study wrote, worded by ``TEXT["ladder_tables"]``."""
    if "seeds" in study:
        return reptile_section(study["seeds"], w)
    df = study["tables"]["deviations.csv"]
    long, goal = is_long(study), target(study)
    minutes, devices = _where([df])
    at = f"at {minutes} min of training per run on {devices}"
    n = ", ".join(sorted({fmt_g(v) for v in df["n"].dropna()})) or "—"
    steps = "the two end points" if long else "one deviation at a time"
    out = TEXT["ladder_intro"].format(goal=goal["words"], experiment=goal["experiment"], config=goal["config"],
                                      minutes=minutes, n=n, steps=steps)
    out += TEXT["ladder_long_budget" if long else "ladder_short_budget"] + TEXT["ladder_differences"]
    out += TEXT[f"ladder_{goal['text']}_split"]
    ladder, fill = {r["rung"]: r for r in _rows(df, "ladder")}, {"top": goal["top"], "last": goal["last"]}
    first = {"endpoints": [("deviations on", lambda r: "none" if r.get("deviations") in (None, "none")
                            else str(r["deviations"]).replace("+", " + "), "deviations")]}
    more = {"maml": [("iMAML ladder's gain from the same deviation [95% CI]",
                      lambda r: _diff(ladder.get(r["rung"], {})))]}
    for group, spec in TEXT["ladder_tables"].items():
        if not (df["group"] == group).any():
            continue
        words = {k: v.format(**fill) for k, v in spec.items() if k not in ("rung", "names")}
        name = lambda r: spec.get("names", {}).get(r["rung"], spec["rung"]).format(rung=r["rung"], **fill)
        cols = [(words["column"], name, "rung"), *first.get(group, []),
                ("tested on", _split, "test_split", "split_seed", "split_sizes"),
                ("test accuracy % (± 95% CI)", _acc, "accuracy", "ci95", "status"),
                (words["diff"], _diff, "diff_mean", "diff_low", "diff_high", "diff_kind"),
                ("p (Wilcoxon)", lambda r: fmt_p(r.get("diff_p")), "diff_p"), *more.get(group, []),
                ("iterations", lambda r: fmt_g(r.get("iterations_done")), "iterations_done"),
                ("s / iteration", lambda r: fmt(r.get("median_iter_s"), 2), "median_iter_s"),
                ("run", lambda r: f"{r.get('run_dir') or '—'}", "run_dir")]
        out += f"\n#### {words['heading']}, {at}\n" + w.table(make_table(
            f"{'deviations_long' if long else 'deviations'}{goal['suffix']}_{group}", _rows(df, group), cols,
            [words["note"]] if "note" in words else [],
            extra=("group", "rung", "deviations", "algorithm", "n", "vs", "train_minutes")))
    return out


def _per_task(r) -> list[float] | None:
    path = Path(r.folder) / str(r.run_dir) / str(r.evaluation)
    try:
        return [float(v) for v in json.loads(path.read_text())["test"]["per_task"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def gain(a: pd.DataFrame, b: pd.DataFrame) -> tuple[float, float, float, str] | None:
    """b − a (accuracy points as fractions) with its 95% interval and kind, over the same completed seeds:
    paired on identical test tasks (each task's difference averaged over the seeds), else unpaired."""
    if a.empty or list(a["seed"]) != list(b["seed"]):
        return None
    if a["fingerprint"].nunique() == 1 and set(a["fingerprint"]) == set(b["fingerprint"]):
        diffs = (np.array(list(b["tasks"])) - np.array(list(a["tasks"]))).mean(axis=0)
        m, h = float(diffs.mean()), 1.96 * float(diffs.std()) / math.sqrt(len(diffs))
        return m, m - h, m + h, "paired"
    pa, pb = np.concatenate(list(a["tasks"])), np.concatenate(list(b["tasks"]))
    m, h = float(pb.mean() - pa.mean()), 1.96 * math.sqrt(pa.var() / len(pa) + pb.var() / len(pb))
    return m, m - h, m + h, "unpaired"


def reptile_section(seeds: list[dict], w) -> str:
    """The Reptile ladder, one study per seed: per rung its completed seeds' mean ± std and its gain over the rung
    above, pooled over the seeds."""
    runs = pd.concat([s["tables"]["deviations.csv"].assign(seed=int(((s.get("config") or {}).get("seed")) or 0),
                                                          folder=s["folder"]) for s in seeds])
    runs = runs[runs["group"] == "ladder"]
    runs = runs.assign(tasks=[_per_task(r) if r.status == "completed" else None for r in runs.itertuples()])
    done = [(rung, g[g["tasks"].notna()]) for rung, g in runs.groupby("rung", sort=False)]
    rows = []
    for i, (rung, d) in enumerate(done):
        acc = d["accuracy"].to_numpy(float)
        rows.append({"rung": rung, "seeds": len(d), "accuracy_mean": acc.mean() if len(d) else None,
                     "accuracy_std": acc.std() if len(d) > 1 else None,
                     **dict(zip(("gain_mean", "gain_low", "gain_high", "gain_kind"),
                                (gain(done[i - 1][1], d) if i else None) or (None,) * 4)),
                     "per_seed": "; ".join(f"s{r.seed} {fmt(r.accuracy, 2, S)} ({int(r.iterations_done):,})"
                                           for r in d.itertuples()) or "—"})
    cols = [("rung", lambda r: "fresh state (the suite before)" if r["rung"] == "paper" else f"+ {r['rung']}", "rung"),
            ("seeds", "seeds"),
            ("test accuracy % (mean ± std over seeds)", lambda r: fmt_pm(r["accuracy_mean"], r["accuracy_std"], 2, S),
             "accuracy_mean", "accuracy_std"),
            ("gain over the rung above, pooled over seeds [95% CI]", lambda r: _diff(r, "gain"),
             "gain_mean", "gain_low", "gain_high", "gain_kind"),
            ("per seed: test accuracy % (iterations)", "per_seed")]
    iters = sorted({int(m) for s in seeds
                    if (m := ((s.get("config") or {}).get("study") or {}).get("meta_iterations"))})
    minutes, devices = _where([s["tables"]["deviations.csv"] for s in seeds])
    at = (f"{', '.join(f'{m:,}' for m in iters)} iterations per run (the outer step annealed to 0 over them)" if iters
          else f"{minutes} min of training per run") + f" on {devices}"
    table = make_table("deviations_reptile_ladder", rows, cols, [TEXT["reptile_ladder_note"]])
    return TEXT["reptile_ladder_intro"].format(at=at, seeds=len(seeds)) + w.table(table)
