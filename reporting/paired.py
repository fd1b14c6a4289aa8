"""Paired comparisons between algorithms on identical test tasks, and the claims table.

One sign everywhere: :func:`improvement` is a's improvement over b in the metric's good direction (positive = a
better). Within a setting each algorithm is represented by one configuration (:func:`representatives`); its runs
are paired with another algorithm's runs of the same seed, task by task, only when the test-task fingerprints
match. The pairs of one setting are one family: their Wilcoxon p-values are Holm-adjusted together.
"""
from __future__ import annotations

from itertools import groupby
from operator import itemgetter

from pairing import PairingError, paired_comparison

from . import common as c
from .paper import Claim
from .render import TEXT, Table, fmt, fmt_p, make_table
from .stats import claim_verdict, direction, holm, mean_std

ALPHA = 0.05
DNL = "did not learn"
# a setting: runs are paired only within one budget, and a run ended by the plateau rule only with runs under it
KEYS = ("dataset", "setting", "profile", "max_train_minutes", "early_stop")


def improvement(a: dict, b: dict) -> dict:
    """Run a's improvement over run b on their identical test tasks: mean and 95% bootstrap CI
    (positive = a better), Wilcoxon p and task counts. Raises :class:`PairingError`."""
    if a.get("metric") != b.get("metric"):
        raise PairingError(f"different metrics ({a.get('metric')} vs {b.get('metric')})")
    if a.get("per_task") is None or b.get("per_task") is None:
        raise PairingError("a run has no per-task test metrics")
    higher = a["metric"] == "accuracy"
    p = paired_comparison(a["per_task"], b["per_task"], a.get("fingerprint"), b.get("fingerprint"), higher)
    imp, low, high = (p.mean_diff, p.ci_low, p.ci_high) if higher else (-p.mean_diff, -p.ci_high, -p.ci_low)
    return dict(imp=imp, low=low, high=high, p_value=p.p_value, n=p.n, a_better=p.a_better, b_better=p.b_better,
                ties=p.ties)


def oriented(pairs: list[dict], a: str, b: str) -> list[dict]:
    """The comparisons of a against b (one per seed), each read with a's sign."""
    return [p if p["a"] == a else _flipped(p) for p in pairs if (p["a"], p["b"]) in ((a, b), (b, a))]


def _flipped(d: dict) -> dict:
    """The same comparison read from b's side."""
    out = dict(d, imp=-d["imp"], low=-d["high"], high=-d["low"])
    for k in ("", "_run", "_better", "_iters"):
        out["a" + k], out["b" + k] = d["b" + k], d["a" + k]
    return out


def delta_text(d: dict) -> str:
    s, digits = c.scale_of(d["metric"])
    return f"{fmt(d['imp'], digits, s)} [{fmt(d['low'], digits, s)}, {fmt(d['high'], digits, s)}]"


def _setting(r: dict) -> tuple:
    return tuple(r.get(k) for k in KEYS)


def _order(s: tuple) -> tuple:
    return (s[0], c.setting_rank(s[1]), s[2], s[3] is None, s[3] or 0, s[4] or "")


def _seed_order(s) -> tuple:
    return (s is None, s or 0)


def _by_setting(pairs: list[dict]) -> list[tuple[tuple, list[dict]]]:
    """The pairs of each setting, settings in report order: one Holm family, one matrix, one claim row."""
    return [(s, list(g)) for s, g in groupby(sorted(pairs, key=lambda p: _order(_setting(p))), key=_setting)]


def _words(setting: tuple) -> str:
    """A setting's budget in words: minutes per run (and the profile unless it is the paper's), or the
    profile when there is no time cap; and the early-stop rule, if any."""
    _, _, profile, minutes, early_stop = setting
    rule = f", {early_stop} rule" if early_stop else ""
    if minutes is None:
        return f"{profile} profile, no time cap{rule}"
    return f"{c.fmt_g(minutes)} min per run" + ("" if profile == "paper" else f", {profile} profile") + rule


