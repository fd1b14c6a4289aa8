"""Test a trained run again, from its final checkpoint, under other test-time settings.

The same trained parameters tested twice — e.g. on the official iMAML release's leaky test
characters (``dataset.test_split=release_leaky``) or with another test-time proximal weight
(``eval.prox_lam``) — differ only in what is measured, never in training: a second training
run with the same settings would reach a different iteration count under a time budget.
``cfg`` is the run's own config with test-time keys changed (:data:`TEST_TIME_KEYS`); any
other difference from the run's recorded config is refused. The evaluation is the trainer's
own final test (:func:`trainer.loop.run_test`), so the result has the same fields as
``summary.json``'s ``test`` (per-task values, fingerprint) and pairs with other runs' tests.
"""
from __future__ import annotations

import copy
import time
from pathlib import Path

from omegaconf import OmegaConf

import datasets

from .config import ConfigError
from .loop import eval_spec, run_test, state_on
from .problem import build_problem
from .records import device_name, load_checkpoint, read_json, versions

# Keys that only change the test, never training (``dataset.test_split`` picks the test characters).
TEST_TIME_KEYS = ("eval", "test_inner_steps", "dataset.test_split")
# Keys a time-budgeted run may change when continued (as the trainer's resume check).
RESUME_KEYS = ("resume", "max_train_minutes")


def is_test_time(key: str) -> bool:
    """Whether the dotted config ``key`` is one of :data:`TEST_TIME_KEYS` or inside one."""
    key = key.lstrip("+~")
    return any(key == k or key.startswith(k + ".") for k in TEST_TIME_KEYS)


def training_part(config: dict) -> dict:
    """A resolved config (a plain dict) without its test-time and resume keys: what training used."""
    c = copy.deepcopy(config)
    for key in (*TEST_TIME_KEYS, *RESUME_KEYS):
        *path, last = key.split(".")
        cur = c
        for part in path:
            cur = cur.get(part) if isinstance(cur, dict) else None
        if isinstance(cur, dict):
            cur.pop(last, None)
    return c


def retest(cfg, run_dir: str | Path) -> dict:
    """Evaluate the final parameters of the run in ``run_dir`` with ``cfg``'s test settings.

    Returns ``{"kind": "retest", "run_dir", "iteration", "test", "data", "config", ...}``; raises
    :class:`ConfigError` when ``cfg`` differs from the run in anything but test-time keys, or
    when the run has no final checkpoint (it did not complete).
    """
    run_dir = Path(run_dir)
    summary = read_json(run_dir / "summary.json")
    if summary is None or summary.get("status") != "completed":
        raise ConfigError(f"{run_dir}: no completed run to test again (status "
                          f"{(summary or {}).get('status', 'missing')!r})")
    config = OmegaConf.to_container(cfg, resolve=True)
    mine, theirs = training_part(config), training_part(summary.get("config") or {})
    if mine != theirs:
        keys = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        raise ConfigError(f"{run_dir}: a retest may change only {list(TEST_TIME_KEYS)}; these differ from the "
                          f"run's config: {keys}")
    ck = load_checkpoint(run_dir / "ckpt.pt")
    if ck is None or ck.get("iteration") != summary.get("iterations_done"):
        raise ConfigError(f"{run_dir}: ckpt.pt is missing or is not the final checkpoint of the run")
    problem = build_problem(cfg)
    for k in problem.params:
        problem.params[k].copy_(ck["params"][k].to(problem.device))
    spec = eval_spec(cfg, problem)
    t0 = time.perf_counter()
    test = run_test(cfg, spec, problem.params, state_on(ck.get("inner_state"), problem.device))
    return {"schema_version": 1, "kind": "retest", "run_dir": str(run_dir), "iteration": ck["iteration"],
            "test": test, "data": datasets.record(spec.source), "eval_wall_s": time.perf_counter() - t0,
            "device": problem.device.type, "device_name": device_name(problem.device), "versions": versions(),
            "config": config}
