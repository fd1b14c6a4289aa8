"""The benchmark harness at a tiny scale: ``python -m bench`` must produce a
well-formed BENCHMARKS.md section and JSON record from real measurements. Times are never
asserted; what is checked is structure, consistency between the record and the tables,
the equal-gradient check against learn2learn (an exact oracle: same weights, same tasks),
and the memory behaviour that follows from the estimators' definitions (MAML's memory
grows with K; iMAML's does not).
"""
from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

from atomic import atomic_write_json  # noqa: E402
from bench import main as bench_main  # noqa: E402
from bench.measure import Timing, time_runner  # noqa: E402
from bench.render import write_section  # noqa: E402
from bench.run import _predict  # noqa: E402

pytest.importorskip("learn2learn")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One real harness run: Omniglot-shaped synthetic tasks (an empty data root) and the sinusoid."""
    tmp = tmp_path_factory.mktemp("bench")
    out = tmp / "BENCHMARKS.md"
    out.write_text("# Benchmarks\n\nHand-written time-to-accuracy section.\n")
    args = ["--workloads", "omniglot-5w1s,sinusoid", "--ks", "1,2", "--algorithms", "maml,fomaml,imaml",
            "--repeats", "2", "--meta-batch", "2", "--mem-ks", "2,4", "--mem-tasks", "1", "--no-compile", "--min-time-s", "0.05",
            "--data-root", str(tmp / "no-data"), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KINETO_LOG_LEVEL": "4"}
    p = subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT, capture_output=True, text=True, env=env,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    return args, out, json.loads(out.with_suffix(".json").read_text()), out.read_text()


def _table_rows(md: str, header_start: str) -> list[list[str]]:
    lines = md.splitlines()
    i = next(n for n, ln in enumerate(lines) if ln.startswith(header_start))
    rows = []
    for ln in lines[i + 2:]:
        if not ln.startswith("|"):
            break
        rows.append([c.strip() for c in ln.strip("|").split("|")])
    return rows


def test_report_names_machine_command_and_keeps_other_sections(tiny_run):
    args, out, rec, md = tiny_run
    assert "Hand-written time-to-accuracy section." in md  # text outside the harness's section survives
    assert md.count("<!-- bench:begin -->") == 1 and md.count("<!-- bench:end -->") == 1
    assert f"`python -m bench {' '.join(args)}`" in md  # the exact command
    m = rec["machine"]
    assert m["cores"] >= 1 and m["threads"] == 1 and m["torch"] and m["cpu_model"]
    assert f"{m['cores']} cores" in md and f"torch {m['torch']}" in md and "1 intra-op threads" in md
    # no data under the data root: Omniglot ran on synthetic tensors and the report says so
    assert rec["workloads"]["omniglot-5w1s"]["origin"].startswith("synthetic")
    assert "synthetic tensors" in md
    assert rec["workloads"]["sinusoid"]["origin"].startswith("real")


def test_every_cell_is_a_real_measurement_and_the_table_matches_the_record(tiny_run):
    _, _, rec, md = tiny_run
    for key, w in rec["workloads"].items():
        assert len(w["sampling_s"]) >= 2 and all(s > 0 for s in w["sampling_s"])
        for c in w["cells"]:
            assert c["status"] == "ok", c
            assert c["timed_iterations"] == len(c["wall_s"]) == len(c["cpu_s"]) >= 2  # more for fast cells (--min-time-s)
            assert all(x > 0 for x in c["wall_s"]) and all(x >= 0 for x in c["cpu_s"])
            assert c["median_wall_s"] == statistics.median(c["wall_s"])
        # every K × algorithm, and the peer, has a row
        ours = {(c["algorithm"], c["K"]) for c in w["cells"] if c["side"] == "ours"}
        assert ours >= {(a, k) for a in ("maml", "fomaml", "imaml") for k in (1, 2)}
        assert {(c["algorithm"], c["K"]) for c in w["cells"] if c["side"] == "peer"} == {("maml", 1), ("maml", 2)}
    rows = _table_rows(md, "| K | algorithm | batching | s / iter (wall)")  # the Omniglot table comes first
    w = rec["workloads"]["omniglot-5w1s"]
    peer = {c["K"]: c for c in w["cells"] if c["side"] == "peer"}
    primary = {(c["algorithm"], c["K"]): c for c in w["cells"] if c["side"] == "ours" and c["batching"] == w["batching"]}
    assert len(rows) == 2 * 4
    for k_txt, algo, batching, wall, cpu, ratio_w, ratio_c, n in rows:
        k = int(k_txt)
        if algo.startswith("**"):
            continue
        c = primary[(algo, k)]
        assert batching == c["batching"] == "vmap"
        assert float(wall) == pytest.approx(c["median_wall_s"], abs=6e-4)
        assert float(ratio_w.rstrip("×")) == pytest.approx(c["median_wall_s"] / peer[k]["median_wall_s"], abs=6e-3)


def test_maml_meta_gradient_equals_learn2learns_on_the_same_task_and_weights(tiny_run):
    _, _, rec, md = tiny_run
    for key in ("omniglot-5w1s", "sinusoid"):
        checks = rec["workloads"][key]["grad_check"]
        assert set(checks) == {"1", "2"}
        assert all(v < 1e-10 for v in checks.values()), checks  # float64: equal up to rounding
    assert "MAML meta-gradient of the first task, in float64" in md


def test_maml_on_a_torch_nn_module_matches_learn2learn_and_is_timed_beside_it(tiny_run):
    """The library called on a user's torch.nn module (functional_call) gives learn2learn's
    meta-gradient on that module in float64, and its cells sit beside the peer's in the report."""
    _, _, rec, md = tiny_run
    w = rec["workloads"]["omniglot-5w1s"]
    assert set(w["module_check"]) == {"1", "2"}
    assert all(v < 1e-10 for v in w["module_check"].values()), w["module_check"]
    cells = {c["K"]: c for c in w["cells"] if c["side"] == "module"}
    assert set(cells) == {1, 2} and all(c["status"] == "ok" and c["median_wall_s"] > 0 for c in cells.values())
    rows = _table_rows(md, "| workload | K | s / iter (wall)")
    assert [int(r[1]) for r in rows] == [1, 2]
    assert all(r[2] == f"{cells[int(r[1])]['median_wall_s']:.3f}" for r in rows)
    assert "MAML on a torch.nn module (functional_call, per-task loop)" in md


