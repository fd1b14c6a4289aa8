"""Sections for the reviewer studies: fidelity, precision, assumptions, cost, failures, rescaling and the
deviation ladders (``reporting/deviations.py``), each from the tidy CSV(s) of the study run it names.
"""
from __future__ import annotations

from collections.abc import Callable

import pandas as pd

import catalog

from . import deviations as _deviations
from .common import DATASET_NAMES, DATASETS, is_regression, task_words
from .render import TEXT, fmt, fmt_g, is_missing, make_table

TITLES = {"fidelity": "Gradient fidelity vs inner and CG steps", "precision": "float32 vs float64",
          "assumptions": "Assumption audit", "cost": "Cost: time and memory vs inner steps",
          "failures": "Failure regimes", "rescaling": "Rescaled data (R2.2)",
          "deviations": TEXT["deviations_title"]}


def _summary_table(name: str, frame: pd.DataFrame, cols: list, note: str):
    """A study's summary table (one row per group of ``frame``) whose CSV keeps every column of ``frame``."""
    t = make_table(name, (rows := frame.reset_index()).to_dict("records"), cols, [TEXT[note]])
    t.raw = rows  # the CSV: every column, in the frame's order
    return t


def spec_column(header: str, spec: str, *keys: str) -> tuple:
    """A column showing ``keys`` formatted with ``spec`` ('—' where missing), joined by ' / '."""
    return (header, lambda r: " / ".join("—" if is_missing(r[k]) else format(r[k], spec) for k in keys), *keys)


def _dataset(study: dict) -> str:
    return str(((study.get("config") or {}).get("dataset") or {}).get("name") or "unknown")


def picks(studies: list[dict], name: str) -> list[tuple[dict | None, list[str]]]:
    """The runs of a study the report shows — per kind (its dataset; a ladder's target and budget) the latest
    completed one, else the latest — the first with the folders of the runs it does not show. The Reptile
    ladder, one study folder per seed, is shown as one run holding all of them (``seeds``)."""
    apart = lambda s: name == "deviations" and bool(_deviations.target(s).get("seeds_apart"))
    seeds = [s for s in studies if s["study"] == name and apart(s)]
    mine = [s for s in studies if s["study"] == name and not apart(s)]
    kind = ((lambda s: (list(_deviations.LADDERS).index(_deviations.target(s)["experiment"]), _deviations.is_long(s)))
            if name == "deviations" else lambda s: (not is_regression(_dataset(s)), _dataset(s)))
    chosen = [([s for s in same if s["status"] == "completed"] or same)[-1]
              for k in sorted({kind(s) for s in mine}) if (same := [s for s in mine if kind(s) == k])]
    others = [s["run"] for s in mine if all(s is not c for c in chosen)]
    shown = [(s, others if i == 0 else []) for i, s in enumerate(chosen)]
    shown += [(dict(seeds[0], seeds=seeds), [])] if seeds else []
    return shown or [(None, [])]


def _grid(values) -> str:
    text = lambda v: v if isinstance(v, str) else fmt_g(v)
    return "{" + ", ".join(map(text, values)) + "}" if isinstance(values, list) else text(values)


# The recorded config fields ``ran_on`` names (the study's, its grid axes', its θ-training run's), in this order.
RAN_ON = {"scales": "target scale", "lam": "λ", "lams": "λ", "inner_steps": "K", "cg_steps": "CG steps",
          "inner_lr": "inner lr", "theta_sources": "θ", "checkpoints": "checkpoint iterations",
          "iterations": "timed meta-iterations", "warmup": "warm-up iterations", "algorithm": "training algorithm",
          "experiment": "training experiment", "meta_iterations": "training meta-iterations", "seeds": "training seeds"}