def representatives(rows: list[dict]) -> tuple[dict[tuple, dict[str, dict]], list[str]]:
    """(setting → algorithm → seed → run, notes). An algorithm's configuration in a setting is the one run as a
    named experiment, then the one with most runs, then the longest trained, then the latest folder; a seed run
    twice with it keeps its latest folder."""
    notes, configs = [], {}
    for r in sorted(rows, key=itemgetter("run")):
        if r["status"] == "completed" and r.get("per_task") is None:
            notes.append(f"{r['run']}: no per-task test metrics in the record, not paired")
        elif r["status"] == "completed":
            configs.setdefault((_setting(r), r["label"]), {}).setdefault(c.config_key(r), []).append(r)
    chosen: dict[tuple, dict[str, dict]] = {}
    for (setting, label), by_config in configs.items():
        where = f"{label} {setting[0]} {setting[1]} ({_words(setting)})"
        best = max(by_config.values(), key=lambda runs: (runs[0].get("experiment") is not None, len(runs),
                                                         max(r["iterations_done"] for r in runs), runs[-1]["run"]))
        by_seed = chosen.setdefault(setting, {})[label] = {r.get("seed"): r for r in best}
        if repeats := [r["run"] for r in best if r is not by_seed[r.get("seed")]]:
            notes.append(f"{where}: a seed run more than once; the latest folder is paired, not: {', '.join(repeats)}")
        if others := sorted(r["run"] for runs in by_config.values() if runs is not best for r in runs):
            notes.append(f"{where}: paired runs of one configuration; other configurations not paired: "
                         f"{', '.join(others)}")
    return chosen, sorted(notes)


def compare_all(rows: list[dict]) -> tuple[list[dict], list[dict], list[str]]:
    """(paired rows, refused rows, notes) for every pair of algorithms in every setting; a is the
    later algorithm in the canonical order, b the earlier."""
    chosen, notes = representatives(rows)
    pairs, refused = [], []
    for setting in sorted(chosen, key=_order):
        labels = sorted(chosen[setting], key=c.label_rank)
        for a_label, b_label in ((a, b) for j, a in enumerate(labels) for b in labels[:j]):
            a_seeds, b_seeds = chosen[setting][a_label], chosen[setting][b_label]
            for seed in sorted(set(a_seeds) & set(b_seeds), key=_seed_order):
                a, b = a_seeds[seed], b_seeds[seed]
                base = dict(zip(KEYS, setting), a=a_label, b=b_label, seed=seed, a_run=a["run"], b_run=b["run"])
                try:
                    d = improvement(a, b)
                except PairingError as e:
                    refused.append(dict(base, reason=str(e)))
                    continue
                kind = c.budget_kind(a)  # the budget both runs reached: paper, converged, or None
                pairs.append(dict(base, **d, metric=a["metric"], a_iters=c.budget_text(a), b_iters=c.budget_text(b),
                                  budget_kind=kind if kind == c.budget_kind(b) else None))
            if unpaired := sorted(set(a_seeds) ^ set(b_seeds), key=_seed_order):
                notes.append(f"{a_label} vs {b_label}, {setting[0]} {setting[1]} ({_words(setting)}): seed(s) "
                             f"{', '.join(str(s) for s in unpaired)} run by only one of the two")
    for _, family in _by_setting(pairs):
        for p, adj in zip(family, holm([p["p_value"] for p in family])):
            p["p_holm"] = adj
    return pairs, refused, sorted(notes)


