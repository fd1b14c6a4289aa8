"""The Limitations section, generated from the records: seeds per setting and budget, the budget
as a fraction of the papers' iterations, runs that stopped, rows that did not learn, protocol
choices that were not published (records whose ``source`` is ``selected`` or ``stated``, in the
words of their experiment's ``protocol``) and how they were tuned (the selection records),
devices used, and what has never run."""
from __future__ import annotations

from dataclasses import dataclass

from . import baselines
from . import common as c
from .paper import PaperNumbers
from .render import Table, fmt_g, make_table


@dataclass
class Inputs:
    rows: list[dict]            # algorithm rows (no sweep, no baselines)
    bases: list[dict]           # baseline records
    judged: dict[str, dict]     # run → baselines.judge
    studies: list[dict]
    tta_devices: list[str]
    paper: PaperNumbers
    selections: list[dict]      # reporting.records selection records


def _budget_groups(rows: list[dict]) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = {}
    for r in rows:
        out.setdefault((r["dataset"], r["setting"], r.get("max_train_minutes")), []).append(r)
    return dict(sorted(out.items(), key=lambda kv: (kv[0][0], c.setting_rank(kv[0][1]), kv[0][2] is None,
                                                    kv[0][2] or 0)))


def _name(key: tuple) -> str:
    where = f"{c.DATASET_NAMES.get(key[0], key[0])} {key[1]}"
    if len(key) < 3:
        return where
    return f"{where} ({fmt_g(key[2])} min)" if key[2] is not None else f"{where} (no time cap)"


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%" if x >= 0.1 else f"{100 * x:.2g}%"


def _seeds(groups: dict[tuple, list[dict]]) -> str:
    parts = []
    for key, rows in groups.items():
        by_label = {}
        for r in rows:
            by_label.setdefault(r["label"], []).append(r)
        sets = {lab: c.seeds_list(v) for lab, v in by_label.items()}
        if len(set(sets.values())) == 1:
            parts.append(f"{_name(key)} {next(iter(sets.values()))}")
        else:
            parts.append(f"{_name(key)} " + ", ".join(f"{lab} {s}" for lab, s in
                                                       sorted(sets.items(), key=lambda kv: c.label_rank(kv[0]))))
    many = any(len({r.get("seed") for r in rows}) > 1 for rows in groups.values())
    one = any(len({r.get("seed") for r in rows}) == 1 for rows in groups.values())
    return (f"**Seeds.** Training seeds per setting and budget: {'; '.join(parts) or 'none'}."
            + (" Where there is one seed, every 95% CI is over test tasks only and says nothing about the spread "
               "across training runs." if one else "")
            + (" Where there are several, the tables give the mean ± std over seeds; a handful of seeds is a "
               "small sample of that spread." if many else ""))


def _budget(groups: dict[tuple, list[dict]]) -> str:
    def frac(rows):
        fr = sorted(r["iterations_done"] / r["meta_iterations"] for r in rows if r.get("meta_iterations"))
        return (_pct(fr[0]) if _pct(fr[0]) == _pct(fr[-1]) else f"{_pct(fr[0])}–{_pct(fr[-1])}") if fr else "—"
    return (f"**Budget.** Iterations reached as a fraction of the paper's: "
            f"{'; '.join(f'{_name(k)} {frac(v)}' for k, v in groups.items()) or 'no runs'}. {c.NOT_PAPER} marks "
            "every row below the paper's budget; such a row measures what a method reaches in that budget, not the "
            "paper's number.")


def _stopped(rows: list[dict]) -> str:
    bad = [r for r in rows if r["status"] != "completed"]
    return ("**Stopped runs** (shown in their tables with their status, never dropped): "
            + ("; ".join(f"{r['label']} {_name((r['dataset'], r['setting']))} seed {fmt_g(r.get('seed'))}: "
                         f"{c.status_text(r)} (`{r['run']}`)" for r in bad) or "none") + ".")


def _did_not_learn(x: Inputs) -> str:
    bad = [r for r in x.rows if x.judged.get(r["run"], {}).get("status") == baselines.DID_NOT_LEARN]
    none = sorted({_name((r["dataset"], r["setting"])) for r in x.rows
                   if x.judged.get(r["run"], {}).get("status") == baselines.NO_BASELINE})
    groups: dict[tuple, list[dict]] = {}
    for r in bad:
        groups.setdefault((r["label"], r["dataset"], r["setting"], r.get("max_train_minutes")), []).append(r)
    text = "; ".join(f"{k[0]} {_name(k[1:])} seed {c.seeds_list(v)}" for k, v in groups.items())
    return ("**Did not learn** (95% CI not above every baseline: chance or a baseline record for classification; "
            "the pretrained network of the same seed and budget and the zero predictor for sinusoid; no better/worse "
            "wording is given for them): " + (text or "none") + "."
            + (f" No baseline for {', '.join(none)}: rows there are not judged." if none else ""))


def _grid(sel: dict) -> str:
    return " × ".join(f"{k.rsplit('.', 1)[-1]} {{{', '.join(fmt_g(v) for v in vals)}}}" for k, vals in sel["grid"].items())


