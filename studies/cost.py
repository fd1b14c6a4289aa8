"""Cost of a meta-iteration: algorithm × inner optimizer × inner steps K.

"Training speed and memory of MAML vs iMAML for several inner optimizers": each point runs in
a fresh process (``studies.cost_point``), so peak RSS and allocator state belong to that point
alone. MAML keeps every inner step on the autograd graph (memory linear in K); FOMAML,
Reptile and iMAML do not (flat in K; Rajeswaran et al. 2019, §3.1 and Fig. 2).

A point whose memory, extrapolated linearly from the two previous K of the same series,
would exceed ``mem_cap_bytes`` is recorded as ``oom`` without being run (as are larger K
after an ``oom``); a process that reports out-of-memory, exceeds the cap or is killed by the
kernel (SIGKILL) is ``oom`` too. Any other failure is a bug and stops the study.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from algorithms import OPTIMIZERS
from trainer.config import algorithm_config, algorithm_names, inner_optimizers, resolve_device

from .common import POS, base_overrides, progress

ROOT = Path(__file__).resolve().parent.parent
COLUMNS = ["algorithm", "inner_optimizer", "inner_steps", "median_iter_s", "cpu_time_s", "alloc_peak_bytes",
           "rss_peak_bytes", "gpu_peak_bytes", "device", "status", "meta_batch_size", "batching", "note"]


RULES = {"algorithms": algorithm_names, "optimizers": OPTIMIZERS, "inner_steps": 1, "meta_batch_size": 1, "warmup": 0,
         "iterations": 1, "mem_cap_bytes": POS, "point_timeout_s": POS}  # studies.common.need


def series(cfg) -> list[tuple[str, str]]:
    """(algorithm, inner optimizer) pairs the algorithm's config accepts (``hf``: iMAML's solver only)."""
    able = {a: inner_optimizers(algorithm_config(a)) for a in cfg.study.algorithms}
    return [(a, o) for a in cfg.study.algorithms for o in cfg.study.optimizers if o in able[a]]


def run_point(cfg, algorithm: str, optimizer: str, steps: int) -> dict:
    s = cfg.study
    spec = {"overrides": base_overrides(cfg, f"algorithm={algorithm}", f"inner_optim={optimizer}",
                                        f"inner_steps={steps}", f"meta_batch_size={s.meta_batch_size}"),
            "warmup": int(s.warmup), "iterations": int(s.iterations), "mem_cap_bytes": float(s.mem_cap_bytes)}
    base = {"algorithm": algorithm, "inner_optimizer": optimizer, "inner_steps": steps}
    try:
        p = subprocess.run([sys.executable, "-m", "studies.cost_point", json.dumps(spec)], cwd=ROOT,
                           capture_output=True, text=True, timeout=float(s.point_timeout_s))
    except subprocess.TimeoutExpired:
        return {**base, "status": "timeout", "note": f"over point_timeout_s={s.point_timeout_s}"}
    if p.returncode == -signal.SIGKILL:
        return {**base, "status": "oom", "note": "killed by SIGKILL (the kernel's out-of-memory killer)"}
    for line in reversed(p.stdout.strip().splitlines()):
        try:
            return json.loads(line)
        except ValueError:
            continue
    tail = "\n".join((p.stderr or p.stdout).strip().splitlines()[-15:])
    raise RuntimeError(f"cost point {algorithm}/{optimizer}/K={steps} failed (exit {p.returncode}):\n{tail}")


def predicted_peak(done: list[dict], steps: int) -> float | None:
    """Linear extrapolation in K of the peak memory of the last two completed points."""
    pts = [(r["inner_steps"], r.get("gpu_peak_bytes") or r.get("alloc_peak_bytes")) for r in done
           if r.get("status") == "completed"]
    pts = [(k, m) for k, m in pts if m]
    if len(pts) < 2:
        return None
    (k0, m0), (k1, m1) = pts[-2], pts[-1]
    return m1 + (m1 - m0) / (k1 - k0) * (steps - k1) if k1 != k0 else None


def run(cfg, out_dir: Path) -> dict:
    s = cfg.study
    cap = float(s.mem_cap_bytes)
    grid = [(a, o, k) for a, o in series(cfg) for k in sorted(s.inner_steps)]
    rows, by_series = [], {}
    for a, o, k in progress(grid, desc="cost"):
        done = by_series.setdefault((a, o), [])
        pred = predicted_peak(done, k)
        if done and done[-1].get("status") == "oom":
            row = {"algorithm": a, "inner_optimizer": o, "inner_steps": k, "status": "oom",
                   "note": "a smaller K of this series was already out of memory"}
        elif pred is not None and pred > cap:
            row = {"algorithm": a, "inner_optimizer": o, "inner_steps": k, "status": "oom",
                   "note": f"predicted peak {pred:.3g} B > mem_cap_bytes={cap:.3g} (linear in K); not run"}
        else:
            row = run_point(cfg, a, o, k)
        done.append(row)
        rows.append(row)
        print(f"cost: {a:7s} {o:8s} K={k:<3d} {row.get('status'):9s} "
              f"iter {row.get('median_iter_s') or float('nan'):.4f}s "
              f"mem {(row.get('gpu_peak_bytes') or row.get('alloc_peak_bytes') or 0) / 2**20:.1f} MiB", flush=True)
    device = resolve_device(cfg.device).type
    return {"cost.csv": (COLUMNS, [{c: r.get(c) for c in COLUMNS} | {"device": r.get("device") or device} for r in rows])}