def ran_on(study: dict) -> str:
    """What a study ran on: its dataset and network, then the recorded fields of ``RAN_ON``."""
    if study["study"] == "deviations" and "seeds" in study:
        return (TEXT["reptile_ladder_ran_on"]
                + ", ".join(str(((s.get("config") or {}).get("seed")) or 0) for s in study["seeds"])
                + "; records: " + ", ".join(f"`{s['run']}`" for s in study["seeds"]) + ".")
    if study["study"] == "deviations":  # its config's dataset is the study default; it trains Omniglot experiments
        return TEXT[f"{_deviations.target(study)['text']}_ladder_ran_on"]
    cfg = study.get("config") or {}
    s, ds = cfg.get("study") or {}, cfg.get("dataset") or {}
    if (name := ds.get("name")) is None:
        return "Ran on: not recorded in study.json."
    where = (f"{DATASET_NAMES.get(name, name)} regression" if is_regression(name) else
             task_words(name, ds.get("ways", cfg.get("ways")), ds.get("shots", cfg.get("shots"))))
    net = ("MLP 1-40-40-1" if DATASETS.get(name, {}).get("model") == "mlp" else
           f"conv4 ({ds.get('arch', 'maml')} layout, {ds.get('head', 'mean')} head)")
    fields = {**(s.get("trained") or s.get("train") or {}), **(s.get("axes") or {}), **s}
    recorded = [f"{w} = {_grid(fields[k])}" for k, w in RAN_ON.items() if fields.get(k) is not None]
    return "Ran on: " + "; ".join([where, f"{net}, {s.get('activation', 'relu')} activation", *recorded]) + "."


def _pivot(name: str, df: pd.DataFrame, index: list[str], cell: Callable[[pd.DataFrame], str],
           value: Callable[[pd.DataFrame], float | None], notes: list[str]):
    """A compact table: one row per ``index`` group, one column per inner-step count K.
    CSV cells hold ``value`` (a number), Markdown/LaTeX cells ``cell`` (text)."""
    by = df[df["inner_steps"].notna()].groupby([*index, "inner_steps"], dropna=False, sort=True)
    text, number = by.apply(cell).unstack(fill_value="—"), by.apply(value).unstack()
    ks = [fmt_g(k) for k in text.columns]
    frame = text.set_axis([f"K={k}" for k in ks], axis=1).join(
        number.set_axis([f"inner_steps={k}" for k in ks], axis=1))
    cols = [(i, lambda r, i=i: r[i] if isinstance(r[i], str) else fmt_g(r[i]), i) for i in index]
    cols += [(f"K={k}", lambda r, k=k: r[f"K={k}"], f"inner_steps={k}") for k in ks]
    return make_table(name, frame.reset_index().astype(object).to_dict("records"), cols, notes)


def fidelity(study: dict, w) -> str:
    configs = {n: catalog.algorithm(n) for n in catalog.algorithms()}
    methods = {a["fidelity"].get("row") or n: a for n, a in configs.items() if a["fidelity"]}  # by fidelity.csv's name
    by_cg = {m for m, a in methods.items() if a["family"] == "implicit"}  # solved by CG: a row per CG-step count
    df = study["tables"]["fidelity.csv"].copy()
    df["estimator"] = [f"{m}, CG {fmt_g(c)}" if m in by_cg else str(m) for m, c in zip(df["method"], df["cg_steps"])]
    scaled = df[~df["method"].isin([m for m, a in methods.items() if a["fidelity"].get("direction_only")])]
    out = ""
    for name, data, col, spec in (("fidelity_rel_error", scaled, "rel_error", ".2e"),
                                  ("fidelity_cosine", df, "cosine", ".4f")):
        out += w.table(_pivot(name, data, ["theta_source", "estimator"], lambda g: f"{g[col].median():{spec}}",
                              lambda g: float(g[col].median()), [TEXT[f"{name}_note"]]))
    return out + w.table(_pivot("fidelity_cost", df[df["theta_source"] == df["theta_source"].min()], ["estimator"],
                                lambda g: f"{g['hvps'].mean():.0f} / {g['grad_evals'].mean():.0f}",
                                lambda g: float(g["hvps"].mean()), [TEXT["fidelity_cost_note"]]))


