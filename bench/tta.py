"""Time to accuracy: test accuracy against training wall-clock, Omniglot 5-way 1-shot.

    python -m bench.tta algorithm=maml [minutes=[5,10,15,20,30,40,50,60]] [threads=N] [name=NAME]
                        [run_dir=DIR] [continue=true] [train.py overrides ...]
    python -m bench.tta render=true      # the time-to-accuracy section of BENCHMARKS.md and its figure
    python -m bench.tta plan=true        # every run of configs/bench_tta.yaml at once, then render (make bench-tta)

Every argument is a Hydra-style ``key=value`` override: the keys above are this tool's, any
other one goes to ``train.py``. One training run per algorithm (``train.py
experiment=omniglot_5w_<algorithm>``, the paper's protocol, with ``batching=auto``) is grown in
segments: ``max_train_minutes`` = 5, then 10, … 60, each segment resuming the previous one's
checkpoint (bit-identical to one uninterrupted run) and ending with the trainer's own test
evaluation on the fixed 600 test tasks (95% CI). Minutes are training wall-clock as the trainer
counts it (meta-gradients, outer steps and task sampling; not evaluation or checkpoints). Each
finished segment's numbers and its ``summary.json`` go to the record ``<name>.json`` in
:data:`RECORDS` (name: the algorithm unless given); ``render=true`` turns every record there
into the table and the figure :data:`FIGURE`. ``continue=true`` grows the recorded run
``<name>`` to the marks beyond its last one.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml
from omegaconf import OmegaConf

import catalog
from atomic import atomic_write_json, atomic_write_text
from bench import portable

ROOT = Path(__file__).resolve().parent.parent
RECORDS = ROOT / "reports" / "bench_tta"
FIGURE = ROOT / "reports" / "bench_tta" / "tta_omniglot_5w1s.png"
BENCHMARKS = ROOT / "reports" / "BENCHMARKS.md"
BEGIN, END = "<!-- tta:begin -->", "<!-- tta:end -->"
PLAN = ROOT / "configs" / "bench_tta.yaml"


def algorithms() -> list[str]:
    """The algorithms with an Omniglot 5w1s experiment (``experiment=omniglot_5w_<algorithm>``)."""
    return sorted(p.stem.removeprefix("omniglot_5w_") for p in (ROOT / "configs" / "experiment").glob("omniglot_5w_*.yaml"))


TARGET, MINIMUM = 0.97, 0.95


OPTIONS = {"algorithm": None, "minutes": [5, 10, 15, 20, 30, 40, 50, 60], "threads": None, "name": None,
           "run_dir": None, "render": False, "continue": False, "plan": False}  # this tool's keys; the rest go to train.py


def _fail(message: str):
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def parse(argv: list[str]) -> tuple[dict, list[str]]:
    """This tool's options (``key=value`` for the keys of :data:`OPTIONS`) and the train.py overrides."""
    bad = [a for a in argv if "=" not in a or a.startswith("-")]
    if bad:
        _fail(f"{bad}: give key=value overrides (python -m bench.tta algorithm=maml threads=1 ...)")
    own = [a for a in argv if a.split("=", 1)[0] in OPTIONS]
    opts = {**OPTIONS, **OmegaConf.to_container(OmegaConf.from_dotlist(own))}
    minutes = opts["minutes"]
    if isinstance(minutes, (int, float)):
        minutes = [minutes]
    ok = isinstance(minutes, list) and minutes and all(isinstance(m, (int, float)) and m > 0 for m in minutes)
    if not ok or minutes != sorted(set(minutes)):
        _fail(f"minutes={opts['minutes']!r}: expected increasing minutes > 0, e.g. minutes=[5,10,30,60]")
    if opts["algorithm"] is not None and opts["algorithm"] not in algorithms():
        _fail(f"algorithm={opts['algorithm']!r} has no configs/experiment/omniglot_5w_<algorithm>.yaml; "
              f"allowed: {algorithms()}")
    return {**opts, "minutes": [float(m) for m in minutes]}, [a for a in argv if a not in own]


