"""The paper-budget campaign: runs to the papers' iteration counts, resumable across sessions.

    python tools/campaign.py run [--jobs 2]   start or continue every unfinished run, JOBS at a time
    python tools/campaign.py status           iterations done / planned, latest validation, ETA
    python tools/campaign.py save             copy unfinished runs' checkpoints into the records

Each run trains in ``runs/campaign/NAME`` with one torch thread. SIGTERM (or Ctrl-C) to this
process is passed on to the runs, which checkpoint and stop as ``interrupted``; the campaign then
saves their state. A finished run's ``summary.json`` and thinned ``metrics.csv`` (completed, or
diverged: an outcome too) go to the campaign's records folder (``RECORDS``/NAME), and its saved
state leaves the tree. An unfinished run's
state (``ckpt.pt`` and ``metrics.jsonl``, both small) is saved to ``…/NAME/unfinished/`` so that a
fresh clone continues it with ``resume=true``. A completed campaign is never rerun: starting it
again changes no file.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tools")]  # the suite, and tools/collect.py
from collect import thin_metrics  # noqa: E402  (tools/collect.py)

from catalog import campaign_plan  # noqa: E402
from reporting.campaign import OUTCOMES  # noqa: E402
from reporting.campaign import runs as campaign_runs  # noqa: E402

RUNS = ROOT / "runs" / "campaign"
RECORDS = ROOT / "reports" / "records" / "campaign-cpu"
PLAN_FILE = ROOT / "configs" / "campaign.yaml"


PLAN = campaign_plan(PLAN_FILE)  # each run's {name, experiment, seed, why, overrides}, in the order they start


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _copy_atomic(src: Path, dst: Path, text: str | None = None) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.")
    os.close(fd)
    if text is None:
        shutil.copyfile(src, tmp)
    else:
        Path(tmp).write_text(text)
    os.replace(tmp, dst)


def done(name: str) -> bool:
    s = _read(RECORDS / name / "summary.json")
    return bool(s) and s.get("status") in OUTCOMES


def restore(name: str) -> None:
    """Bring a saved unfinished state back into the run folder when the folder has none."""
    saved, run = RECORDS / name / "unfinished", RUNS / name
    if (saved / "ckpt.pt").exists() and not (run / "ckpt.pt").exists():
        for f in ("ckpt.pt", "metrics.jsonl"):
            _copy_atomic(saved / f, run / f)


def save(name: str) -> bool:
    """Copy an unfinished run's checkpoint, and its metrics up to the checkpoint's iteration (a run still training
    has logged past it; resuming drops those rows anyway), into the records; True when saved."""
    from trainer.records import load_checkpoint, read_jsonl  # torch: only when saving

    run, saved = RUNS / name, RECORDS / name / "unfinished"
    if done(name) or not (run / "ckpt.pt").exists():
        return False
    _copy_atomic(run / "ckpt.pt", saved / "ckpt.pt")
    rows = read_jsonl(run / "metrics.jsonl", max_iter=(load_checkpoint(saved / "ckpt.pt") or {}).get("iteration"))
    _copy_atomic(run / "metrics.jsonl", saved / "metrics.jsonl",
                 thin_jsonl("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)))
    return True


def thin_jsonl(text: str, max_rows: int = 1000) -> str:
    """The metrics rows an unfinished run's saved state keeps (so that it stays small): every validated row, the last
    one, and from the first on each row at least ``every`` iterations after the one kept before it, ``every`` the
    smallest power of two that leaves about ``max_rows``. Rows already that sparse are all kept, and ``every`` only
    doubles, so saving again in a later session keeps what one save of the whole run would keep: the older rows do
    not thin out session after session."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return ""
    every = 1 << math.ceil(math.log2(max(1, -(-json.loads(lines[-1])["iter"] // max_rows))))
    keep, last = [], None
    for i, line in enumerate(lines):
        it = json.loads(line)["iter"]
        if last is None or it - last >= every:
            last = it
        elif i < len(lines) - 1 and '"val_metric"' not in line:
            continue
        keep.append(line)
    return "".join(line + "\n" for line in keep)


def collect(name: str) -> bool:
    """A finished run's records (completed, or diverged: a result too) into the campaign folder;
    its saved state leaves the tree."""
    run = RUNS / name
    s = _read(run / "summary.json")
    if not s or s.get("status") not in OUTCOMES:
        return False
    if (run / "metrics.csv").exists():  # a run that diverged on its first iteration logged none
        _copy_atomic(run / "metrics.csv", RECORDS / name / "metrics.csv", thin_metrics((run / "metrics.csv").read_text()))
    s["run_dir"] = str((run).relative_to(ROOT))  # records never name this machine's folders
    _copy_atomic(run / "summary.json", RECORDS / name / "summary.json", json.dumps(s, indent=2, sort_keys=True) + "\n")
    shutil.rmtree(RECORDS / name / "unfinished", ignore_errors=True)
    return True


def command(name: str, overrides: list[str]) -> list[str]:
    resume = ["resume=true"] if (RUNS / name / "ckpt.pt").exists() else []
    return [sys.executable, "train.py", *overrides, *resume, f"hydra.run.dir={(RUNS / name).relative_to(ROOT)}"]


def run(jobs: int) -> int:
    todo = [(r["name"], r["overrides"]) for r in PLAN if not done(r["name"])]
    if not todo:
        print("campaign: every run is complete")
        return 0
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", WANDB_MODE=os.environ.get("WANDB_MODE", "offline"))
    running: dict[str, subprocess.Popen] = {}
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(True))
    failed = 0
    while todo or running:
        while todo and len(running) < jobs and not stopping:
            name, overrides = todo.pop(0)
            restore(name)
            (RUNS / name).mkdir(parents=True, exist_ok=True)
            log = open(RUNS / name / "campaign.log", "a")
            running[name] = subprocess.Popen(command(name, overrides), cwd=ROOT, env=env, stdout=log,
                                             stderr=subprocess.STDOUT, start_new_session=True)
            (RUNS / name / "campaign.pid").write_text(f"{running[name].pid}\n")  # status: it is training now
            print(f"campaign: started {name}", flush=True)
        if stopping:
            for p in running.values():
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            todo = []
        time.sleep(1)
        for name, p in list(running.items()):
            if p.poll() is None:
                continue
            del running[name]
            (RUNS / name / "campaign.pid").unlink(missing_ok=True)
            if collect(name):
                print(f"campaign: {name} {_read(RUNS / name / 'summary.json')['status']}", flush=True)
            else:
                s = _read(RUNS / name / "summary.json") or {}
                failed += s.get("status") != "interrupted"
                print(f"campaign: {name} ended {s.get('status', 'without a summary')} (exit {p.returncode}; "
                      f"log {RUNS / name / 'campaign.log'})", flush=True)
    saved = [r["name"] for r in PLAN if save(r["name"])]
    if saved:
        print(f"campaign: saved the state of {len(saved)} unfinished run(s) under {RECORDS.relative_to(ROOT)}")
    return 1 if failed else 0


def training(name: str) -> bool:
    """Whether a campaign on this machine trains ``name`` now: the process named in ``campaign.pid`` lives and,
    where ``/proc`` shows its command line, trains this run's folder (a pid reused after a SIGKILL does not)."""
    try:
        pid = int((RUNS / name / "campaign.pid").read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return False
    argv = Path(f"/proc/{pid}/cmdline")
    return not argv.exists() or f"hydra.run.dir={(RUNS / name).relative_to(ROOT)}".encode() in argv.read_bytes()


def status() -> None:
    """Each run: status, iterations, latest validation, seconds per iteration and CPU-hours left on one core — to its
    planned iterations and, under the plateau rule, to the rule's earliest stop (its 9th validation; "any val." once
    past it, and the rule's two sides now: the last third's gain and the CI it must exceed to go on). A
    borrowed rate (a run not started) is marked ~ (:func:`reporting.campaign.runs`)."""
    table = [{**r, "status": "training" if training(r["name"]) else r["status"]}
             for r in campaign_runs(RECORDS, RUNS, PLAN)]
    width = max(len(r["name"]) for r in table)
    print(f"{'run':{width}} {'status':12} {'iterations':>17} {'val':>8} {'s/iter':>7} {'ETA':>8} {'ETA rule':>8} "
          f"{'gain > CI':>16}")
    for r in table:
        ended, per = r["status"] in OUTCOMES, r["s_per_iter"]

        def eta(target):
            return "-" if ended or per is None else f"{max(0, target - r['done']) * per / 3600:.1f} h"
        rule = "-" if ended or r["earliest"] is None else "any val." if r["done"] >= r["earliest"] else eta(r["earliest"])
        val = "-" if r["val"] is None else f"{r['val']:.4g}"
        rate = "-" if per is None else ("~" if r["borrowed"] else "") + f"{per:.3f}"
        sides = "-" if ended or r["rule"] is None else "{:+.4f} {} {:.4f}".format(
            r["rule"][0], ">" if r["rule"][0] > r["rule"][1] else "≤", r["rule"][1])
        print(f"{r['name']:{width}} {r['status']:12} {r['done']:>8,}/{r['planned']:>8,} {val:>8} {rate:>7} "
              f"{eta(r['planned']):>8} {rule:>8} {sides:>16}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("action", choices=["run", "status", "save"])
    ap.add_argument("--jobs", type=int, default=2)
    a = ap.parse_args(argv)
    if a.action == "run":
        return run(a.jobs)
    if a.action == "save":
        print(f"campaign: saved {sum(save(r['name']) for r in PLAN)} unfinished run(s)")
        return 0
    status()
    return 0


if __name__ == "__main__":
    sys.exit(main())
