"""The deviation ladder: iMAML as the paper writes it → the official release, on Omniglot 5w1s.

Rajeswaran et al. 2019 (Table 2) against aravindr93/imaml_dev: each of the release's departures
from the paper is a named list of ``train.py`` overrides (``configs/study/deviations.yaml``, in
an order where each rung is readable on top of the previous ones). Rows, by ``group``:

- ``ladder``: the base, then base + d1, base + d1 + d2, … up to the full release;
- ``removed``: the full release (rung ``release``), and it without each single deviation;
- ``leaky``: the full release's trained parameters tested on its held-out characters (``clean``)
  and on the release's evaluation characters (``leaky``: ``dataset.test_split=release_leaky``);
- ``maml``: MAML plain and with the deviations that also exist for it, added in ladder order;
- ``endpoints`` (only with ``long_budget_minutes``): the paper and the release, for longer.

Every training run gets the same ``max_train_minutes`` and is tested on the same fixed tasks.
A deviation made only of test-time keys (``eval.*``, ``test_inner_steps``,
``dataset.test_split``) never trains: runs differ by their training deviations only, and a row
whose test settings are not its run's own (the test_lam0 rung, the release without it, the
leaky test) tests that run's final parameters again (:func:`trainer.retest.retest`, saved as
``<run>/retest/<overrides>.json``). Training runs live in ``<study>/train/<base>+<deviation>+…``; one whose
``summary.json`` is final at this budget is reused, one stopped by a smaller budget (or
interrupted) is continued with ``resume=true``, so a study can be rerun to continue or extend it.
Each row's difference against its reference (``vs``: the previous rung, the full release, the
clean test) is paired on identical test tasks where the fingerprints match, else unpaired.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from atomic import atomic_write_json
from trainer.config import CONFIG_DIR
from trainer.records import read_json
from trainer.retest import RESUME_KEYS, is_test_time, retest

from .common import POS, train_config

GROUPS = ("ladder", "removed", "leaky", "maml")
RESERVED = ("paper", "release", "clean", "leaky", "maml")
# Keys the study sets for every run (equal budgets and test tasks): a deviation may not touch them.
CONTROLLED = ("experiment", "experiment_name", "max_train_minutes", "resume", "meta_iterations", "eval.num_tasks",
              "eval.test_seed", "eval.val_every", "ckpt_every", "diagnostics", "seed", "device", "data", "hydra")
FINAL = ("completed", "diverged", "oom")
COLUMNS = ["group", "rung", "deviations", "algorithm", "test_split", "accuracy", "ci95", "n", "iterations_done",
           "train_minutes", "median_iter_s", "status", "fingerprint", "run_dir", "vs", "diff_mean", "diff_low",
           "diff_high", "diff_kind", "diff_p", "split_seed", "split_sizes", "test_train_overlap", "evaluation",
           "budget_minutes", "stopped_by", "device"]


@dataclass(frozen=True)
class Point:
    """One row: ``on`` deviations on top of the iMAML (``maml=False``) or the MAML base."""
    group: str
    rung: str
    on: tuple[str, ...]
    maml: bool = False
    vs: str | None = None
    extra_test: tuple[str, ...] = ()


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _overrides(node, prefix: str = "") -> list[str]:
    """A config's leaves as ``key=value`` overrides (``dataset.split.train=1200``, …)."""
    if isinstance(node, dict):
        return [o for k, v in node.items() for o in _overrides(v, f"{prefix}{k}.")]
    value = "null" if node is None else str(node).lower() if isinstance(node, bool) else node
    return [f"{prefix[:-1]}={value}"]


def deviations(s) -> dict[str, list[str]]:
    """Each deviation's ``train.py`` overrides: a list as written, or a name such as
    ``imaml_release/damped_cg``: the settings of ``configs/imaml_release/damped_cg.yaml``, the
    files ``experiment=omniglot_5w_imaml_release`` composes, so every switch has one home."""
    out = {}
    for k, v in s.deviations.items():
        if isinstance(v, str):
            path = CONFIG_DIR / f"{v}.yaml"
            if not path.is_file():
                raise ValueError(f"study.deviations.{k}={v!r}: no config {path.relative_to(CONFIG_DIR.parent)}; "
                                 "name a file of configs/ (such as imaml_release/damped_cg) or give a list of overrides")
            v = _overrides(OmegaConf.to_container(OmegaConf.load(path)))
        elif not OmegaConf.is_list(v):
            raise ValueError(f"study.deviations.{k}={v!r} is invalid: give a non-empty list of key=value overrides")
        out[str(k)] = [str(o) for o in v]
    return out


