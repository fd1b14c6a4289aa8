"""Did a row learn? Each completed run against the baselines of its setting.

Classification: chance (1 / ways) and the baseline records of its dataset and test setting. Regression: a baseline
network trained without inner steps (same seed, training budget and test-time adaptation) and the zero predictor
(the MSE of predicting 0, stored beside every regression test result, else borrowed from a record with the same
test-task fingerprint). A baseline record is one whose ``role`` is ``baseline`` (:func:`trainer.record.role`): a
``baseline``-family network or an untrained θ₀. A row learned when it beats every baseline: the paired improvement's
95% CI above 0 on identical test tasks, else non-overlapping 95% CIs. A row that did not learn is never called better
or worse.
"""
from __future__ import annotations

from pairing import PairingError

from .paired import improvement
from .render import fmt, fmt_g

LEARNED, DID_NOT_LEARN, NO_BASELINE = "learned", "did not learn", "no baseline record"


def is_baseline(r: dict) -> bool:
    return r.get("role") == "baseline"


def split(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """(algorithm rows, baseline records)."""
    return [r for r in rows if not is_baseline(r)], [r for r in rows if is_baseline(r)]


def zero_predictor(r: dict, rows: list[dict]) -> dict | None:
    """The zero predictor on r's test tasks, as a pseudo-record (its own, else one with r's fingerprint)."""
    src = r if r.get("zero_mean") is not None else next(
        (o for o in rows if o.get("zero_mean") is not None and o.get("fingerprint")
         and o.get("fingerprint") == r.get("fingerprint")), None)
    if src is None:
        return None
    return {"kind": "zero", "label": "zero predictor", "metric": "mse", "mean": src["zero_mean"],
            "ci95": src.get("zero_ci95") or 0.0, "per_task": src.get("zero_per_task"),
            "fingerprint": src.get("fingerprint")}


def _beats(r: dict, b: dict) -> bool:
    try:  # paired on identical test tasks when possible
        return improvement(r, b)["low"] > 0
    except PairingError:  # else the two 95% intervals must not overlap (chance has none: r's lies above it)
        better = r["mean"] - b["mean"] if r["metric"] == "accuracy" else b["mean"] - r["mean"]
        return better > r["ci95"] + b["ci95"]


def _text(b: dict) -> str:
    value = fmt(b["mean"], 2, 100.0) if b["metric"] == "accuracy" else fmt(b["mean"], 3)
    if b["kind"] != "record":
        return f"{b['label']} {value}"
    if b.get("iterations_done"):  # a trained baseline, by its algorithm config's name
        return f"{b['variant']} {value}" + (f" (seed {b['seed']})" if b.get("seed") is not None else "")
    return f"{b['label']} untrained {value}"


def candidates(r: dict, baselines: list[dict], rows: list[dict]) -> list[dict]:
    """Every baseline r is judged against, best first: a regression row's baseline records of its seed and budget
    and the zero predictor; a classification row's (those of its own experiment where there are any) and chance."""
    cands = [dict(b, kind="record") for b in baselines if b["status"] == "completed"
             and (b["dataset"], b["setting"], b["metric"]) == (r["dataset"], r["setting"], r["metric"])]
    if r["metric"] == "mse":
        cands = [b for b in cands if all(b.get(k) == r.get(k) for k in ("seed", "profile", "max_train_minutes"))]
        cands += [zero for zero in [zero_predictor(r, rows)] if zero]
    else:
        cands = [b for b in cands if b.get("experiment") and b.get("experiment") == r.get("experiment")] or cands
    if r["metric"] == "accuracy" and r.get("ways"):
        cands.append({"kind": "chance", "label": "chance", "metric": "accuracy", "mean": 1.0 / r["ways"], "ci95": 0.0})
    return sorted(cands, key=lambda b: -b["mean"] if r["metric"] == "accuracy" else b["mean"])


def judge(r: dict, baselines: list[dict], rows: list[dict] = ()) -> dict:
    """{'status', 'baseline': every baseline as text, 'missed': those r did not beat} for one completed row."""
    cands = candidates(r, baselines, [*rows, *baselines])
    if not cands:
        return {"status": NO_BASELINE, "baseline": NO_BASELINE}
    missed = [b for b in cands if not _beats(r, b)]
    return {"status": DID_NOT_LEARN if missed else LEARNED, "baseline": ", ".join(map(_text, cands)),
            "missed": ", ".join(map(_text, missed))}


def judge_all(rows: list[dict], baselines: list[dict]) -> dict[str, dict]:
    """run folder → judgement, for every completed algorithm row."""
    return {r["run"]: judge(r, baselines, rows) for r in rows if r["status"] == "completed"}


def statuses(judged: dict[str, dict]) -> dict[str, str]:
    return {run: j["status"] for run, j in judged.items()}


def text(runs: list[dict], judged: dict[str, dict]) -> str:
    """Whether a configuration beat its baselines: one run's judgement (against which), or how many seeds did."""
    done = [r for r in runs if r["run"] in judged]
    states = [judged[r["run"]]["status"] for r in done]
    if not done:
        return "— (a baseline)" if is_baseline(runs[0]) else "—"
    if len(done) == 1:
        return states[0] if states[0] == NO_BASELINE else f"{states[0]} (vs {judged[done[0]['run']]['baseline']})"
    if len(set(states)) == 1:
        return f"{states[0]} (all {len(done)} seeds)"
    bad = [fmt_g(r.get("seed")) for r, state in zip(done, states) if state == DID_NOT_LEARN]
    return f"learned in {len(done) - len(bad)} of {len(done)} seeds; did not learn: seed {', '.join(bad)}"