def precision(study: dict, w) -> str:
    """The meta-gradient's float32 error per K, then the short training runs in both precisions."""
    df = study["tables"]["precision.csv"].astype({"nonfinite32": bool, "nonfinite64": bool})
    t = df.groupby("inner_steps", sort=True).agg(
        tasks=("task", "nunique"), rel_diff_median=("rel_diff", "median"), rel_diff_max=("rel_diff", "max"),
        norm32_mean=("norm32", "mean"), norm64_mean=("norm64", "mean"), nonfinite32=("nonfinite32", "sum"),
        nonfinite64=("nonfinite64", "sum"))
    cols = [("inner steps K", lambda r: fmt_g(r["inner_steps"])), ("tasks", "tasks"),
            spec_column("rel. diff median", ".2e", "rel_diff_median"),
            spec_column("rel. diff max", ".2e", "rel_diff_max"), spec_column("‖g‖ float32", ".4f", "norm32_mean"),
            spec_column("‖g‖ float64", ".4f", "norm64_mean"),
            spec_column("non-finite tasks f32 / f64", "d", "nonfinite32", "nonfinite64")]
    out = w.table(_summary_table("precision", t, cols, "precision_note"))
    train = study["tables"].get("precision_train.csv")
    if train is None:
        return out
    sort = [k for k in ("role", "dtype", "seed") if k in train.columns]
    trows = train.sort_values(sort, ascending=[k != "role" for k in sort], kind="stable").to_dict("records")
    tcols = [("dtype", lambda r: str(r["dtype"])), ("seed", lambda r: fmt_g(r.get("seed"))),
             ("role", lambda r: str(r.get("role", "—"))), ("metric", lambda r: str(r["metric"])),
             ("mean (± 95% CI)", lambda r: f"{fmt(r['mean'], 4)} ± {fmt(r['ci95'], 4)}"),
             ("tasks", lambda r: fmt_g(r["n"])), ("verdict", lambda r: str(r["verdict"])),
             ("run", lambda r: str(r.get("run_dir") or "—"))]
    return out + w.table(make_table("precision_train", trows, tcols, [TEXT["precision_train_note"]],
                                    extra=list(train.columns)))


def assumptions(study: dict, w) -> str:
    """Per (checkpoint, λ): the tasks whose inner objective is not strongly convex, quantiles of the rest."""
    df = study["tables"]["assumptions.csv"].copy()
    df["violated"] = ~df["strongly_convex"].astype(str).str.strip().str.lower().isin(["true", "1", "1.0", "yes"])
    q90 = lambda s: s.quantile(0.9)
    t = df.groupby(["checkpoint", "lam"], sort=True).agg(
        tasks=("task", "nunique"), pairs=("task", "size"), not_strongly_convex=("violated", "sum"),
        frac_not_strongly_convex=("violated", "mean"), eig_min_min=("eig_min", "min"),
        eig_min_median=("eig_min", "median"), eig_max_median=("eig_max", "median"),
        hess_lipschitz_median=("hess_lipschitz", "median"), inner_grad_norm_median=("inner_grad_norm", "median"),
        inner_grad_norm_q90=("inner_grad_norm", q90), cg_residual_median=("cg_residual", "median"),
        cg_residual_q90=("cg_residual", q90), query_grad_norm_median=("query_grad_norm", "median"))
    cols = [("checkpoint (iteration)", lambda r: fmt_g(r["checkpoint"])), ("λ", lambda r: fmt_g(r["lam"])),
            ("not strongly convex (tasks)", lambda r: f"{r['not_strongly_convex']} of {r['pairs']}"),
            spec_column("λ_min min / median", ".3g", "eig_min_min", "eig_min_median"),
            spec_column("λ_max median", ".3g", "eig_max_median"),
            spec_column("Hessian-Lipschitz median", ".2e", "hess_lipschitz_median"),
            spec_column("‖∇G(φ_K)‖ median / q90", ".2e", "inner_grad_norm_median", "inner_grad_norm_q90"),
            spec_column("CG residual median / q90", ".2e", "cg_residual_median", "cg_residual_q90")]
    return w.table(_summary_table(f"assumptions_{_dataset(study)}", t, cols, "assumptions_note"))


