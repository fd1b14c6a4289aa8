"""Sections for the reviewer studies: fidelity, precision, assumptions, cost, failures, rescaling and the
deviation ladders (``reporting/deviations.py``), each from the tidy CSV(s) of the study run it names.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

import catalog

from . import deviations as _deviations
from .common import DATASET_NAMES, DATASETS, is_regression, task_words
from .render import MARKERS, TEXT, fmt, fmt_g, log_x, make_table, new_figure, save_figure

TITLES = {"fidelity": "Gradient fidelity vs inner and CG steps", "precision": "float32 vs float64",
          "assumptions": "Assumption audit", "cost": "Cost: time and memory vs inner steps",
          "failures": "Failure regimes", "rescaling": "Rescaled data (R2.2)",
          "deviations": TEXT["deviations_title"]}


def _every_key_table(name: str, rows: list[dict], cols: list, notes: list[str]):
    """A study table whose CSV keeps every key of its rows (the study's own summary rows)."""
    return make_table(name, rows, cols, notes, extra=list(rows[0]) if rows else [])


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
    chosen = []
    for k in sorted({kind(s) for s in mine}):
        same = [s for s in mine if kind(s) == k]
        chosen.append(([s for s in same if s["status"] == "completed"] or same)[-1])
    others = [s["run"] for s in mine if all(s is not c for c in chosen)]
    shown = [(s, others if i == 0 else []) for i, s in enumerate(chosen)]
    shown += [(dict(seeds[0], seeds=seeds), [])] if seeds else []
    return shown or [(None, [])]


def _grid(values) -> str:
    return "{" + ", ".join(fmt_g(v) for v in values) + "}" if isinstance(values, list) else fmt_g(values)


def ran_on(study: dict) -> str:
    """What a study ran on, from its recorded config: dataset, network, activation, λ, K grid, checkpoint."""
    if study["study"] == "deviations" and "seeds" in study:
        return (TEXT["reptile_ladder_ran_on"]
                + ", ".join(str(((s.get("config") or {}).get("seed")) or 0) for s in study["seeds"])
                + "; records: " + ", ".join(f"`{s['run']}`" for s in study["seeds"]) + ".")
    if study["study"] == "deviations":  # its config's dataset is the study default; it trains Omniglot experiments
        return TEXT[f"{_deviations.target(study)['text']}_ladder_ran_on"]
    cfg = study.get("config") or {}
    s, ds = cfg.get("study") or {}, cfg.get("dataset") or {}
    name = ds.get("name")
    if name is None:
        return "Ran on: not recorded in study.json."
    where = (f"{DATASET_NAMES.get(name, name)} regression" if is_regression(name) else
             task_words(name, ds.get("ways", cfg.get("ways")), ds.get("shots", cfg.get("shots"))))
    net = ("MLP 1-40-40-1" if DATASETS.get(name, {}).get("model") == "mlp" else
           f"conv4 ({ds.get('arch', 'maml')} layout, {ds.get('head', 'mean')} head)")
    train, trained, axes = s.get("train") or {}, s.get("trained") or {}, s.get("axes") or {}
    first = lambda *values: next((v for v in values if v is not None), None)
    grids = {"λ": first(s.get("lam"), s.get("lams"), axes.get("lam"), train.get("lam")),
             "K": first(s.get("inner_steps"), axes.get("inner_steps"), train.get("inner_steps")),
             "CG steps": s.get("cg_steps")}
    parts = [where, f"{net}, {s.get('activation', 'relu')} activation",
             *(f"{k} = {_grid(v)}" for k, v in grids.items() if v is not None), _checkpoint(s, train, trained)]
    return "Ran on: " + "; ".join(parts) + "."


def _checkpoint(s: dict, train: dict, trained: dict) -> str:
    if s.get("checkpoints") is not None:
        return f"checkpoints at iterations {_grid(s['checkpoints'])} of one {train.get('algorithm', '?')} training run"
    if s.get("theta_sources") is not None:
        algo = trained.get("algorithm") or train.get("algorithm") or "?"
        iters = trained.get("meta_iterations") or train.get("meta_iterations")
        return (f"θ = {' and '.join(s['theta_sources'])} (trained: {algo}, {fmt_g(iters)} meta-iterations, "
                f"seed {(s.get('seed') or 0)})")
    if s.get("iterations") is not None:
        return f"initial θ, {fmt_g(s['iterations'])} timed meta-iterations after {fmt_g(s.get('warmup', 0))} warm-up"
    if s.get("meta_iterations") is not None:
        return f"each grid point trained for {fmt_g(s['meta_iterations'])} meta-iterations from the initial θ"
    return "checkpoint not recorded"


def _pivot(name: str, df: pd.DataFrame, index: list[str], cell: Callable[[pd.DataFrame], str],
           value: Callable[[pd.DataFrame], float | None], notes: list[str]):
    """A compact table: one row per ``index`` group, one column per inner-step count K.
    CSV cells hold ``value`` (a number), Markdown/LaTeX cells ``cell`` (text)."""
    by = df[df["inner_steps"].notna()].groupby([*index, "inner_steps"], dropna=False, sort=True)
    text, number = by.apply(cell).unstack(fill_value="—"), by.apply(value).unstack()
    ks = [fmt_g(k) for k in text.columns]
    rows = [{**{i: None if isinstance(v, float) and np.isnan(v) else v
                for i, v in zip(index, idx if len(index) > 1 else (idx,))},
             **{f"K={k}": t for k, t in zip(ks, texts)}, **{f"inner_steps={k}": v for k, v in zip(ks, values)}}
            for idx, texts, values in zip(text.index, text.to_numpy(), number.to_numpy())]
    cols = [(i, lambda r, i=i: "—" if r[i] is None else r[i] if isinstance(r[i], str) else fmt_g(r[i]), i)
            for i in index]
    cols += [(f"K={k}", lambda r, k=k: r[f"K={k}"], f"inner_steps={k}") for k in ks]
    return make_table(name, rows, cols, notes)


def fidelity(study: dict, w) -> str:
    configs = {n: catalog.algorithm(n) for n in catalog.algorithms()}  # a method's name: its ``fidelity.row`` or its own
    methods = {a["fidelity"].get("row") or n: a for n, a in configs.items() if a["fidelity"]}
    by_cg = {m for m, a in methods.items() if a["family"] == "implicit"}  # solved by CG: a row per CG-step count
    df = study["tables"]["fidelity.csv"].copy()
    df["estimator"] = [f"{m}, CG {fmt_g(c)}" if m in by_cg else str(m) for m, c in zip(df["method"], df["cg_steps"])]
    scaled = df[~df["method"].isin([m for m, a in methods.items() if a["fidelity"].get("direction_only")])]
    out = ""
    for name, data, col, spec in (("fidelity_rel_error", scaled, "rel_error", ".2e"), ("fidelity_cosine", df, "cosine", ".4f")):
        out += w.table(_pivot(name, data, ["theta_source", "estimator"], lambda g: f"{g[col].median():{spec}}",
                              lambda g: float(g[col].median()), [TEXT[f"{name}_note"]]))
    fig, (ax1, ax2) = new_figure(2)
    cg_max = df["cg_steps"].max()
    for i, ((theta, method), g) in enumerate(df.groupby(["theta_source", "method"], sort=True)):
        if method in by_cg and not np.isnan(cg_max):
            g = g[g["cg_steps"] == cg_max]
        m = g.groupby("inner_steps")["rel_error"].median()
        suffix = f" (CG {fmt_g(cg_max)})" if method in by_cg else ""
        ax1.plot(m.index, m.values, marker=MARKERS[i % len(MARKERS)], label=f"{method}{suffix}, θ {theta}")
    implicit = df[df["method"].isin(by_cg)]
    if len(implicit):
        theta0 = sorted(implicit["theta_source"].unique())[0]
        for i, (k, g) in enumerate(implicit[implicit["theta_source"] == theta0].groupby("inner_steps", sort=True)):
            m = g.groupby("cg_steps")["rel_error"].median()
            ax2.plot(m.index, m.values, marker=MARKERS[i % len(MARKERS)], label=f"K={fmt_g(k)}")
        ax2.set_title(f"iMAML, θ {theta0}")
    for ax, xl, xs in ((ax1, "inner steps K", df["inner_steps"]), (ax2, "CG steps", implicit["cg_steps"])):
        log_x(ax, xs)
        ax.set_yscale("log")
        ax.set_xlabel(xl)
        ax.set_ylabel("relative error (median over tasks)")
        if ax.lines:
            ax.legend(fontsize=7)
    ax1.set_title("meta-gradient error vs inner steps")
    out += w.figure(save_figure(fig, w.fig_dir / "fidelity.png"), "Relative error to the exact meta-gradient")
    out += w.table(_pivot("fidelity_cost", df[df["theta_source"] == df["theta_source"].min()], ["estimator"],
                          lambda g: f"{g['hvps'].mean():.0f} / {g['grad_evals'].mean():.0f}",
                          lambda g: float(g["hvps"].mean()), [TEXT["fidelity_cost_note"]]))
    return out


def precision(study: dict, w) -> str:
    df = study["tables"]["precision.csv"]
    rows = df.groupby("inner_steps", sort=True).agg(
        tasks=("task", "nunique"), rel_diff_median=("rel_diff", "median"), rel_diff_max=("rel_diff", "max"),
        norm32_mean=("norm32", lambda s: s.mean()), norm64_mean=("norm64", lambda s: s.mean()),
        nonfinite32=("nonfinite32", lambda s: s.astype(bool).sum()),
        nonfinite64=("nonfinite64", lambda s: s.astype(bool).sum())).reset_index().to_dict("records")
    cols = [("inner steps K", lambda r: fmt_g(r["inner_steps"])), ("tasks", lambda r: str(r["tasks"])),
            ("rel. diff median", lambda r: f"{r['rel_diff_median']:.2e}"),
            ("rel. diff max", lambda r: f"{r['rel_diff_max']:.2e}"),
            ("‖g‖ float32", lambda r: fmt(r["norm32_mean"], 4)), ("‖g‖ float64", lambda r: fmt(r["norm64_mean"], 4)),
            ("non-finite tasks f32 / f64", lambda r: f"{r['nonfinite32']} / {r['nonfinite64']}")]
    out = w.table(_every_key_table("precision", rows, cols, [TEXT["precision_note"]]))
    fig, (ax,) = new_figure()
    if rows:
        ks = [r["inner_steps"] for r in rows]
        ax.plot(ks, [r["rel_diff_median"] for r in rows], marker="o", label="median")
        ax.plot(ks, [r["rel_diff_max"] for r in rows], marker="s", label="max")
        log_x(ax, ks)
        ax.set_yscale("log")
        ax.legend()
    ax.set_xlabel("inner steps K")
    ax.set_ylabel("||g32 − g64|| / ||g64||")
    ax.set_title("MAML meta-gradient: float32 vs float64")
    out += w.figure(save_figure(fig, w.fig_dir / "precision.png"), "float32 vs float64 meta-gradient difference")
    train = study["tables"].get("precision_train.csv")
    if train is not None:
        sort = [k for k in ("role", "dtype", "seed") if k in train.columns]
        trows = train.sort_values(sort, ascending=[k != "role" for k in sort], kind="stable").to_dict("records")
        tcols = [("dtype", lambda r: str(r["dtype"])), ("seed", lambda r: fmt_g(r.get("seed"))),
                 ("role", lambda r: {"paired": "paired (same seed in both precisions)",
                                     "control": "control (float32, another seed)"}.get(r.get("role"),
                                                                                      str(r.get("role", "—")))),
                 ("metric", lambda r: str(r["metric"])),
                 ("mean (± 95% CI)", lambda r: f"{fmt(r['mean'], 4)} ± {fmt(r['ci95'], 4)}"),
                 ("tasks", lambda r: fmt_g(r["n"])), ("verdict", lambda r: str(r["verdict"])),
                 ("run", lambda r: str(r.get("run_dir") or "—"))]
        out += w.table(make_table("precision_train", trows, tcols, [TEXT["precision_train_note"]],
                                  extra=list(train.columns)))
    return out


def assumptions(study: dict, w) -> str:
    """Per (checkpoint, λ): how many tasks' regularised inner objective is not strongly convex, and
    quantiles of the other audited quantities."""
    df = study["tables"]["assumptions.csv"].copy()
    df["violated"] = ~df["strongly_convex"].astype(str).str.strip().str.lower().isin(["true", "1", "1.0", "yes"])
    q90 = lambda s: s.quantile(0.9)
    rows = df.groupby(["checkpoint", "lam"], sort=True).agg(
        tasks=("task", "nunique"), pairs=("task", "size"), not_strongly_convex=("violated", "sum"),
        frac_not_strongly_convex=("violated", "mean"), eig_min_min=("eig_min", "min"),
        eig_min_median=("eig_min", "median"), eig_max_median=("eig_max", "median"),
        hess_lipschitz_median=("hess_lipschitz", "median"), inner_grad_norm_median=("inner_grad_norm", "median"),
        inner_grad_norm_q90=("inner_grad_norm", q90), cg_residual_median=("cg_residual", "median"),
        cg_residual_q90=("cg_residual", q90), query_grad_norm_median=("query_grad_norm", "median"),
    ).reset_index().to_dict("records")
    cols = [("checkpoint (iteration)", lambda r: fmt_g(r["checkpoint"])), ("λ", lambda r: fmt_g(r["lam"])),
            ("not strongly convex (tasks)", lambda r: f"{r['not_strongly_convex']} of {r['pairs']}"),
            ("λ_min min / median", lambda r: f"{r['eig_min_min']:.3g} / {r['eig_min_median']:.3g}"),
            ("λ_max median", lambda r: f"{r['eig_max_median']:.3g}"),
            ("Hessian-Lipschitz median", lambda r: f"{r['hess_lipschitz_median']:.2e}"),
            ("‖∇G(φ_K)‖ median / q90", lambda r: f"{r['inner_grad_norm_median']:.2e} / {r['inner_grad_norm_q90']:.2e}"),
            ("CG residual median / q90", lambda r: f"{r['cg_residual_median']:.2e} / {r['cg_residual_q90']:.2e}")]
    return w.table(_every_key_table(f"assumptions_{_dataset(study)}", rows, cols, [TEXT["assumptions_note"]]))


def cost(study: dict, w) -> str:
    df = study["tables"]["cost.csv"].copy()
    df["memory"] = df["gpu_peak_bytes"].where(df["gpu_peak_bytes"].notna(), df["alloc_peak_bytes"])
    ok = lambda g: g[g["status"] == "completed"]  # noqa: E731
    out = ""
    for name, col, scale, note in (("cost_time", "median_iter_s", 1000.0, TEXT["cost_time_note"]),
                                   ("cost_memory", "memory", 2.0**-20, TEXT["cost_memory_note"])):
        out += w.table(_pivot(name, df, ["algorithm", "inner_optimizer"],
                              lambda g: fmt(ok(g)[col].median(), 1, scale) if len(ok(g)) else "oom",
                              lambda g: float(ok(g)[col].median()) if len(ok(g)) else None, [note]))
    devices = ", ".join(sorted(df["device"].dropna().astype(str).unique()))
    fig, (ax1, ax2) = new_figure(2)
    for i, ((algo, opt), g) in enumerate(df.groupby(["algorithm", "inner_optimizer"], sort=True)):
        oom = sorted(g.loc[g["status"] == "oom", "inner_steps"].tolist())
        label = f"{algo} / {opt}" + (f" (oom at K={', '.join(fmt_g(k) for k in oom)})" if oom else "")
        g = g[g["status"] == "completed"].sort_values("inner_steps")
        style = {"marker": MARKERS[i % len(MARKERS)], "label": label}
        ax1.plot(g["inner_steps"], 1000 * g["median_iter_s"], **style)
        ax2.plot(g["inner_steps"], g["memory"] / 2**20, **style)
    for ax, yl in ((ax1, "ms per meta-iteration"), (ax2, "peak memory (MiB)")):
        log_x(ax, df["inner_steps"])
        ax.set_xlabel("inner steps K")
        ax.set_ylabel(yl)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.suptitle(f"Cost vs inner steps ({devices or 'device unknown'})")
    out += w.figure(save_figure(fig, w.fig_dir / "cost.png"), "Time and memory vs inner steps")
    return out


def failures(study: dict, w) -> str:
    df = study["tables"]["failures.csv"]
    span = lambda v: "—" if v.dropna().empty else fmt_g(v.min()) if v.min() == v.max() else \
        f"{fmt_g(v.min())}–{fmt_g(v.max())}"
    t = df.groupby(["algorithm", "status"], sort=True).agg(
        configs=("status", "size"), **{col: (col, span) for col in ("lam", "inner_steps", "cg_steps", "inner_lr")})
    t.insert(1, "of", t.index.get_level_values("algorithm").map(df["algorithm"].value_counts()))
    rows = t.reset_index().to_dict("records")
    cols = [("algorithm", lambda r: str(r["algorithm"])), ("status", lambda r: str(r["status"])),
            ("grid points", lambda r: f"{r['configs']} of {r['of']}"), ("λ", lambda r: r["lam"]),
            ("inner steps", lambda r: r["inner_steps"]), ("CG steps", lambda r: r["cg_steps"]),
            ("inner lr", lambda r: r["inner_lr"])]
    return w.table(_every_key_table("failures", rows, cols, [TEXT["failures_note"]]))


def rescaling(study: dict, w) -> str:
    """Per target scale: float32's error in MAML's meta-gradient at the largest K, and how the
    protocol that diverged fared trained on the rescaled targets (MSE in the original units)."""
    grads = study["tables"]["rescaling.csv"]
    train = study["tables"].get("rescaling_train.csv", pd.DataFrame(
        columns=["scale", "status", "meta_iterations", "experiment", "test_mse", "iterations_done"]))
    rows = []
    for scale, g in grads.groupby("scale", sort=True):
        k, t = g["inner_steps"].max(), train[train["scale"] == scale]
        done = t[t["status"] == "completed"]
        rows.append({"scale": scale, "inner_steps": int(k), "rel_diff_median": g[g["inner_steps"] == k]["rel_diff"].median(),
                     "nonfinite32": int(g["nonfinite32"].astype(str).str.lower().eq("true").sum()),
                     "seeds": len(t), "diverged": int((t["status"] == "diverged").sum()),
                     "iterations": int(t["meta_iterations"].max()) if len(t) else None,
                     "experiment": str(t["experiment"].iloc[0]) if len(t) else "—",
                     "test_mse_mean": float(done["test_mse"].mean()) if len(done) else None,
                     "diverged_at": ", ".join(str(int(i)) for i in t.loc[t["status"] == "diverged", "iterations_done"])})
    cols = [("target scale", lambda r: fmt_g(r["scale"])),
            ("f32 vs f64 rel. diff (median, K)", lambda r: f"{r['rel_diff_median']:.2e} (K={r['inner_steps']})"),
            ("non-finite f32 gradients", lambda r: str(r["nonfinite32"])),
            ("training runs diverged", lambda r: f"{r['diverged']} of {r['seeds']}"
             + (f" (at {r['diverged_at']})" if r["diverged_at"] else "")),
            ("test MSE, original units (completed runs)", lambda r: fmt(r["test_mse_mean"], 3)),
            ("protocol, iterations", lambda r: f"`{r['experiment']}`, {fmt_g(r['iterations'])}")]
    return w.table(_every_key_table("rescaling", rows, cols, [TEXT["rescaling_note"]]))


SECTIONS = {"fidelity": fidelity, "precision": precision, "assumptions": assumptions, "cost": cost,
            "failures": failures, "rescaling": rescaling, "deviations": _deviations.section}