def overrides(algorithm: str, data_root: str, extra: list[str]) -> list[str]:
    return [f"experiment=omniglot_5w_{algorithm}", f"data.root={data_root}", "meta_iterations=1000000",
            "eval.val_every=0", "ckpt_every=500", "device=cpu", *extra]


def run(algorithm: str, minutes: list[float], run_dir: Path, data_root: str, extra: list[str], name: str,
        log=print, record: dict | None = None) -> dict:
    """Grow one run segment by segment; rewrite the record after every segment. Given the
    ``record`` of an earlier call, continue its run with the marks beyond its last one."""
    import torch

    if record is not None:
        done = record["segments"][-1]["max_train_minutes"] if record["segments"] else 0
        minutes = [m for m in minutes if m > done]
        record.setdefault("continued", []).append("python -m bench.tta " + shlex.join(sys.argv[1:]))
        return _grow(record, minutes, log, first_resume=bool(record["segments"]))
    record = {"algorithm": algorithm, "name": name, "extra_overrides": list(extra), "command": "python -m bench.tta " + shlex.join(sys.argv[1:]),
              "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                          "threads": torch.get_num_threads(), "load_average_start": os.getloadavg()[0]},
              "run_dir": _rel(run_dir), "overrides": overrides(algorithm, data_root, extra), "segments": []}
    return _grow(record, minutes, log, first_resume=False)


def _grow(record: dict, minutes: list[float], log, first_resume: bool) -> dict:
    from trainer import train, validate
    from trainer.config import compose

    run_dir, algorithm = ROOT / record["run_dir"], record["algorithm"]
    for i, m in enumerate(minutes):
        resume = "true" if i or first_resume else "false"
        cfg = compose([*map(os.path.expandvars, record["overrides"]), f"max_train_minutes={m}", f"resume={resume}"])
        validate(cfg)
        t0 = time.perf_counter()
        s = train(cfg, run_dir)
        if s["status"] != "completed":
            raise RuntimeError(f"segment {m} min ended {s['status']}: {s.get('failure')}")
        seg = {"max_train_minutes": m, "train_wall_s": s["timing"]["train_wall_s"],
               "iterations": s["iterations_done"], "test_mean": s["test"]["mean"], "test_ci95": s["test"]["ci95"],
               "test_tasks": s["test"]["n"], "eval_wall_s": s["timing"]["eval_wall_s"],
               "segment_wall_s": time.perf_counter() - t0, "summary": s}
        record["segments"].append(seg)
        record["load_average_end"] = os.getloadavg()[0]
        log(f"[tta {algorithm}] {m:g} min: {seg['iterations']} iterations, test {100 * seg['test_mean']:.2f} "
            f"± {100 * seg['test_ci95']:.2f}% (eval {seg['eval_wall_s']:.0f} s)")
        atomic_write_json(RECORDS / f"{record['name']}.json", portable(record))
    return record


def _rel(path: Path) -> str:
    """The path relative to the checkout when inside it (records are committed)."""
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def _curve(record) -> list[tuple[float, float]]:
    """(training minutes, running mean of train accuracy over 100 iterations) from the run's metrics."""
    path = ROOT / record["run_dir"] / "metrics.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    out, window = [], []
    for r in rows:
        window.append(r.get("train_metric", 0.0))
        window = window[-100:]
        if r["iter"] % 50 == 0:
            out.append((r["train_wall_s"] / 60, sum(window) / len(window)))
    return out


def _title(r: dict) -> str:
    label = r["segments"][0]["summary"]["label"]
    fixed = ("experiment=", "data.root=", "meta_iterations=", "eval.val_every=", "ckpt_every=", "device=",
             "diagnostics=", "batching=")
    extra = [o.replace("algorithm.hparams.", "") for o in r["overrides"] if not o.startswith(fixed)]
    name = r.get("name") or r["algorithm"]
    return f"`{name}` {label}" + (f" ({', '.join(extra)})" if extra else "")