def test_time(overrides: list[str]) -> bool:
    return all(is_test_time(_key(o)) for o in overrides)


def points(s) -> list[Point]:
    names = list(deviations(s))
    groups = list(s.groups)
    leaky = tuple(str(o) for o in s.leaky)
    out = []
    if s.get("long_budget_minutes") is not None:
        out += [Point("endpoints", "paper", ()), Point("endpoints", "release", tuple(names), vs="paper")]
    else:
        if "ladder" in groups:
            out += [Point("ladder", "paper", ())]
            out += [Point("ladder", d, tuple(names[:i + 1]), vs=(["paper", *names])[i]) for i, d in enumerate(names)]
        if "removed" in groups:
            out += [Point("removed", "release", tuple(names))]
            out += [Point("removed", d, tuple(n for n in names if n != d), vs="release") for d in names]
        if "maml" in groups:
            mine = [d for d in names if d in set(s.maml_deviations)]
            out += [Point("maml", "maml", (), maml=True)]
            out += [Point("maml", d, tuple(mine[:i + 1]), maml=True, vs=(["maml", *mine])[i]) for i, d in enumerate(mine)]
    if "leaky" in groups:
        out += [Point("leaky", "clean", tuple(names)), Point("leaky", "leaky", tuple(names), vs="clean", extra_test=leaky)]
    return out


def budget(s) -> float:
    return float(s.long_budget_minutes if s.get("long_budget_minutes") is not None else s.budget_minutes)


def common(cfg, minutes: float) -> list[str]:
    """Overrides every run gets after its rung's: equal budget and test tasks, seed, device, data."""
    s = cfg.study
    data = [f"data.{k}={v}" for k in ("root", "cache_dir") if (v := cfg.get("data", {}).get(k)) is not None]
    iters = [] if s.meta_iterations is None else [f"meta_iterations={s.meta_iterations}"]
    return [f"max_train_minutes={minutes:g}", f"eval.num_tasks={s.eval_tasks}", "eval.val_every=0",
            f"ckpt_every={s.ckpt_every}", f"diagnostics={str(bool(s.diagnostics)).lower()}", f"seed={cfg.seed}",
            f"device={cfg.device}", *iters, *data]


@dataclass(frozen=True)
class Plan:
    """How a row is measured: its training run and, unless that run's own test is the row's, a retest."""
    name: str                   # the training run's folder under train/
    train: list[str]            # its train.py overrides
    tests: list[str]            # the row's test-time overrides
    retest: list[str] | None    # the retest's overrides (None: the training run's own final test)


def resolve(cfg, p: Point, minutes: float) -> Plan:
    """A training run per set of training deviations, tested as the ladder tests it: with each
    test-time deviation that comes before one of its training deviations (the full release is
    trained and tested with λ = 0, as the rungs after test_lam0). A row tested otherwise (the rung
    test_lam0 itself, the release without test_lam0, the leaky test) is a retest of that run."""
    s, devs = cfg.study, deviations(cfg.study)
    order = [d for d in devs if not p.maml or d in set(s.maml_deviations)]
    train_on = [d for d in p.on if not test_time(devs[d])]
    natural = [t for t in order if test_time(devs[t]) and any(order.index(d) > order.index(t) for d in train_on)]
    name = "+".join(["maml" if p.maml else "paper", *train_on])
    base = [str(o) for o in (s.maml_base if p.maml else s.base)]
    tail = [f"experiment_name=deviations.{name}", *common(cfg, minutes), *(str(o) for o in cfg.get("train_overrides", []))]

    def overrides(tests: list[str]) -> list[str]:
        return [*base, *(o for d in train_on for o in devs[d]), *tests, *tail]

    mine = [d for d in p.on if test_time(devs[d])]
    tests = [o for d in mine for o in devs[d]] + list(p.extra_test)
    same = mine == natural and not p.extra_test
    return Plan(name, overrides([o for d in natural for o in devs[d]]), tests, None if same else overrides(tests))


def _compose(overrides: list[str], where: str):
    try:
        return train_config(overrides)
    except Exception as e:  # Hydra's and the trainer's errors alike: one line, naming the rung
        lines = str(e).strip().splitlines() or [type(e).__name__]
        why = "no such key in the config" if any(ln.startswith("To append") for ln in lines) else ""
        raise ValueError(f"{where}: {lines[0]}{f' ({why})' if why else ''}") from None


RULES = {"groups": GROUPS, "budget_minutes": POS, "long_budget_minutes?": POS, "eval_tasks": 1, "ckpt_every": 0,
         "meta_iterations?": 1}  # studies.common.need