def test_memory_table_maml_grows_with_k_imaml_and_fomaml_stay_flat(tiny_run):
    _, _, rec, md = tiny_run
    rows = {(r["algorithm"], r["side"], r["K"]): r["peak_bytes"] for r in rec["workloads"]["omniglot-5w1s"]["memory"]["rows"]}
    assert rows[("maml", "ours", 4)] > 1.3 * rows[("maml", "ours", 2)]
    assert rows[("maml", "peer", 4)] > 1.2 * rows[("maml", "peer", 2)]
    for a in ("imaml", "fomaml"):
        assert rows[(a, "ours", 4)] <= 1.05 * rows[(a, "ours", 2)], a
    assert re.search(r"\| imaml \| vmap \| [\d.]+ \| [\d.]+ \| 1\.0\d×", md)
    assert "### Targets" in md and "| sinusoid: vmap ≥ 10× the per-task loop, MAML" in md
    # sinusoid loop-vs-vmap table: every vmap-able estimator at every K
    loop_rows = [r for r in _table_rows(md, "| workload | algorithm | K | loop s / iter") if r[0].startswith("Sinusoid")]
    assert {(r[1], int(r[2])) for r in loop_rows} == {(a, k) for a in ("maml", "fomaml", "imaml") for k in (1, 2)}


def test_time_runner_skips_predicted_slow_cells_and_reports_warmup_only():
    def never():
        raise AssertionError("a skipped cell must not even be built")
    t = time_runner(never, [None], _cpu(), warmup=1, repeats=3, max_iter_s=10, cell_budget_s=10, predicted_s=11)
    assert t.status == "skipped" and "predicted 11 s/iter" in t.note and t.wall == []
    calls = []
    t = time_runner(lambda: calls.append, [1, 2, 3], _cpu(), warmup=1, repeats=3, max_iter_s=1e-12,
                    cell_budget_s=10)
    assert t.status == "warmup-only" and calls == [1] and t.wall_s == t.warmup_s
    calls.clear()
    t = time_runner(lambda: calls.append, [1, 2, 3], _cpu(), warmup=1, repeats=3, max_iter_s=10, cell_budget_s=1e-12)
    assert t.status == "ok" and calls == [1, 2] and len(t.wall) == 1 and "cell_budget_s" in t.note