def matrix_tables(pairs: list[dict], learned: dict[str, str]) -> list[tuple[str, Table]]:
    """One matrix per setting and budget: cell (row a, column b) = a's improvement over b, as its note
    (``matrix_note``) says; a seed's comparison with a run that did not learn is left out."""
    out = []
    for setting, sel in _by_setting(pairs):
        dataset, test, profile, minutes, rule = setting
        labels = sorted({p["a"] for p in sel} | {p["b"] for p in sel}, key=c.label_rank)
        metric, seeds = sel[0]["metric"], sorted({p["seed"] for p in sel}, key=_seed_order)
        rows = []
        for a in labels:
            runs = sorted({p[k + "_run"] for p in sel for k in "ab" if p[k] == a})
            bad = sum(learned.get(r) == DNL for r in runs)
            tag = "" if not bad else f" ({DNL})" if bad == len(runs) else f" ({DNL} in {bad} of {len(runs)} seeds)"
            row = {"algorithm": a, "run": "; ".join(runs), "_tag": tag}
            for b in labels:
                every = oriented(sel, a, b)
                # a seed whose run did not learn is never called better or worse than another
                found = [f for f in every if DNL not in (learned.get(f["a_run"]), learned.get(f["b_run"]))]
                row[b], row[f"{b}_imp"] = (_cell(found, metric, len(seeds)) if found
                                           else (f"— ({DNL})" if every else "—", None))
            rows.append(row)
        cols = [("a \\ b", lambda r: r["algorithm"] + r["_tag"], "algorithm"),
                *((b, itemgetter(b), f"{b}_imp") for b in labels)]
        cap = [] if minutes is None else [f"{c.fmt_g(minutes)}min"]
        name = c.slug("paired", dataset, test, *([] if cap and profile == "paper" else [profile]), *cap,
                      *([rule] if rule else []))
        note = TEXT["matrix_note"].format(
            unit="accuracy points" if metric == "accuracy" else "MSE reduction", n=len(sel), alpha=ALPHA,
            cell=TEXT["matrix_cell_seeds"] if len(seeds) > 1 else "[95% bootstrap CI over test tasks]; * = significant",
            seeds=", ".join(map(str, seeds)))
        out.append((f"{c.title(dataset, test)} ({_words(setting)})",
                    make_table(name, rows, cols, [note], extra=("run",))))
    return out


def _cell(found: list[dict], metric: str, n_seeds: int) -> tuple[str, float]:
    """(cell, mean improvement). One seed: Δ [95% CI]; several: mean ± std over seeds. * where every seed's
    Holm-adjusted Wilcoxon p < α with the CI excluding 0 in one direction, (k/n*) where k of n are; the seed
    count where fewer seeds than the table's were paired."""
    s, digits = c.scale_of(metric)
    m, sd, n = mean_std([f["imp"] for f in found])
    sig = [f for f in found if f["p_holm"] < ALPHA and direction(f["low"], f["high"]) != "tie"]
    one_way = len({direction(f["low"], f["high"]) for f in sig}) == 1
    value = delta_text(found[0]) if n == 1 else f"{fmt(m, digits, s)} ± {fmt(sd, digits, s)}"
    mark = "*" if len(sig) == n and one_way else f" ({len(sig)}/{n}*)" if sig else ""
    return value + mark + (f" ({n} seed{'s' if n > 1 else ''})" if n < n_seeds else ""), m


def _setting_column(*keys: str) -> tuple:
    return ("setting", lambda r: f"{r['dataset']} {r['setting']} ({_words(_setting(r))})", *keys)


def long_table(pairs: list[dict]) -> Table:
    """Every comparison in one long table (files only): the matrices' cells with their statistics."""
    cols = [_setting_column("dataset", "setting", "profile", "max_train_minutes"),
            ("a vs b", lambda r: f"{r['a']} vs {r['b']}", "a", "b"), ("seed", "seed"),
            ("improvement of a over b [95% CI]", delta_text, "imp", "low", "high"),
            ("Holm p", lambda r: fmt_p(r["p_holm"]), "p_holm"),
            ("tasks a / b better / tie", lambda r: f"{r['a_better']} / {r['b_better']} / {r['ties']}",
             "a_better", "b_better", "ties")]
    return make_table("paired", pairs, cols,
                      extra=("metric", "n", "p_value", "a_iters", "b_iters", "a_run", "b_run", "early_stop"))