def validate(cfg) -> None:
    s = cfg.study
    if not s.get("deviations") or not OmegaConf.is_dict(s.deviations):
        raise ValueError("study.deviations must map names to lists of train.py overrides (or to configs/ files)")
    devs = deviations(s)
    for name, ovs in devs.items():
        if not re.fullmatch(r"[A-Za-z0-9_]+", str(name)) or name in RESERVED:
            raise ValueError(f"study.deviations.{name}: a name of letters, digits and _, not one of {list(RESERVED)}")
        if not ovs or not all("=" in o for o in ovs):
            raise ValueError(f"study.deviations.{name}={ovs!r} is invalid: give a non-empty list of key=value overrides")
        for o in ovs:
            if any(_key(o) == c or _key(o).startswith(c + ".") for c in CONTROLLED):
                raise ValueError(f"study.deviations.{name}: {o!r} sets a key the study controls "
                                 f"({', '.join(CONTROLLED)})")
    bad = [d for d in s.maml_deviations if d not in devs]
    if bad and "maml" in s.groups:
        raise ValueError(f"study.maml_deviations={list(s.maml_deviations)!r}: {bad} not in study.deviations")
    if not s.leaky or not test_time([str(o) for o in s.leaky]):
        raise ValueError(f"study.leaky={s.leaky!r} is invalid: give test-time overrides (dataset.test_split=…)")
    minutes = budget(s)
    tail = common(cfg, minutes) + [str(o) for o in cfg.get("train_overrides", [])]
    _compose([*map(str, s.base), *tail], f"study.base={list(s.base)}")
    before: list[str] = []
    for name, ovs in deviations(s).items():  # each deviation on the base and the ones before it: names the bad one
        before += ovs
        _compose([*map(str, s.base), *before, *tail], f"study.deviations.{name}={ovs}")
    if "maml" in s.groups:
        _compose([*map(str, s.maml_base), *tail], f"study.maml_base={list(s.maml_base)}")
    seen = set()
    for p in points(s):
        plan = resolve(cfg, p, minutes)
        for ovs in (plan.train, plan.retest or []):
            if ovs and tuple(ovs) not in seen:
                seen.add(tuple(ovs))
                _compose(ovs, f"study rung {p.group}/{p.rung}")


def check_folder(cfg, out_dir: Path) -> None:
    """Before any work: the training runs already in ``out_dir`` must be this study's, at most this budget."""
    minutes = budget(cfg.study)
    for name, train in {r.name: r.train for r in (resolve(cfg, p, minutes) for p in points(cfg.study))}.items():
        run_dir = Path(out_dir) / "train" / name
        s = read_json(run_dir / "summary.json")
        if s is None or not isinstance(s.get("config"), dict):
            continue
        keys = _differing(_run_part(s["config"]), _run_part(OmegaConf.to_container(train_config(train), resolve=True)))
        if keys:
            raise ValueError(f"{run_dir} holds a run of another configuration ({', '.join(keys[:4])} differ: changed "
                             "study settings?); use another study folder (hydra.run.dir=…)")
        had, trained = s.get("max_train_minutes"), (s.get("timing") or {}).get("train_wall_s")
        if had is not None and had > minutes and trained is not None and trained >= 60 * minutes:
            raise ValueError(f"{run_dir} was trained for {had:g} min, more than this study's {minutes:g} min; "
                             "use another study folder (hydra.run.dir=…) or the same budget")


def _run_part(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in RESUME_KEYS}


def _differing(a, b, prefix: str = "") -> list[str]:
    """The dotted keys where two resolved configs differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [k for key in sorted(set(a) | set(b)) for k in _differing(a.get(key), b.get(key), f"{prefix}{key}.")]
    return [] if a == b else [prefix.rstrip(".")]


def ensure_trained(overrides: list[str], run_dir: Path, minutes: float) -> dict:
    """The run's summary: reused when final at this budget, else trained or continued (resume)."""
    import trainer

    s = read_json(run_dir / "summary.json")
    if s is not None and s.get("status") in FINAL:
        extend = s["status"] == "completed" and s.get("stopped_by") == "max_train_minutes" \
            and (s.get("max_train_minutes") or math.inf) < minutes
        if not extend:
            print(f"deviations: reusing {run_dir} ({s['status']}, {s.get('iterations_done')} iterations)", flush=True)
            return s
    verb = "training" if s is None else f"continuing ({s.get('status')}, {s.get('iterations_done')} iterations)"
    print(f"deviations: {verb} {run_dir} for {minutes:g} min", flush=True)
    summary = trainer.train(train_config([*overrides, "resume=true"]), run_dir)
    if summary["status"] == "interrupted":
        raise KeyboardInterrupt(f"training run {run_dir} was interrupted")
    return summary