def test_fast_cells_get_more_warm_up_and_timed_iterations(monkeypatch):
    """A fake clock (powers of two, so that sums are exact): the first call pays a one-off cost,
    as a cold call does."""
    import bench.measure as measure
    calls, per_call = [], {"first": 2.0 ** -11, "then": 2.0 ** -16}

    def fake_timed(step, tasks, device):
        step(tasks)
        return (per_call["first"] if len(calls) == 1 else per_call["then"]), 0.0
    monkeypatch.setattr(measure, "_timed", fake_timed)
    t = time_runner(lambda: calls.append, [1, 2, 3], _cpu(), warmup=1, repeats=3, max_iter_s=10, cell_budget_s=10)
    assert len(t.wall) == 3 and len(calls) == 4                       # min_time_s=0: as asked
    calls.clear()
    t = time_runner(lambda: calls.append, [1, 2, 3], _cpu(), warmup=1, repeats=3, max_iter_s=10, cell_budget_s=10,
                    min_time_s=0.01)
    extra = len(calls) - 1 - len(t.wall)
    # warmed up for 0.005 s of steady calls (100 at most), then timed for 0.01 s: 200 at most
    assert extra == 100 and len(t.wall) == 200 and t.status == "ok" and t.note == ""
    per_call["then"] = 2.0 ** -12
    calls.clear()
    t = time_runner(lambda: calls.append, [1, 2, 3], _cpu(), warmup=1, repeats=3, max_iter_s=10, cell_budget_s=10,
                    min_time_s=0.01)
    assert len(calls) - 1 - len(t.wall) == 21 and len(t.wall) == 40   # the steady time decides, not the cold call
    per_call["first"] = per_call["then"] = 0.02
    calls.clear()
    slow = time_runner(lambda: calls.append, [1], _cpu(), warmup=1, repeats=3, max_iter_s=10, cell_budget_s=10,
                       min_time_s=0.01)
    assert len(slow.wall) == 3                                         # not a fast cell: unchanged


def test_prediction_is_linear_in_k_from_the_largest_smaller_k():
    done = {("maml", "ours", "vmap"): [(1, 0.5), (5, 2.0)]}
    assert _predict(done, ("maml", "ours", "vmap"), 16) == pytest.approx(2.0 * 16 / 5)
    assert _predict(done, ("maml", "ours", "vmap"), 1) is None
    assert _predict({}, ("x",), 5) is None


def test_write_section_replaces_only_its_own_block(tmp_path):
    f = tmp_path / "B.md"
    write_section(f, "bench", "first")
    write_section(f, "gpu-check", "gpu table")
    write_section(f, "bench", "second")
    text = f.read_text()
    assert text.count("<!-- bench:begin -->") == 1 and "second" in text and "first" not in text
    assert "gpu table" in text and text.index("gpu table") > text.index("second") - 100
    assert not list(tmp_path.glob(".*tmp*"))  # the temp file was renamed away


@pytest.mark.parametrize("argv,needle", [(["--ks", "a,b"], "--ks"), (["--workloads", "imagenet"], "imagenet"),
                                         (["--repeats", "0"], "--repeats=0 must be >= 1"),
                                         (["--mem-ks", "5"], "--mem-ks")])
