"""Run jobs from stdin, JOBS at a time (default 2), one torch thread each, saying where they are.

    python tools/jobs.py OUT_DIR < lines      each line: NAME ENTRY OVERRIDE...  →  ENTRY OVERRIDE... in OUT_DIR/NAME

ENTRY is train.py or study.py; lines start in the order given (put the longest first); blank lines
and ``#`` comments are skipped. One thread per process: several multi-threaded torch processes on a
small machine slow each other down many times over. Each job's output goes to ``OUT_DIR/NAME.log``;
a line is printed as each job starts and ends, with jobs done / total, the elapsed time and an
estimate of what is left (from the jobs' ``max_train_minutes`` where they state one, else from the
jobs finished so far). A job's own outcome (diverged, oom) is in its summary.json; a job that exits
non-zero makes this runner exit 1 once the others are done.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EVAL_ALLOWANCE = 1.3  # a time-budgeted run also evaluates and profiles off its clock: about 30% more wall-clock


def budget_minutes(args: list[str]) -> float | None:
    """The training minutes a job states (``max_train_minutes=M``), or None."""
    for a in args:
        m = re.fullmatch(r"max_train_minutes=([0-9.eE+-]+)", a)
        if m:
            return float(m.group(1))
    return None


def _clock(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def run(out: Path, lines: list[str], jobs: int, py: str) -> int:
    todo = []
    for line in lines:
        if line.strip() and not line.lstrip().startswith("#"):
            name, entry, *args = shlex.split(line)
            todo.append((name, entry, args))
    total, started, done, failed = len(todo), time.monotonic(), 0, []
    planned = {name: budget_minutes(args) for name, _, args in todo}
    running: dict[str, tuple[subprocess.Popen, float]] = {}
    took: list[float] = []
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")

    def left() -> str:
        waiting = [planned[n] for n, _, _ in todo] + [planned[n] for n in running]
        if all(m is not None for m in waiting) and waiting:
            return f"≈ {_clock(60 * EVAL_ALLOWANCE * sum(waiting) / max(1, jobs))} left"
        if took:
            return f"≈ {_clock(sum(took) / len(took) * (len(todo) + len(running)) / max(1, jobs))} left"
        return "time left unknown"

    while todo or running:
        while todo and len(running) < jobs:
            name, entry, args = todo.pop(0)
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            log = open(out / f"{name}.log", "w")
            p = subprocess.Popen([py, entry, *args, f"hydra.run.dir={out / name}"], cwd=ROOT, env=env, stdout=log,
                                 stderr=subprocess.STDOUT)
            running[name] = (p, time.monotonic())
            print(f"jobs: [{done}/{total} done] started {name} (elapsed {_clock(time.monotonic() - started)}, "
                  f"{left()})", flush=True)
        time.sleep(0.5)
        for name, (p, t0) in list(running.items()):
            if p.poll() is None:
                continue
            del running[name]
            done += 1
            took.append(time.monotonic() - t0)
            tail = (out / f"{name}.log").read_text(errors="replace").strip().splitlines()[-1:] or [""]
            if p.returncode:
                failed.append(name)
                print(f"job {name} failed (log: {out / name}.log)", file=sys.stderr, flush=True)
            print(f"jobs: [{done}/{total} done] {name}: {tail[0][:160]} (elapsed "
                  f"{_clock(time.monotonic() - started)}, {left() if todo or running else 'all done'})", flush=True)
    return 1 if failed else 0


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python tools/jobs.py OUT_DIR < lines   (each line: NAME ENTRY OVERRIDE...)", file=sys.stderr)
        return 2
    out = Path(argv[0]).resolve()
    out.mkdir(parents=True, exist_ok=True)
    return run(out, sys.stdin.read().splitlines(), int(os.environ.get("JOBS", "2")),
               os.environ.get("PY", sys.executable))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
