"""BENCHMARKS.md from the harness's record: machine, command, tables, targets.

The harness owns one marked section of the file (``<!-- bench:begin -->`` …
``<!-- bench:end -->``); text outside it (time-to-accuracy curves, GPU tables written by
``bench.gpu_check`` in their own sections) is kept. Writes are atomic (temp file + replace).
"""
from __future__ import annotations

import os
import platform
import re
from pathlib import Path

import torch

from atomic import atomic_write_text
from trainer.problem import AUTO_BATCHING

from .workloads import WORKLOADS

# Targets: ours/peer MAML minimum and goal, memory flatness, vmap speed-up, sampling share.
RATIO_MIN, RATIO_GOAL, MEM_FLAT, VMAP_MIN, SAMPLE_MAX, HF_MAX = 0.8, 0.5, 1.05, 10.0, 0.05, 2.5


def machine() -> dict:
    model = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.lower().startswith("model name")]
        model = names[0] if names else model
    except OSError:
        pass
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    try:
        import learn2learn
        l2l = learn2learn.__version__
    except Exception:  # noqa: BLE001 — a missing peer is reported, not fatal
        l2l = None
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu_model": model or "unknown", "cores": os.cpu_count(), "cores_usable": affinity,
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "interop_threads": torch.get_num_interop_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "python": platform.python_version(), "learn2learn": l2l, "gpu": gpu, "platform": platform.platform()}


def _s(x: float | None) -> str:
    if x is None:
        return "–"
    return f"{x:.3f}" if x < 10 else f"{x:.1f}"


def _r(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}×"


def _mib(b: int | None) -> str:
    return "–" if b is None else f"{b / 2**20:.1f}"


def _cells(rec: dict, side: str, batching: str | None = None) -> dict:
    return {(c["algorithm"], c["K"]): c for c in rec["cells"]
            if c["side"] == side and (batching is None or c["batching"] == batching)}


def _primary(rec: dict, algorithm: str, k: int, primary: str) -> dict | None:
    """Our cell in the main table: the primary batching, else whichever was measured."""
    cells = [c for c in rec["cells"] if c["side"] == "ours" and c["algorithm"] == algorithm and c["K"] == k]
    for c in cells:
        if c["batching"] == primary:
            return c
    return cells[0] if cells else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _status(c: dict | None) -> str:
    if c is None:
        return "not run"
    if c["status"] == "ok":
        return f"{c['timed_iterations']}" + (f" ({c['note']})" if c["note"] else "")
    return f"{c['status']}: {c['note']}"


def _beside_peer(recs: dict, side: str, batching: str | None = None):
    """(record, algorithm, K, our cell, learn2learn's cell or None) for each of ``side``'s cells, by K."""
    for rec in recs.values():
        peer = _cells(rec, "peer")
        for (a, k), c in sorted(_cells(rec, side, batching).items(), key=lambda kv: (kv[0][1], kv[0][0])):
            yield rec, a, k, c, peer.get((a, k))


def _ratios(c: dict, p: dict | None) -> str:
    """Cell ``c`` ÷ cell ``p``, wall clock then CPU time, as two table cells."""
    return (f"{_r(_ratio(c['median_wall_s'], p and p['median_wall_s']))} | "
            f"{_r(_ratio(c['median_cpu_s'], p and p['median_cpu_s']))}")