def _load_records() -> dict[str, dict]:
    order = list(catalog.algorithms())  # records named by an algorithm first, in the configs' order
    files = sorted(RECORDS.glob("*.json"), key=lambda f: (f.stem not in order, order.index(f.stem)
                                                          if f.stem in order else 0, f.stem))
    records = {f.stem: json.loads(f.read_text()) for f in files}
    return {k: r for k, r in records.items() if r.get("segments")}


def render(log=print) -> str:
    """The time-to-accuracy section (and figure) from every record under ``RECORDS``."""
    records = _load_records()
    if not records:
        raise SystemExit(f"error: no records under {RECORDS}; run `python -m bench.tta algorithm=maml` first")
    marks = sorted({seg["max_train_minutes"] for r in records.values() for seg in r["segments"]})
    lines = ["## Time to accuracy: Omniglot 5-way 1-shot (`python -m bench.tta`)", "",
             "Test accuracy on the fixed 600 test tasks (mean ± 95% CI) and meta-iterations done after the given "
             "minutes of training wall-clock (meta-gradients, outer steps, task sampling; evaluation and "
             "checkpoints excluded). One run per row, grown segment by segment with `max_train_minutes` + "
             "`resume=true`.", "",
             "| run | " + " | ".join(f"{m:g} min" for m in marks) + " |", "|---|" + "---|" * len(marks)]
    for r in records.values():
        cells = []
        for m in marks:
            seg = next((x for x in r["segments"] if x["max_train_minutes"] == m), None)
            cells.append("–" if seg is None else
                         f"{100 * seg['test_mean']:.2f} ± {100 * seg['test_ci95']:.2f}% ({seg['iterations']} it)")
        lines.append(f"| {_title(r)} | " + " | ".join(cells) + " |")
    lines += ["", "| run | first reaches ≥ 95% (minimum) | first reaches ≥ 97% (goal) | at its last mark |",
              "|---|---|---|---|"]
    for r in records.values():
        def first(thr):
            seg = next((x for x in r["segments"] if x["test_mean"] >= thr), None)
            return "not reached" if seg is None else f"{seg['train_wall_s'] / 60:.1f} min ({seg['iterations']} it)"
        last = r["segments"][-1]
        lines.append(f"| {_title(r)} | {first(MINIMUM)} | {first(TARGET)} | "
                     f"{100 * last['test_mean']:.2f} ± {100 * last['test_ci95']:.2f}% after "
                     f"{last['train_wall_s'] / 60:.1f} min |")
    lines += ["", "Runs:"]
    for r in records.values():
        s0 = r["segments"][0]["summary"]
        lines.append(f"- {_title(r)}: `{r['command']}`; {r['machine']['threads']} torch thread(s) of "
                     f"{r['machine']['cores']} cores; load average {r['machine']['load_average_start']:.2f} at start, "
                     f"{r.get('load_average_end', float('nan')):.2f} at end; overrides `{' '.join(r['overrides'])}`; "
                     f"torch {s0['versions'].get('torch')}; data "
                     + ", ".join(f"{k} {v[:12]}…" for k, v in sorted(s0["data"]["archive_sha256"].items()))
                     + f"; run folder `{r['run_dir']}`" + (f"; {r['note']}" if r.get("note") else ""))
    if _figure(records):
        lines += ["", f"![test accuracy vs training minutes](bench_tta/{FIGURE.name})"]
    return "\n".join(lines) + "\n"