def test_bad_options_exit_with_one_clear_line(argv, needle, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        bench_main([*argv, "--out", str(tmp_path / "B.md")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert needle in err
    assert not (tmp_path / "B.md").exists()


def _cpu():
    import torch
    return torch.device("cpu")


def test_timing_record_fields():
    t = Timing(wall=[3.0, 1.0, 2.0], cpu=[1.0, 1.0, 1.0])
    r = t.record()
    assert r["median_wall_s"] == 2.0 and r["timed_iterations"] == 3


@pytest.mark.slow
def test_gpu_check_code_path_runs_on_the_cpu(tmp_path):
    """``make gpu-check`` needs a GPU; its ``--device cpu --tiny`` smoke run exercises every stage
    (training subprocesses, the Fig. 2 cost sweep, the harness) so a GPU session finds no bug."""
    report = tmp_path / "BENCHMARKS.md"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KINETO_LOG_LEVEL": "4"}
    p = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--device", "cpu", "--tiny", "--out-dir",
                        str(tmp_path / "out"), "--report", str(report)], cwd=ROOT, capture_output=True, text=True,
                       env=env, timeout=900)
    assert p.returncode == 0, p.stderr[-2000:]
    rec = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert [r["algorithm"] for r in rec["train"]] == ["maml", "fomaml", "reptile", "imaml", "imaml_hf"]
    assert all(r["status"] == "completed" for r in rec["train"]), rec["train"]
    cost = {(r["algorithm"], r["K"]): r for r in rec["cost"]}
    assert cost[("maml", 2)]["peak_bytes"] > cost[("maml", 1)]["peak_bytes"]
    assert cost[("imaml", 2)]["peak_bytes"] <= 1.05 * cost[("imaml", 1)]["peak_bytes"]
    text = report.read_text()
    assert "<!-- gpu-check:begin -->" in text and "CPU smoke run" in text and "### Short training" in text


def test_time_to_accuracy_section_from_records(tmp_path, monkeypatch):
    """bench.tta render=true: the table and the first-crossing minutes come from the records."""
    from bench import tta

    monkeypatch.setattr(tta, "RECORDS", tmp_path / "records")
    monkeypatch.setattr(tta, "FIGURE", tmp_path / "figures" / "tta.png")

    def seg(m, wall, it, acc):
        summary = {"label": "MAML", "versions": {"torch": "x"}, "data": {"archive_sha256": {"a.zip": "f" * 64}}}
        return {"max_train_minutes": m, "train_wall_s": wall, "iterations": it, "test_mean": acc, "test_ci95": 0.01,
                "test_tasks": 600, "eval_wall_s": 5.0, "segment_wall_s": wall, "summary": summary}
    record = {"algorithm": "maml", "command": "python -m bench.tta algorithm=maml", "run_dir": str(tmp_path / "run"),
              "machine": {"cpu": "x", "cores": 2, "threads": 1, "load_average_start": 1.0}, "load_average_end": 1.0,
              "overrides": ["experiment=omniglot_5w_maml"],
              "segments": [seg(5, 301.0, 1000, 0.93), seg(10, 602.5, 2000, 0.955), seg(20, 1201.0, 4000, 0.971)]}
    atomic_write_json(tta.RECORDS / "maml.json", record)
    text = tta.render()
    assert "| `maml` MAML | 93.00 ± 1.00% (1000 it) | 95.50 ± 1.00% (2000 it) | 97.10 ± 1.00% (4000 it) |" in text
    assert "| `maml` MAML | 10.0 min (2000 it) | 20.0 min (4000 it) | 97.10 ± 1.00% after 20.0 min |" in text
    assert (tmp_path / "figures" / "tta.png").stat().st_size > 0
    doc = tta.splice("# Benchmarks\n\nkeep me\n", text)
    again = tta.splice(doc.replace("97.10", "00.00"), text)
    assert again == doc and doc.count(tta.BEGIN) == 1 and "keep me" in doc


def test_time_to_accuracy_refuses_bad_input(tmp_path, monkeypatch):
    from bench import tta

    monkeypatch.setattr(tta, "RECORDS", tmp_path / "records")
    for argv in (["algorithm=maml", "name=absent", "continue=true"], ["algorithm=maml", "minutes=[10,5]"],
                 ["algorithm=nosuch"], ["--algorithm", "maml"], ["maml"]):
        with pytest.raises(SystemExit) as e:
            tta.main(argv)
        assert e.value.code == 2, argv
    (tmp_path / "x").write_text("")
    with pytest.raises(SystemExit):
        tta.main(["algorithm=maml", f"run_dir={tmp_path}"])


def test_time_to_accuracy_splits_its_own_keys_from_the_train_overrides():
    from bench import tta

    opts, extra = tta.parse(["algorithm=imaml_release_algo", "name=imaml-release", "threads=1", "minutes=[5,10]",
                             "algorithm.hparams.lam=0.1", "batching=compile"])
    assert (opts["algorithm"], opts["name"], opts["threads"], opts["minutes"]) == (
        "imaml_release_algo", "imaml-release", 1, [5.0, 10.0])
    assert extra == ["algorithm.hparams.lam=0.1", "batching=compile"] and not opts["render"]


def test_compile_section_shows_the_compiled_and_the_vmap_float32_differences(tiny_run):
    """The compile section (not timed in the tiny run: compiling takes minutes) renders a
    compiled cell and both float32 differences from the record."""
    import copy

    from bench.render import compile_table
    rec = copy.deepcopy(tiny_run[2]["workloads"]["omniglot-5w1s"])
    cell = next(c for c in rec["cells"] if (c["algorithm"], c["side"], c["K"]) == ("maml", "ours", 1))
    rec["cells"].append({**cell, "batching": "loop+compile", "first_s": 12.5})
    rec["compile_check"] = {"1": {"compile_vs_loop": 2.5e-6, "vmap_vs_loop": 3.3e-2}}
    text = "\n".join(compile_table({"omniglot-5w1s": rec}))
    assert "K=1: compiled 2.5e-06, eager vmap 3.3e-02" in text
    assert "| maml | 1 | 12.5 |" in text


def test_the_tta_plan_names_valid_runs():
    """make bench-tta's runs (configs/bench_tta.yaml) parse as bench.tta arguments, each with an Omniglot
    5w1s experiment of its algorithm and a distinct name; an algorithm without one is one clear error."""
    from bench import tta

    names = [r["name"] for r in tta.plan()]
    assert len(set(names)) == len(names) >= 2
    for r in tta.plan():
        opts, _ = tta.parse([f"name={r['name']}", *r["args"]])
        assert (tta.ROOT / "configs" / "experiment" / f"omniglot_5w_{opts['algorithm']}.yaml").is_file()
    with pytest.raises(SystemExit):
        tta.parse(["algorithm=nosuch"])