def workload_table(key: str, rec: dict, o: dict) -> list[str]:
    lines = [f"### {rec['label']} — meta-batch {rec['meta_batch']}, {rec['model']} (head {rec['head']}), "
             f"α = {rec['inner_lr']:g}", "", f"Tasks: {rec['origin']}.", ""]
    sm = sorted(rec["sampling_s"])[len(rec["sampling_s"]) // 2]
    first = rec.get("sampling_first_s") or []
    cold = (f" after {len(first)} untimed first draws ({', '.join(f'{s * 1e3:.0f}' for s in first)} ms: "
            "learn2learn's import and task set)") if first else ""
    lines += [f"Task sampling ({rec['sampler']} sampler): median {sm * 1e3:.1f} ms per meta-batch "
              f"({len(rec['sampling_s'])} draws{cold}"
              f"{', image cache resident' if rec['origin'].startswith('real') and rec['model'] != 'mlp' else ''}), "
              "timed apart from the iterations below.", ""]
    lines += ["| K | algorithm | batching | s / iter (wall) | s / iter (CPU) | ÷ learn2learn MAML (wall) | "
              "÷ learn2learn MAML (CPU) | timed iterations |", "|---|---|---|---|---|---|---|---|"]
    peer = _cells(rec, "peer")
    for k in o["ks"]:
        p = peer.get(("maml", k))
        for a in o["algorithms"]:
            c = _primary(rec, a, k, rec["batching"])
            if c is None:
                continue
            lines.append(f"| {k} | {a} | {c['batching']} | {_s(c['median_wall_s'])} | {_s(c['median_cpu_s'])} | "
                         f"{_ratios(c, p)} | {_status(c)} |")
        if p is not None:
            lines.append(f"| {k} | **learn2learn MAML** | loop | {_s(p['median_wall_s'])} | {_s(p['median_cpu_s'])} | "
                         f"1.00× | 1.00× | {_status(p)} |")
    if rec["grad_check"]:
        diffs = ", ".join(f"K={k}: {v:.1e}" for k, v in rec["grad_check"].items())
        lines += ["", f"Same weights, same task: ‖ours − learn2learn‖ / ‖learn2learn‖ of the MAML meta-gradient of "
                      f"the first task, in float64 — {diffs}."]
    return lines + [""]


def compare_table(recs: dict, o: dict) -> list[str]:
    rows = []
    for key, rec in recs.items():
        other = "loop" if rec["batching"] == "vmap" else "vmap"
        alt = _cells(rec, "ours", other)
        for (a, k), c in sorted(alt.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            p = _primary(rec, a, k, rec["batching"])
            if p is None or p["batching"] == other:  # iMAML-HF: its main cell is already the loop
                continue
            loop, vmap = (c, p) if other == "loop" else (p, c)
            rows.append(f"| {rec['label']} | {a} | {k} | {_s(loop['median_wall_s'])} | {_s(vmap['median_wall_s'])} | "
                        f"{_ratios(loop, vmap)} |")
    if not rows:
        return []
    return ["### Per-task loop vs torch.func.vmap", "",
            "| workload | algorithm | K | loop s / iter | vmap s / iter | speed-up (wall) | speed-up (CPU) |",
            "|---|---|---|---|---|---|---|", *rows, ""]


def compile_table(recs: dict) -> list[str]:
    rows = []
    for rec, a, k, c, p in _beside_peer(recs, "ours", "loop+compile"):
        e = _primary(rec, a, k, rec["batching"])
        rows.append(f"| {rec['label']} | {a} | {k} | {_s(c['first_s'])} | {_s(c['median_wall_s'])} | "
                    f"{_s(e and e['median_wall_s'])} ({rec['batching']}) | {_s(p and p['median_wall_s'])} | "
                    f"{_ratios(c, p)} | {_status(c)} |")
    if not rows:
        return []
    checks = "; ".join(f"{rec['label']} K={k}: compiled {v['compile_vs_loop']:.1e}, eager vmap {v['vmap_vs_loop']:.1e}"
                       for rec in recs.values()
                       for k, v in sorted(rec.get("compile_check", {}).items(), key=lambda kv: int(kv[0])))
    return ["### torch.compile: `batching=compile`", "",
            "The trainer's `batching=compile`: the estimator wrapped in `torch.compile` and looped over the "
            "meta-batch; the first call compiles (minutes on 2 cores; seconds when TorchInductor's on-disk cache "
            "already holds the graph). Timed here for MAML; every estimator compiles (iMAML with its default "
            "reverse-over-reverse HVP) and matches the eager loop to ~1e-15 in float64 (tests). Relative "
            "difference from the eager loop of the first meta-batch's MAML meta-gradient, float32, this run — "
            f"the compiled one beside the eager vmap one, two evaluation orders of the same function: "
            f"{checks or 'not measured'}. Where they are large, float32 rounding is amplified by the "
            "meta-gradient itself (see the note on float32 below), not introduced by the compiler.", "",
            "| workload | algorithm | K | warm-up iter (s; compiled before, by the float32 check) | compiled s / iter | eager s / iter | "
            "learn2learn s / iter | compiled ÷ learn2learn (wall) | (CPU) | timed iterations |",
            "|---|---|---|---|---|---|---|---|---|---|", *rows, ""]


def module_table(recs: dict) -> list[str]:
    rows = [f"| {rec['label']} | {k} | {_s(c['median_wall_s'])} | {_s(c['median_cpu_s'])} | "
            f"{_s(p and p['median_wall_s'])} | {_ratios(c, p)} | "
            f"{rec.get('module_check', {}).get(str(k), float('nan')):.1e} | {_status(c)} |"
            for rec, _, k, c, p in _beside_peer(recs, "module")]
    if not rows:
        return []
    return ["### Your own network: MAML on a `torch.nn` module", "",
            "learn2learn's network as a `torch.nn` module holding the same initial weights, its parameters as a dict "
            "under the module's names and the loss through `torch.func.functional_call` (`bench.peer.module_problem`): "
            "the library as a researcher would call it on their own model, `meta_gradient_batch(\"maml\", loss_fn, "
            "params, tasks, inner, batching=\"loop\", diagnostics_full=False)`, against learn2learn's MAML on that "
            "module and the same meta-batches. Gradient check: ‖ours − learn2learn‖ / ‖learn2learn‖, first task, float64.",
            "", "| workload | K | s / iter (wall) | s / iter (CPU) | learn2learn s / iter | ÷ learn2learn (wall) | (CPU) | "
            "gradient check | timed iterations |", "|---|---|---|---|---|---|---|---|---|", *rows, ""]


def memory_table(recs: dict, o: dict) -> list[str]:
    key = o["mem_workload"]
    mem = recs.get(key, {}).get("memory")
    if not mem:
        return []
    ks = o["mem_ks"]
    lo, hi = min(ks), max(ks)
    by = {(r["algorithm"], r["side"], r["K"]): r for r in mem["rows"]}
    lines = [f"### Peak memory of one meta-gradient, K = {lo} vs K = {hi}", "",
             f"{WORKLOADS[key].label}, {mem['tasks']} tasks, measured by {mem['meter']} (tensor bytes allocated "
             "during the call above what was live before).", "",
             f"| algorithm | batching | K = {lo} (MiB) | K = {hi} (MiB) | ratio |", "|---|---|---|---|---|"]
    names = [(a, "ours") for a in o["algorithms"]] + ([("maml", "peer")] if o["peer"] else [])
    for a, side in names:
        r0, r1 = by.get((a, side, lo)), by.get((a, side, hi))
        if not r0 or not r1:
            continue
        label = "learn2learn MAML" if side == "peer" else a
        lines.append(f"| {label} | {r0['batching']} | {_mib(r0['peak_bytes'])} | {_mib(r1['peak_bytes'])} | "
                     f"{_r(_ratio(r1['peak_bytes'], r0['peak_bytes']))} |")
    return lines + [""]


def _verdict(x: float | None, ok, goal=None) -> str:
    if x is None:
        return "not measured"
    if goal is not None and goal(x):
        return "met (goal)"
    return "met" if ok(x) else "**not met**"


def _hf_target(rec: dict) -> list[str]:
    """iMAML-HF ÷ MAML at K=16 (≤ HF_MAX), or at the largest K both were timed at when the K=16
    cell was skipped as too slow (named as such)."""
    for k in sorted({c["K"] for c in rec["cells"] if c["algorithm"] == "imaml_hf"}, reverse=True):
        h, m = _primary(rec, "imaml_hf", k, rec["batching"]), _primary(rec, "maml", k, rec["batching"])
        r = _ratio(h and h["median_wall_s"], m and m["median_wall_s"])
        if r is not None:
            at = "" if k == 16 else f" (K=16 {_status(_primary(rec, 'imaml_hf', 16, rec['batching']))}; at K={k})"
            return [f"| iMAML-HF ÷ MAML, K=16, Omniglot 5w1s: ≤ {HF_MAX} | {_r(r)}{at} | "
                    f"{_verdict(r, lambda x: x <= HF_MAX)} |"]
    return []


def _peer_row(what: str, c: dict | None, p: dict | None, limit: float, goal: float | None = None) -> str:
    """One target row: our cell ``c`` ÷ learn2learn's ``p``, wall and CPU, verdict on the wall ratio."""
    r = _ratio(c and c["median_wall_s"], p and p["median_wall_s"])
    rc = _ratio(c and c["median_cpu_s"], p and p["median_cpu_s"])
    return (f"| {what} | {_r(r)} wall, {_r(rc)} CPU | "
            f"{_verdict(r, lambda x: x <= limit, goal and (lambda x: x <= goal))} |")


def _peer_targets(rec: dict, name: str, goal: float | None) -> list[str]:
    """Our MAML ÷ learn2learn's at K = 1 and 5 (≤ RATIO_MIN, optionally a goal), the same under
    ``batching=compile`` where it was timed, and MAML on learn2learn's own torch.nn module."""
    lines, peer = [], _cells(rec, "peer")
    compiled, module = _cells(rec, "ours", "loop+compile"), _cells(rec, "module")
    want = f"≤ {RATIO_MIN}" + (f" (goal ≤ {goal})" if goal else "")
    for k in (1, 5):
        p = peer.get(("maml", k))
        lines.append(_peer_row(f"MAML ÷ learn2learn MAML, {name}, K={k}: {want}",
                               _primary(rec, "maml", k, rec["batching"]), p, RATIO_MIN, goal))
        if ("maml", k) in compiled:
            lines.append(_peer_row("the same with `batching=compile`", compiled[("maml", k)], p, RATIO_MIN, goal))
    for (_, k), c in sorted(module.items()):
        lines.append(_peer_row(f"MAML on a torch.nn module (functional_call, per-task loop) ÷ learn2learn MAML, "
                               f"{name}, K={k}: ≤ 1", c, peer.get(("maml", k)), 1.0))
    return lines


def targets(recs: dict, o: dict) -> list[str]:
    lines = ["### Targets", "", "| target | measured | verdict |", "|---|---|---|"]
    if "omniglot-5w1s" in recs:
        lines += _peer_targets(recs["omniglot-5w1s"], "Omniglot 5w1s", RATIO_GOAL) + _hf_target(recs["omniglot-5w1s"])
    if "miniimagenet-5w1s" in recs:
        lines += _peer_targets(recs["miniimagenet-5w1s"], "mini-ImageNet 5w1s", None)
    if "omniglot-5w1s" in recs:
        for rk in recs.values():
            m, i = _primary(rk, "maml", 16, rk["batching"]), _primary(rk, "imaml", 16, rk["batching"])
            r = _ratio(i and i["median_wall_s"], m and m["median_wall_s"])
            if r is not None:
                lines.append(f"| iMAML ÷ MAML, K=16, 5 CG steps, {rk['label']}: ≤ 1 | {_r(r)} | "
                             f"{_verdict(r, lambda x: x <= 1.0)} |")
    mem = recs.get(o["mem_workload"], {}).get("memory")
    if mem:
        lo, hi = min(o["mem_ks"]), max(o["mem_ks"])
        by = {(r["algorithm"], r["side"], r["K"]): r["peak_bytes"] for r in mem["rows"]}
        for a in [a for a in ("imaml", "imaml_hf", "fomaml", "reptile", "maml") if a in o["algorithms"]]:
            r = _ratio(by.get((a, "ours", hi)), by.get((a, "ours", lo)))
            want = f"≤ {MEM_FLAT}" if a != "maml" else "grows ~linearly"
            v = _verdict(r, lambda x: x <= MEM_FLAT) if a != "maml" else ("grows" if r and r > 1.25 else "**flat?**")
            lines.append(f"| peak memory K={hi} ÷ K={lo}, {a}: {want} | {_r(r)} | {v} |")
    sin = recs.get("sinusoid")
    if sin and sin["batching"] == "vmap":
        loops = _cells(sin, "ours", "loop")
        sp = {(a, k): _ratio(loops[(a, k)]["median_wall_s"], _primary(sin, a, k, "vmap")["median_wall_s"])
              for (a, k) in loops if _primary(sin, a, k, "vmap") and a != "imaml_hf"}
        for what, vals in (("MAML", [v for (a, _), v in sp.items() if a == "maml" and v]),
                           ("every vmap-able estimator", [v for v in sp.values() if v])):
            if vals:
                lines.append(f"| sinusoid: vmap ≥ {VMAP_MIN:g}× the per-task loop, {what}, K ∈ {o['ks']} | "
                             f"{min(vals):.1f}× – {max(vals):.1f}× | {_verdict(min(vals), lambda x: x >= VMAP_MIN)} |")
    for key, rk in recs.items():
        c = _primary(rk, "maml", min(o["ks"]), rk["batching"])
        s = sorted(rk["sampling_s"])[len(rk["sampling_s"]) // 2]
        if c and c["median_wall_s"]:
            share = s / (s + c["median_wall_s"])
            lines.append(f"| sampling ≤ {SAMPLE_MAX:.0%} of a meta-iteration, {rk['label']} (MAML K={min(o['ks'])}, "
                         f"the cheapest) | {share:.1%} | {_verdict(share, lambda x: x <= SAMPLE_MAX)} |")
    return lines + [""]


def render(record: dict, command: str) -> str:
    m, o = record["machine"], record["options"]
    recs = {k: record["workloads"][k] for k in o["workloads"] if k in record["workloads"]}  # the run's order
    origins = {r["origin"].split(":")[0] for r in recs.values()}
    lines = ["## Benchmark harness (`make bench`)", "",
             f"Generated by `{command}` on {record['date']} in {record['wall_s'] / 60:.1f} min.", "",
             f"- Machine: {m['cpu_model']}, {m['cores']} cores ({m['cores_usable']} usable); "
             f"{'GPU ' + m['gpu'] + '; ' if m['gpu'] else ''}device `{o['device']}`",
             f"- torch {m['torch']} ({m['threads']} intra-op threads, {m['interop_threads']} inter-op, "
             f"OMP_NUM_THREADS={m['omp_num_threads']}), Python {m['python']}, learn2learn {m['learn2learn']}",
             f"- Load average (1 min) at start / end: {record['load_average_start']} / {record['load_average_end']} "
             "(other jobs on a shared machine slow the wall clock; the CPU-time columns are steadier)",
             f"- Per cell: {o['warmup']} untimed warm-up iteration, then the median of up to {o['repeats']} timed "
             f"meta-iterations (fewer when one takes over cell_budget_s={o['cell_budget_s']:g} s / n; cells predicted "
             f"over max_iter_s={o['max_iter_s']:g} s are skipped; a cell whose {o['repeats']} iterations would "
             f"take under min_time_s={o.get('min_time_s', 0):g} s gets another min_time_s / 2 of warm-up and is "
             "timed for min_time_s, at most 200 iterations). A meta-iteration = meta-gradient over the "
             "meta-batch (`diagnostics_full=False`) + outer Adam step; task sampling is timed separately.",
             f"- Ours: batching `{o['batching']}` (auto: {', '.join(f'{m} {b}' for m, b in AUTO_BATCHING.items())}). "
             "Peer: "
             "learn2learn 0.2.0 `l2l.algorithms.MAML(first_order=False)`, clone/adapt per task, on its "
             "`OmniglotCNN` / `MiniImagenetCNN(hidden_size=32)` / a torch.nn MLP holding our initial weights "
             "(batch-norm eps set to our 1e-3), on the same meta-batches.", ""]
    if "synthetic" in origins:
        lines += ["**Some workloads ran on synthetic tensors (the data was not found): their timings are valid, "
                  "their sampling times are not those of the real samplers.**", ""]
    lines += targets(recs, o)
    for key, rec in recs.items():
        lines += workload_table(key, rec, o)
    lines += compare_table(recs, o) + compile_table(recs) + module_table(recs) + memory_table(recs, o)
    return "\n".join(lines).rstrip() + "\n"


def write_section(path: Path, name: str, body: str, title: str = "# Benchmarks") -> None:
    """Replace (or append) the ``<!-- name:begin -->…<!-- name:end -->`` section of ``path`` atomically."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{begin}\n{body.rstrip()}\n{end}\n"
    old = path.read_text() if path.exists() else f"{title}\n\n"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end) + r"\n?", re.S)
    new = pattern.sub(lambda _: block, old, count=1) if pattern.search(old) else old.rstrip() + "\n\n" + block
    atomic_write_text(path, new)