def _figure(records) -> bool:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.2))
    for key, r in records.items():
        name = r.get("name") or key
        xs = [s["train_wall_s"] / 60 for s in r["segments"]]
        ys = [100 * s["test_mean"] for s in r["segments"]]
        es = [100 * s["test_ci95"] for s in r["segments"]]
        line = ax.errorbar(xs, ys, yerr=es, marker="o", ms=4, capsize=3, label=name)
        c = _curve(r) if len(r["segments"]) > 1 else []
        if c:  # faint: training query accuracy after adaptation, running mean of 100 iterations
            ax.plot([x for x, _ in c], [100 * y for _, y in c], color=line[0].get_color(), alpha=0.3, lw=0.8)
    ax.axhline(100 * MINIMUM, color="gray", ls="--", lw=0.8)
    ax.axhline(100 * TARGET, color="gray", ls=":", lw=0.8)
    ax.set_xlabel("training wall-clock (minutes, one core)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(60, 100)
    ax.set_title("Omniglot 5-way 1-shot: test accuracy (600 tasks, 95% CI); faint: train query accuracy", fontsize=9)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    FIGURE.parent.mkdir(parents=True, exist_ok=True)
    tmp = FIGURE.with_name(FIGURE.stem + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(FIGURE)
    return True


def splice(text: str, section: str) -> str:
    """Replace (or append) the marked time-to-accuracy section of BENCHMARKS.md."""
    block = f"{BEGIN}\n{section}{END}"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        return head + block + rest.split(END, 1)[1]
    return text.rstrip("\n") + "\n\n" + block + "\n"


def plan() -> list[dict]:
    """The runs of :data:`PLAN`: each ``{name, args}``, ``args`` this tool's arguments besides ``name``."""
    return yaml.safe_load(PLAN.read_text())["runs"]


def run_plan() -> int:
    """Every planned run at once, one process (and one core) each, from empty run folders; then render."""
    procs = []
    for r in plan():
        shutil.rmtree(ROOT / "runs" / "bench" / "tta" / r["name"], ignore_errors=True)
        procs.append(subprocess.Popen([sys.executable, "-m", "bench.tta", f"name={r['name']}", *r["args"]], cwd=ROOT,
                                      env=dict(os.environ, OMP_NUM_THREADS="1")))
    if any([p.wait() for p in procs]):
        return 1
    return main(["render=true"])


def main(argv=None) -> int:
    from datasets.store import data_root

    argv = sys.argv[1:] if argv is None else list(argv)
    if {"-h", "--help"} & set(argv):
        print(__doc__)
        return 0
    a, extra = parse(argv)
    if a["render"]:
        section = render()
        atomic_write_text(BENCHMARKS, splice(BENCHMARKS.read_text() if BENCHMARKS.exists() else "# Benchmarks\n", section))
        print(f"wrote the time-to-accuracy section of {BENCHMARKS.relative_to(ROOT)}")
        return 0
    if a["plan"]:
        return run_plan()
    if not a["algorithm"]:
        _fail(f"give algorithm={'|'.join(algorithms())} (or render=true, or plan=true)")
    if a["threads"]:
        import torch
        torch.set_num_threads(int(a["threads"]))
    name = str(a["name"] or a["algorithm"])
    if not name.replace("_", "").replace("-", "").isalnum():
        _fail(f"name={name!r}: use letters, digits, '-' and '_'")
    run_dir = Path(a["run_dir"]) if a["run_dir"] else ROOT / "runs" / "bench" / "tta" / name
    if a["continue"]:
        path = RECORDS / f"{name}.json"
        if not path.exists():
            _fail(f"continue=true: no record {path}; start the run without continue=true")
        record = json.loads(path.read_text())
        if not (ROOT / record["run_dir"] / "ckpt.pt").exists():
            _fail(f"continue=true: the run folder {record['run_dir']} has no checkpoint to resume")
        run(a["algorithm"], a["minutes"], run_dir, "", [], name, record=record)
        return 0
    if run_dir.exists() and any(run_dir.iterdir()):
        _fail(f"{run_dir} is not empty: remove it or pass another run_dir= (segments resume from it)")
    root = next((o.split("=", 1)[1] for o in extra if o.startswith("data.root=")), None)
    run(a["algorithm"], a["minutes"], run_dir, str(data_root(root)), [o for o in extra if not o.startswith("data.root=")],
        name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