def evaluation(plan: Plan, run_dir: Path, summary: dict) -> tuple[str, dict | None]:
    """(where the row's result is recorded, {"test", "data"}): the run's own test, or a retest."""
    if summary.get("status") != "completed":
        return "—", None
    if plan.retest is None:
        return "summary.json", {"test": summary["test"], "data": summary.get("data") or {}}
    rel = "retest/" + (",".join(plan.tests) or "no_test_time_deviation").replace("/", "_") + ".json"
    cfg = train_config(plan.retest)
    config = OmegaConf.to_container(cfg, resolve=True)
    old = read_json(run_dir / rel)
    if old is not None and old.get("iteration") == summary["iterations_done"] and old.get("config") == config:
        return rel, old
    print(f"deviations: testing {run_dir} again with {' '.join(plan.tests) or 'the paper test settings'}",
          flush=True)
    rec = retest(cfg, run_dir)
    atomic_write_json(run_dir / rel, rec)
    return rel, rec


def row(p: Point, minutes: float, name: str, summary: dict, where: str, result: dict | None) -> dict:
    test = (result or {}).get("test") or {}
    data = (result or {}).get("data") or {}
    timing = summary.get("timing") or {}
    sizes = data.get("split_sizes") or {}
    return {"group": p.group, "rung": p.rung, "deviations": "+".join(p.on) or "none",
            "algorithm": summary.get("label"), "test_split": data.get("test_split"),
            "accuracy": test.get("mean"), "ci95": test.get("ci95"), "n": test.get("n"),
            "iterations_done": summary.get("iterations_done"),
            "train_minutes": None if timing.get("train_wall_s") is None else round(timing["train_wall_s"] / 60, 3),
            "median_iter_s": timing.get("median_iter_s"), "status": summary.get("status"),
            "fingerprint": test.get("fingerprint"), "run_dir": f"train/{name}", "vs": p.vs,
            "split_seed": data.get("split_seed"),
            "split_sizes": "/".join(str(sizes[k]) for k in ("train", "val", "test") if k in sizes) or None,
            "test_train_overlap": data.get("test_train_overlap"), "evaluation": where,
            "budget_minutes": minutes, "stopped_by": summary.get("stopped_by"), "device": summary.get("device_name"),
            "_per_task": test.get("per_task")}


def difference(a: dict, b: dict) -> dict:
    """a − b: paired on identical test tasks (bootstrap CI, Wilcoxon p), else unpaired (normal CI)."""
    from pairing import PairingError, paired_comparison

    if a["_per_task"] is None or b["_per_task"] is None:
        return {}
    try:
        pc = paired_comparison(a["_per_task"], b["_per_task"], a["fingerprint"], b["fingerprint"], True)
        return {"diff_mean": pc.mean_diff, "diff_low": pc.ci_low, "diff_high": pc.ci_high, "diff_kind": "paired",
                "diff_p": pc.p_value}
    except PairingError:
        d, half = a["accuracy"] - b["accuracy"], math.hypot(a["ci95"], b["ci95"])
        return {"diff_mean": d, "diff_low": d - half, "diff_high": d + half, "diff_kind": "unpaired"}


def run(cfg, out_dir: Path) -> dict:
    s = cfg.study
    minutes = budget(s)
    summaries, results, rows = {}, {}, []
    for p in points(s):
        plan = resolve(cfg, p, minutes)
        run_dir = Path(out_dir) / "train" / plan.name
        if plan.name not in summaries:
            summaries[plan.name] = ensure_trained(plan.train, run_dir, minutes)
        key = (plan.name, tuple(plan.retest or ()))
        if key not in results:
            results[key] = evaluation(plan, run_dir, summaries[plan.name])
        r = row(p, minutes, plan.name, summaries[plan.name], *results[key])
        rows.append(r)
        acc = "—" if r["accuracy"] is None else f"{100 * r['accuracy']:.2f} ± {100 * r['ci95']:.2f}%"
        print(f"deviations: {p.group:9s} {p.rung:12s} {r['status']:10s} accuracy {acc} ({r['iterations_done']} "
              f"iterations; test split {r['test_split']}, split seed {r['split_seed']})", flush=True)
    for r in rows:
        ref = next((x for x in rows if x["group"] == r["group"] and x["rung"] == r["vs"]), None) if r["vs"] else None
        if ref is not None:
            r.update(difference(r, ref))
    return {"deviations.csv": (COLUMNS, [{c: r.get(c) for c in COLUMNS} for r in rows])}