def cost(study: dict, w) -> str:
    df = study["tables"]["cost.csv"].copy()
    df["memory"] = df["gpu_peak_bytes"].where(df["gpu_peak_bytes"].notna(), df["alloc_peak_bytes"])
    ok = lambda g: g[g["status"] == "completed"]  # noqa: E731
    out = ""
    for name, col, scale in (("cost_time", "median_iter_s", 1000.0), ("cost_memory", "memory", 2.0**-20)):
        out += w.table(_pivot(name, df, ["algorithm", "inner_optimizer"],
                              lambda g: fmt(ok(g)[col].median(), 1, scale) if len(ok(g)) else "oom",
                              lambda g: float(ok(g)[col].median()) if len(ok(g)) else None, [TEXT[f"{name}_note"]]))
    return out


def failures(study: dict, w) -> str:
    df = study["tables"]["failures.csv"]
    span = lambda v: "—" if v.dropna().empty else fmt_g(v.min()) if v.min() == v.max() else \
        f"{fmt_g(v.min())}–{fmt_g(v.max())}"
    t = df.groupby(["algorithm", "status"], sort=True).agg(
        configs=("status", "size"), **{col: (col, span) for col in ("lam", "inner_steps", "cg_steps", "inner_lr")})
    t.insert(1, "of", t.index.get_level_values("algorithm").map(df["algorithm"].value_counts()))
    cols = [("algorithm", "algorithm"), ("status", "status"), ("grid points", lambda r: f"{r['configs']} of {r['of']}"),
            ("λ", "lam"), ("inner steps", "inner_steps"), ("CG steps", "cg_steps"), ("inner lr", "inner_lr")]
    return w.table(_summary_table("failures", t, cols, "failures_note"))


def rescaling(study: dict, w) -> str:
    """Per target scale: float32's error in MAML's meta-gradient at the largest K, and the diverging protocol
    trained on the rescaled targets (MSE in the original units)."""
    grads = study["tables"]["rescaling.csv"]
    top = grads[grads["inner_steps"] == grads.groupby("scale")["inner_steps"].transform("max")]
    t = top.groupby("scale", sort=True).agg(inner_steps=("inner_steps", "max"), rel_diff_median=("rel_diff", "median"))
    t["nonfinite32"] = grads["nonfinite32"].astype(str).str.lower().eq("true").groupby(grads["scale"]).sum()
    train = study["tables"].get("rescaling_train.csv", pd.DataFrame(
        columns=["scale", "status", "meta_iterations", "experiment", "test_mse", "iterations_done"]))
    diverged = train["status"] == "diverged"
    t = t.join(train.assign(diverged=diverged, done_mse=train["test_mse"].where(train["status"] == "completed"),
                            at=train["iterations_done"].where(diverged)).groupby("scale").agg(
        seeds=("status", "size"), diverged=("diverged", "sum"), iterations=("meta_iterations", "max"),
        experiment=("experiment", "first"), test_mse_mean=("done_mse", "mean"),
        diverged_at=("at", lambda s: ", ".join(str(int(i)) for i in s.dropna())))).fillna(
        {"seeds": 0, "diverged": 0, "experiment": "—", "diverged_at": ""})
    cols = [("target scale", lambda r: fmt_g(r["scale"])),
            ("f32 vs f64 rel. diff (median, K)", lambda r: f"{r['rel_diff_median']:.2e} (K={fmt_g(r['inner_steps'])})"),
            ("non-finite f32 gradients", lambda r: fmt_g(r["nonfinite32"])),
            ("training runs diverged", lambda r: f"{fmt_g(r['diverged'])} of {fmt_g(r['seeds'])}"
             + (f" (at {r['diverged_at']})" if r["diverged_at"] else "")),
            ("test MSE, original units (completed runs)", lambda r: fmt(r["test_mse_mean"], 3)),
            ("protocol, iterations", lambda r: f"`{r['experiment']}`, {fmt_g(r['iterations'])}")]
    return w.table(_summary_table("rescaling", t, cols, "rescaling_note"))


SECTIONS = {"fidelity": fidelity, "precision": precision, "assumptions": assumptions, "cost": cost,
            "failures": failures, "rescaling": rescaling, "deviations": _deviations.section}