def refused_table(refused: list[dict]) -> Table:
    cols = [_setting_column("dataset", "setting", "profile"),
            ("comparison", lambda r: f"{r['a']} vs {r['b']}", "a", "b"), ("seed", "seed"), ("reason", "reason"),
            ("runs (a; b)", lambda r: f"{r['a_run']}; {r['b_run']}", "a_run", "b_run")]
    return make_table("paired_refused", refused, cols)


def claims_table(claims: tuple[Claim, ...], pairs: list[dict], refused: list[dict], rows: list[dict],
                 learned: dict[str, str]) -> Table:
    """One row per paper claim and setting: the claimed-better algorithm's improvement over the claimed-worse one
    as measured, and a verdict only at the paper's budget and only when both rows learned (what a run at
    that budget would cost: the first page's reproduction table)."""
    out = []
    for cl in claims:
        base = {"claim": cl.text, "paper": f"{cl.evidence} ({cl.source})", "relation": cl.relation}
        where, names = (cl.dataset, cl.setting), {cl.better, cl.worse}
        found = oriented([p for p in pairs if (p["dataset"], p["setting"]) == where], cl.better, cl.worse)
        if not found:
            why = [f["reason"] for f in refused if (f["dataset"], f["setting"]) == where and {f["a"], f["b"]} == names]
            have = {r["label"] for r in rows if (r["dataset"], r["setting"]) == where and r["status"] == "completed"}
            verdict = f"not paired: {why[0]}" if why else "no paired runs" if names <= have else "no runs"
            out.append(dict(base, verdict=verdict, seeds=0, metric=None, imp=None, text=None, budget=None, runs=None))
        out += [_claim_row(base, sel, learned) for _, sel in _by_setting(found)]
    cols = [("claim", "claim"), ("paper", "paper"), ("verdict", "verdict"),
            ("improvement of the claimed-better [95% CI]", lambda r: r["text"] or "—", "text"), ("seeds", "seeds"),
            ("budget", lambda r: r["budget"] or "—", "budget")]
    notes = [TEXT["claims_note_verdicts"], TEXT["claims_note_budget"], TEXT["claims_note_no_runs"]]
    return make_table("claims", out, cols, notes, extra=("relation", "metric", "imp", "runs"))


def _claim_row(base: dict, sel: list[dict], learned: dict[str, str]) -> dict:
    dnl = sorted({p[k] for p in sel for k in "ab" if learned.get(p[k + "_run"]) == DNL}, key=c.label_rank)
    kinds = {p["budget_kind"] for p in sel}
    at_paper = len(kinds) == 1 and None not in kinds
    verdict = (f"no verdict: {', '.join(dnl)} did not learn" if dnl
               else claim_verdict([direction(p["low"], p["high"]) for p in sel], base["relation"]) if at_paper
               else "not tested at paper budget")
    metric, minutes = sel[0]["metric"], sel[0]["max_train_minutes"]
    budget = f"{c.fmt_g(minutes)} min per run" if minutes is not None else sel[0]["profile"] + " profile"
    budget += "; iterations " + "; ".join(f"{p['a']} {p['a_iters']}, {p['b']} {p['b_iters']}" for p in sel)
    if at_paper:
        budget += {"paper": " (both runs of every pair at the paper's budget)",
                   "converged": " (both runs of every pair converged by the declared rule)"}[kinds.pop()]
    return dict(base, verdict=verdict, seeds=len(sel), metric=metric,
                imp=mean_std([p["imp"] for p in sel])[0], text="; ".join(map(delta_text, sel)),
                budget=budget, runs="; ".join(f"{p['a_run']} vs {p['b_run']}" for p in sel))
