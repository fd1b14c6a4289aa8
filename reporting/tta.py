"""Time to accuracy (the wall-clock question), read from the committed ``bench.tta`` records
(``bench_tta/*.json`` beside the records folder; harness in ``BENCHMARKS.md``): one Omniglot 5-way
1-shot run each, grown segment by segment, each segment its minutes, iterations and test result."""
from __future__ import annotations

import json
from pathlib import Path

import catalog

from .render import TEXT, Table, fmt, make_table, new_figure, save_figure

# The thresholds bench.tta reports against (its MINIMUM and TARGET).
THRESHOLDS = (0.95, 0.97)
FIXED = ("experiment=", "data.root=", "meta_iterations=", "eval.val_every=", "ckpt_every=", "device=",
         "diagnostics=", "batching=")


def load(folder: Path) -> list[dict]:
    """The records with at least one segment: those of the exact meta-gradient (the reference) first, then by name."""
    out = []
    for f in sorted(Path(folder).glob("*.json")) if folder and Path(folder).is_dir() else []:
        try:
            r = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(r, dict) and r.get("segments"):
            first = r["segments"][0]["summary"]
            out.append(dict(r, name=r.get("name") or f.stem, label=first.get("label") or r["algorithm"],
                            seed=first.get("seed"), device=first.get("device_name") or first.get("device") or "?"))
    exact = {n for n in catalog.algorithms() if catalog.algorithm(n)["family"] == "exact"}
    return sorted(out, key=lambda r: (r["algorithm"] not in exact, r["name"]))


def _at(s: dict | None, what: str = "{min} min ({it:,} it., {acc})") -> str:
    """A segment's minutes, iterations and test accuracy ± 95% CI, in ``what``'s words."""
    if s is None:
        return "not reached"
    acc = f"{fmt(s['test_mean'], 2, 100)} ± {fmt(s['test_ci95'], 2, 100)}"
    return what.format(min=fmt(s["train_wall_s"] / 60, 1), it=s["iterations"], acc=acc)


def table(records: list[dict]) -> Table:
    rows = []
    for r in records:
        first = {t: next((s for s in r["segments"] if s["test_mean"] >= t), None) for t in THRESHOLDS}
        best = max(r["segments"], key=lambda s: (s["test_mean"], -s["train_wall_s"]))
        changed = [o.replace("algorithm.hparams.", "") for o in r.get("overrides", []) if not o.startswith(FIXED)]
        rows.append({"name": r["name"], "label": r["label"], "changed": ", ".join(changed) or "the published protocol",
                     "seed": r["seed"], "first": first, "best": best,
                     **{f"min_{t}": (s or {}).get("train_wall_s") for t, s in first.items()},
                     "best_mean": best["test_mean"], "best_ci95": best["test_ci95"],
                     "best_minutes": best["train_wall_s"] / 60})
    cols = [("run", lambda d: f"`{d['name']}`", "name"), ("algorithm", "label"),
            ("changed from the protocol", "changed"),
            *((f"first ≥ {100 * t:g}%", lambda d, t=t: _at(d["first"][t]), f"min_{t}") for t in THRESHOLDS),
            ("best (± 95% CI)", lambda d: _at(d["best"], "{acc} after {min} min"), "best_mean", "best_ci95",
             "best_minutes")]
    return make_table("time_to_accuracy", rows, cols, [TEXT["tta_note"]], extra=("seed",))


def figure(records: list[dict], fig_dir: Path) -> Path:
    fig, (ax,) = new_figure(width=7.5, height=4.2)
    for r in records:
        ax.errorbar([s["train_wall_s"] / 60 for s in r["segments"]], [100 * s["test_mean"] for s in r["segments"]],
                    yerr=[100 * s["test_ci95"] for s in r["segments"]], marker="o", ms=4, capsize=3,
                    label=f"{r['name']} ({r['label']})")
    for t, style in zip(THRESHOLDS, ("--", ":")):
        ax.axhline(100 * t, color="gray", ls=style, lw=0.8)
    ax.set_xlabel("training wall-clock (minutes, one CPU thread)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Omniglot 5-way 1-shot: time to accuracy (600 test tasks, 95% CI)", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    return save_figure(fig, fig_dir / "time_to_accuracy.png")


def devices(records: list[dict]) -> list[str]:
    return sorted({r["device"] for r in records})