def _winner(sel: dict) -> str:
    return ", ".join(f"{k.rsplit('.', 1)[-1]} {fmt_g(v)}" for k, v in sorted(sel["winner"].items()))


def _selection_text(s: dict, labels: dict) -> str:
    stopped = f"; {s['stopped']} stopped early" if s["stopped"] else ""
    return (f"{labels.get(s['experiment'], s['algorithm'])} on {s['setting']}: {s['candidates']} candidates "
            f"({_grid(s)}{stopped}), {fmt_g(s['budget_minutes'])} min of training each, {fmt_g(s['val_tasks'])} "
            f"validation tasks, seed {fmt_g(s['seed'])} → {_winner(s)} (`{s['run']}`)")


def _protocols(x: Inputs) -> str:
    chosen = sorted({(r["label"], r["protocol"]) for r in x.rows if r.get("protocol") and r["source"] != "published"},
                    key=lambda t: (c.label_rank(t[0]), t[1]))
    text = ("**Protocol choices not taken from a paper** (the experiment's `protocol` field): "
            + ("; ".join(f"{lab}: {p}" for lab, p in chosen) or "none") + ".")
    if x.selections:
        labels = {r.get("experiment"): r["label"] for r in x.rows + x.bases}
        text += (" **How they were tuned**: selected on validation tasks only, never on test tasks — "
                 + "; ".join(_selection_text(s, labels) for s in x.selections) + ".")
    return text


def _never(x: Inputs) -> str:
    rows = x.rows
    never = []
    if not any(r.get("device") == "cuda" for r in rows):
        never.append("a GPU training run")
    at_paper = {r["dataset"] for r in rows if c.budget_kind(r) == "paper"}
    converged = {r["dataset"] for r in rows if c.budget_kind(r) == "converged"} - at_paper
    missing_scale = sorted({r["dataset"] for r in rows} - at_paper)
    if missing_scale:
        never.append("a run at the paper's iteration count on "
                     + ", ".join(c.DATASET_NAMES.get(d, d) + (" (only runs ended earlier by the declared plateau "
                                                                "rule)" if d in converged else "")
                                 for d in missing_scale))
    ran = {(r["dataset"], r["ways"], r["test_shots"]) for r in rows}
    missing = sorted({(p.dataset, p.ways, p.shots) for p in x.paper.results if p.dataset != "sinusoid"} - ran,
                     key=lambda k: (k[0], c.setting_rank(f"{k[1]}w{k[2]}s")))
    if missing:
        never.append("the papers' settings " + ", ".join(_name((d, f"{w}w{s}s")) for d, w, s in missing))
    return "**Never run**: " + ("; ".join(never) or "nothing the papers report is missing") + "."


def section(x: Inputs) -> str:
    if not x.rows and not x.studies:
        return "\nNo records yet, so nothing has been measured.\n"
    groups = _budget_groups(x.rows)
    devices = sorted({r.get("device_name") or r.get("device") or "?" for r in x.rows + x.bases}
                     | {s.get("device_name") or s.get("device") or "?" for s in x.studies} | set(x.tta_devices))
    items = [_seeds(groups), _budget(groups), _stopped(x.rows + x.bases), _did_not_learn(x), _protocols(x),
             f"**Devices.** Every record was measured on: {', '.join(devices) or 'none'}.", _never(x)]
    return "\n" + "".join(f"- {i}\n" for i in items)


def selection_table(selections: list[dict], labels: dict) -> Table:
    """Every candidate of every selection on validation tasks, its validation score and the choice."""
    rows = [{"setting": s["setting"], "algorithm": labels.get(s["experiment"], s["algorithm"]), "run": s["run"],
             "metric": s["metric"], "chosen": cand.get("candidate") == s.get("winner_name"), **cand}
            for s in selections for cand in s["candidate_rows"]]

    def score(r):
        if r.get("val_metric") is None:
            return f"— ({r.get('status', '?')})"
        scale, digits = (1, 3) if r["metric"] == "mse" else (100, 2)
        return f"{scale * r['val_metric']:.{digits}f} ± {scale * (r.get('val_ci95') or 0):.{digits}f}"

    cols = [("setting", lambda r: r["setting"], "setting"), ("algorithm", lambda r: r["algorithm"], "algorithm"),
            ("candidate", lambda r: ", ".join(f"{k.rsplit('.', 1)[-1]} {fmt_g(v)}" for k, v in r["values"].items())
             if r.get("values") else r.get("candidate", "?"), "candidate"),
            ("iterations", lambda r: fmt_g(r.get("iterations_done")), "iterations_done"),
            ("validation (± 95% CI; MSE or accuracy %)", score, "val_metric", "val_ci95", "status"),
            ("chosen", lambda r: "**chosen**" if r["chosen"] else "", "chosen"),
            ("selection record", lambda r: f"`{r['run']}`", "run")]
    return make_table("selection", rows, cols,
                      ["Each candidate trained from the same seed for the same minutes and was scored on validation "
                       "tasks only; only the chosen one is tested, by its experiment."],
                      extra=("metric", "val_fingerprint"))
