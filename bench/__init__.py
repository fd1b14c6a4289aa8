"""The benchmark harness behind ``make bench``: ``python -m bench [options]``.

Times meta-iterations of every estimator (MAML, FOMAML, Reptile, iMAML-GD, iMAML-HF) on
Omniglot 5w1s / 20w1s, mini-ImageNet 5w1s and the sinusoid for K ∈ {1, 5, 16} inner steps,
against learn2learn 0.2.0's MAML in the same process on the same tasks and initial weights;
peak memory at two K; per-task loop vs ``torch.func.vmap``; the share of task sampling.
Writes its section of BENCHMARKS.md (and the raw record beside it as JSON).

Modules: :mod:`bench.workloads` (what is measured), :mod:`bench.peer` (learn2learn),
:mod:`bench.measure` (timing / memory), :mod:`bench.run` (the plan and budget),
:mod:`bench.render` (the report), :mod:`bench.gpu_check` (``make gpu-check``).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "reports" / "BENCHMARKS.md"
DATA_VAR = "$METAGRAD_DATA"


def portable(obj, data_root: str | None = None):
    """``obj`` (a JSON-able record) with this machine's folders taken out of every string: the data root
    becomes ``$METAGRAD_DATA``, the checkout's folder a path relative to it. Committed records are read
    on other machines; ``os.path.expandvars`` turns ``$METAGRAD_DATA`` back into a folder."""
    given = [r for r in (data_root, os.environ.get("METAGRAD_DATA")) if r]
    roots = [(f, DATA_VAR) for r in given for f in dict.fromkeys((os.path.abspath(r), str(Path(r).resolve())))]
    roots.append((str(ROOT), "."))

    def fix(text: str) -> str:
        for folder, name in roots:
            text = text.replace(folder + "/", "" if name == "." else name + "/")
            text = name if text == folder else text.replace("=" + folder, "=" + name)
        return text

    if isinstance(obj, dict):
        return {k: portable(v, data_root) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [portable(v, data_root) for v in obj]
    return fix(obj) if isinstance(obj, str) else obj


def _ints(text: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers, e.g. 1,5,16") from None
    if not vals or min(vals) < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected integers >= 0, e.g. 1,5,16")
    return vals


def _names(allowed):
    def parse(text: str) -> list[str]:
        vals = [v.strip() for v in text.split(",") if v.strip()]
        bad = [v for v in vals if v not in allowed]
        if bad or not vals:
            raise argparse.ArgumentTypeError(f"unknown {bad or text!r}; allowed: {','.join(allowed)}")
        return vals
    return parse


def parser() -> argparse.ArgumentParser:
    from .workloads import ALGORITHMS, WORKLOADS
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="a first look: omniglot-5w1s + sinusoid, K=1,5, 1 timed iteration, memory at K=5,20")
    p.add_argument("--workloads", type=_names(list(WORKLOADS)), help=f"default: all ({','.join(WORKLOADS)})")
    p.add_argument("--ks", type=_ints, help="inner-step counts K (default 1,5,16)")
    p.add_argument("--algorithms", type=_names(list(ALGORITHMS)), help="default: all")
    p.add_argument("--repeats", type=int, help="timed iterations per cell (default 3)")
    p.add_argument("--warmup", type=int, help="untimed iterations per cell (default 1)")
    p.add_argument("--max-iter-s", type=float, help="skip a cell predicted slower than this per iteration (default 25)")
    p.add_argument("--cell-budget-s", type=float, help="time budget of a cell's timed iterations (default 30)")
    p.add_argument("--batching", choices=["auto", "vmap", "loop"],
                   help="our batching over tasks (default auto: the faster one per model, trainer.problem.AUTO_BATCHING)")
    p.add_argument("--min-time-s", type=float, help="time a fast cell for at least this long, after half as "
                   "much extra warm-up (default 1; 0 disables)")
    p.add_argument("--no-compare", action="store_true", help="skip the loop-vs-vmap comparison cells")
    p.add_argument("--no-peer", action="store_true", help="skip learn2learn")
    p.add_argument("--compile-ks", type=_ints, help="K at which MAML is also timed under torch.compile (default 1,5; "
                   "compiling costs up to ~2-4 min a cell on 2 cores unless TorchInductor's cache has it)")
    p.add_argument("--compile-workloads", type=_names(list(WORKLOADS)), help="workloads of the torch.compile cells "
                   "(default omniglot-5w1s)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile cells")
    p.add_argument("--mem-ks", type=_ints, help="the two K of the memory table (default 5,80)")
    p.add_argument("--mem-tasks", type=int, help="tasks per memory measurement (default 2)")
    p.add_argument("--meta-batch", type=int, help="override every workload's meta-batch size (tests, quick looks)")
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], default="cpu")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's, every core — the "
                   "machine as users run it; learn2learn's per-task loop gains little from a second core, "
                   "our batched meta-batch does; 1 steadies timings on a shared machine)")
    p.add_argument("--data-root", help="data root (default $METAGRAD_DATA, else ./data)")
    p.add_argument("--synthetic", action="store_true", help="random tensors even when the data is present")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"report (default {DEFAULT_OUT.relative_to(ROOT)})")
    return p


def options(args: argparse.Namespace, p: argparse.ArgumentParser):
    """Options from the parsed arguments (``--quick`` fills what was not given)."""
    from datasets.store import data_root
    from trainer.config import resolve_device

    from .run import Options
    quick = {"workloads": ["omniglot-5w1s", "sinusoid"], "ks": [1, 5], "repeats": 1, "mem_ks": [5, 20], "compile_ks": [1],
             "min_time_s": 0.2}
    o = Options()
    for key in ("workloads", "ks", "algorithms", "repeats", "warmup", "max_iter_s", "cell_budget_s", "batching",
                "mem_ks", "mem_tasks", "meta_batch", "threads", "compile_ks", "compile_workloads", "min_time_s"):
        v = getattr(args, key)
        if v is None and args.quick and key in quick:
            v = quick[key]
        if v is not None:
            setattr(o, key, v)
    for key, lo in (("repeats", 1), ("warmup", 0), ("mem_tasks", 1), ("meta_batch", 1), ("threads", 1)):
        v = getattr(o, key)
        if v is not None and v < lo:
            p.error(f"--{key.replace('_', '-')}={v} must be >= {lo}")
    for key in ("max_iter_s", "cell_budget_s"):
        if getattr(o, key) <= 0:
            p.error(f"--{key.replace('_', '-')} must be > 0")
    if o.min_time_s < 0:
        p.error("--min-time-s must be >= 0")
    if len(set(o.mem_ks)) != 2:
        p.error(f"--mem-ks={o.mem_ks} must name two different K, e.g. 5,80")
    o.compare, o.peer, o.synthetic, o.seed = not args.no_compare, not args.no_peer, args.synthetic, args.seed
    if args.no_compile:
        o.compile_ks = []
    o.data_root = str(data_root(args.data_root))
    try:
        o.device = resolve_device(args.device).type
    except ValueError as e:
        p.error(str(e).replace("device=", "--device "))
    if o.peer:
        try:
            import learn2learn  # noqa: F401
        except ImportError:
            p.error("learn2learn is not installed (make setup installs 0.2.0); or pass --no-peer")
    return o


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("KINETO_LOG_LEVEL", "4")
    argv = list(sys.argv[1:] if argv is None else argv)
    p = parser()
    args = p.parse_args(argv)
    o = options(args, p)
    from atomic import atomic_write_text

    from . import render
    from .run import run
    record = run(o)
    record["machine"] = render.machine()
    record["date"] = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    command = shlex.join(["python", "-m", "bench", *argv])
    record["command"] = command
    record = portable(json.loads(json.dumps(record, default=str)), o.data_root)
    atomic_write_text(args.out.with_suffix(".json"), json.dumps(record, indent=1, sort_keys=True, default=str) + "\n")
    render.write_section(args.out, "bench", render.render(record, command))
    print(f"bench: wrote {args.out} and {args.out.with_suffix('.json')} ({record['wall_s'] / 60:.1f} min)")
    return 0
