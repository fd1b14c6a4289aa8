"""The report's Findings: one sentence per declared rule, each computed from the records and
linking to the table it rests on. A rule with nothing to say (no records of its kind) says
nothing; no sentence is written by hand.

Rules, in order:
1. for classification, the best algorithm of each equal-time-budget setting among the rows that
   learned, with its paired improvement over the runner-up;
2. the same for regression, over seeds: the mean ± std over seeds of the best configuration and
   its per-seed paired improvement over the runner-up;
3. at the paper's iteration count, one sentence per dataset: each algorithm's test metric (mean ±
   std over seeds), after 1 / 5 / 10 steps for sinusoid, beside the paper's number, with the seeds
   that did not learn; then, per configuration, the seeds that stopped before it and why;
4. the papers' claims: each verdict with the budget it rests on, and how many claims have none
   yet and why;
5. which configurations did not beat their baselines, in which seeds;
6. what the deviation ladder attributes (rungs whose gain's CI excludes 0), and its end points
   at the longest budget;
7. whether the strong-convexity assumption held in each assumption audit;
8. gradient fidelity (iMAML's and FOMAML's error at the largest K, Reptile's cosine) and what it
   costs (how memory and time per meta-iteration scale with K);
9. time to accuracy: which runs reached the harness's highest threshold, and when.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from . import baselines, budget
from . import common as c
from . import tta as _tta
from .paired import delta_text, find, significant
from .paper import PaperNumbers
from .render import fmt, fmt_g

MAX_FINDINGS = 11  # what the rules can say at most: 2 + 3 (one per dataset) + 6


@dataclass
class Context:
    rows: list[dict]              # algorithm rows (no sweep, no baselines)
    judged: dict[str, dict]       # run → baselines.judge
    pairs: list[dict]
    studies: dict[str, list[dict]]  # study name → the runs shown
    tta: list[dict]
    bases: list[dict] = field(default_factory=list)  # baseline records
    paper: PaperNumbers | None = None
    claims: list[dict] = field(default_factory=list)  # paired.claims_table's rows


def _devices(rows: list[dict]) -> str:
    return ", ".join(sorted({r.get("device_name") or r.get("device") or "an unrecorded device" for r in rows}))


def _link(name: str) -> str:
    return f"([table](#table-{name}))"


def _fraction(rows: list[dict]) -> str:
    fr = [r["iterations_done"] / r["meta_iterations"] for r in rows if r.get("meta_iterations")]
    lo, hi = f"{100 * min(fr):.2g}", f"{100 * max(fr):.2g}"
    return f"{lo}% of the paper's iterations" if lo == hi else f"{lo}–{hi}% of the paper's iterations"


def _seeds_words(runs: list[dict]) -> str:
    seeds = c.seeds_list(runs)
    return f"seed{'s' if ',' in seeds else ''} {seeds}"


def _value(runs: list[dict], legend: bool = True) -> str:
    """One configuration's test metric: mean ± std over seeds (several), or ± 95% CI over tasks (one;
    ``legend`` says so and names the seed)."""
    g = c.over_seeds(runs)
    s, d = c.scale_of(g["done"][0]["metric"])
    unit = "%" if g["done"][0]["metric"] == "accuracy" else " MSE"
    if g["n"] == 1:
        seed = fmt_g(g["done"][0].get("seed"))
        return f"{c.result_text(g['done'][0])}{unit}" + (f" (seed {seed}, ± 95% CI over test tasks)" if legend else "")
    return f"{fmt(g['mean'], d, s)} ± {fmt(g['std'], d, s)}{unit} (mean ± std over seeds {g['seeds']})"


def _gap(found: list[dict], metric: str) -> str:
    """The paired improvement: one seed's Δ [95% CI], or the mean over seeds and how many were significant."""
    if len(found) == 1:
        return delta_text(found[0], metric)
    s, d = c.scale_of(metric)
    m, sd, n = c.mean_std([f["imp"] for f in found])
    sig = sum(1 for f in found if significant(f) and f["imp"] > 0)
    return (f"{fmt(m, d, s)} ± {fmt(sd, d, s)} (paired improvement, mean ± std over seeds; significant after Holm in "
            f"{sig} of {n} seeds)")


def _learned_configs(members: list[dict], judged: dict[str, dict]) -> list[list[dict]]:
    out = []
    for runs in c.config_groups(members):
        done = [r for r in runs if r["status"] == "completed" and r["run"] in judged]
        if done and all(judged[r["run"]]["status"] != baselines.DID_NOT_LEARN for r in done):
            out.append(runs)
    return out


def _best_in(key: tuple, members: list[dict], ctx: Context) -> str | None:
    configs = _learned_configs(members, ctx.judged)
    if not configs:
        return None
    higher = members[0]["metric"] == "accuracy"
    ranked = sorted(configs, key=lambda runs: -c.over_seeds(runs)["mean"] if higher else c.over_seeds(runs)["mean"])
    top = ranked[0][0]
    where = f"{c.DATASET_NAMES[key[0]]}{' ' + key[1] if key[0] != 'sinusoid' else ''} ({fmt_g(key[2])} min)"
    text = f"{where}: {top['label']} {_value(ranked[0], legend=False)}"
    if len(ranked) > 1:
        found = find(ctx.pairs, key[0], key[1], top["label"], ranked[1][0]["label"], top["profile"], key[2])
        if found:
            text += f", ahead of {ranked[1][0]['label']} by {_gap(found, top['metric'])}"
    return text


def best_per_setting(ctx: Context) -> list[str]:
    out = []
    groups = {k: v for k, v in budget.groups(ctx.rows).items() if k[2] is not None}
    for kind in ("classification", "regression"):
        parts, used, anchor = [], [], None
        for key, members in groups.items():
            if (key[0] == "sinusoid") != (kind == "regression"):
                continue
            text = _best_in(key, members, ctx)
            if text:
                parts.append(text)
                used += members
                anchor = anchor or budget.protocol_table(key, members, ctx.judged).name
        if parts:
            one = any(c.over_seeds(runs)["n"] == 1 for runs in c.config_groups(used))
            legend = "one seed: ± 95% CI over test tasks, ahead by the paired improvement [95% CI]; " if one else ""
            out.append(f"At equal training-time budgets on {_devices(used)} the best {kind} algorithm per setting, "
                       f"among the rows that learned, was: {'; '.join(parts)} ({legend}{_fraction(used)}, "
                       f"{_seeds_words(used)}) {_link(anchor)}.")
    return out


def _steps_text(runs: list[dict], ks=(1, 5, 10)) -> str:
    vals = []
    for k in ks:
        v = [r["by_steps"].get(k) for r in runs if r["status"] == "completed" and r["by_steps"].get(k) is not None]
        vals.append(fmt(sum(v) / len(v), 2) if v else "—")
    return " / ".join(vals)


def at_paper_budget(ctx: Context) -> list[str]:
    """Rule 3, one sentence per dataset: the rows that ran the paper's full iteration count, or were
    ended by the declared rule, then the runs at that budget that stopped before it."""
    full = [r for r in ctx.rows + ctx.bases if c.is_paper_scale(r) and r["status"] == "completed"]
    stopped = [r for r in ctx.rows + ctx.bases  # runs at the paper's budget that did not finish it
               if r["profile"] == "paper" and r.get("max_train_minutes") is None and r["status"] != "completed"]
    out = []
    for dataset in sorted({r["dataset"] for r in full + stopped if not baselines.is_baseline(r)}):
        mine = [r for r in full if r["dataset"] == dataset]
        parts = [_at_budget(runs, ctx) for runs in c.config_groups(c.records_sorted(mine))]
        parts += _stopped([r for r in stopped if r["dataset"] == dataset], ctx)
        iters = sorted({r["meta_iterations"] for r in mine + stopped if r["dataset"] == dataset})
        early = ", or ended earlier by the declared plateau rule" if any(c.budget_kind(r) == "converged"
                                                                         for r in mine) else ""
        anchor = {"sinusoid": "sinusoid", "omniglot": "table2_omniglot"}.get(dataset, "table3_miniimagenet")
        out.append(f"At the paper's full iteration count on {c.DATASET_NAMES[dataset]} "
                   f"({' and '.join(f'{i:,}' for i in iters)} iterations{early}; no time cap; {_devices(mine or stopped)}): "
                   f"{'; '.join(parts)} {_link(anchor)}.")
    return out


def _at_budget(runs: list[dict], ctx: Context) -> str:
    """One configuration at the paper's budget: its test metric beside the paper's number."""
    r = runs[0]
    where = f"{c.DATASET_NAMES[r['dataset']]} {r['setting']}"
    base = baselines.is_baseline(r)
    text = f"{'the pretrained baseline' if base else r['label'] + ' on ' + where} reaches {_value(runs)}"
    if r["dataset"] == "sinusoid":
        name = "pretrained" if base else r["label"]
        ref = [ctx.paper.lookup("sinusoid", 1, r["test_shots"], name, None, steps=k) if ctx.paper else None
               for k in (1, 5, 10)]
        text += f" after {r.get('test_steps_used') or r.get('test_steps')} steps; after 1 / 5 / 10 steps " \
                f"{_steps_text(runs)}"
        text += f" against the paper's {' / '.join(fmt_g(p.value) for p in ref)}" if all(ref) else " (no paper number)"
    else:
        ref = ctx.paper.lookup(r["dataset"], r["ways"], r["test_shots"], r["label"], r.get("bn_mode")) \
            if ctx.paper else None
        done = [x for x in runs if x["status"] == "completed"]
        inside = sum(abs(100 * x["mean"] - ref.value) <= 100 * x["ci95"] for x in done) if ref else 0
        text += (f" against the paper's {fmt_g(ref.value)}% (in our 95% CI in {inside} of {len(done)} "
                 f"seed{'s' if len(done) > 1 else ''})") if ref else " (no paper number)"
    if c.budget_kind(r) == "converged":
        text += f", ended by the declared plateau rule at {r['iterations_done']:,} of {r['meta_iterations']:,} iterations"
        if r.get("outer_anneal"):  # the schedule is laid over the planned budget, so it never reached its end
            text += (f" with its outer step, annealed linearly to 0 over the planned iterations, still at "
                     f"{1 - r['iterations_done'] / r['meta_iterations']:.2f} of its start")
    dnl = [x for x in runs if ctx.judged.get(x["run"], {}).get("status") == baselines.DID_NOT_LEARN]
    if dnl:
        text += f", and did not learn (seed{'s' if len(dnl) > 1 else ''} {c.seeds_list(dnl)})"
    return text


def _stopped(stopped: list[dict], ctx: Context) -> list[str]:
    """Per configuration, the seeds that stopped before the paper's budget, where, and why."""
    parts = []
    for runs in c.config_groups(c.records_sorted(stopped)):
        r = runs[0]
        mine = [x for x in ctx.rows + ctx.bases if c.config_key(x) == c.config_key(r)]
        why = {x["run"]: (x.get("failure_reason") or "").split(":")[0] or "no reason recorded" for x in runs}
        each = ", ".join(f"seed {fmt_g(x.get('seed'))} at iteration "
                         f"{(x.get('failure_iteration') or x.get('iterations_done') or 0):,}"
                         + ("" if len(set(why.values())) == 1 else f" ({why[x['run']]})") for x in runs)
        common = f": {next(iter(why.values()))}" if len(set(why.values())) == 1 else ""
        parts.append(f"{r['label']} on {c.DATASET_NAMES[r['dataset']]} {r['setting']} {r['status']} in {len(runs)} "
                     f"of {len(mine)} seeds ({each}{common})")
    return parts


VERDICTS = ("supported", "not supported", "contradicted")


def claims(ctx: Context) -> list[str]:
    """Rule 4: the claims with a verdict (only at the paper's budget or the declared rule), and why the
    others have none."""
    if not ctx.claims:
        return []
    done = [r for r in ctx.claims if r["verdict"] in VERDICTS]
    kind = {"converged": "both runs ended by the declared plateau rule", "paper": "both runs at the paper's iteration count"}
    parts = [f"{r['claim']} is {r['verdict']} ({'MSE reduction' if r['metric'] == 'mse' else 'points'} per seed "
             f"{r['text']}; {r['seeds']} seed{'s' if r['seeds'] != 1 else ''}, {kind[r['kind']]})" for r in done]
    names = {r["claim"] for r in ctx.claims}
    waiting = names - {r["claim"] for r in done}
    text = f"Of the papers' {len(names)} ordering claims, {len(names) - len(waiting)} " \
           f"{'has' if len(names) - len(waiting) == 1 else 'have'} a verdict" + (": " + "; ".join(parts) if parts else "")
    if waiting:
        reasons = Counter(r["verdict"] for r in ctx.claims if r["claim"] in waiting)
        why = ", ".join(f"'{k}' {n}" for k, n in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])))
        text += (f"; the other {len(waiting)} have none yet (claims-table rows: {why}): a verdict needs both runs "
                 "at the paper's iteration count, or both ended by the declared plateau rule")
    return [text + f" {_link('claims')}."]


def did_not_learn(ctx: Context) -> list[str]:
    bad = [r for r in ctx.rows if ctx.judged.get(r["run"], {}).get("status") == baselines.DID_NOT_LEARN]
    none = sorted({c.DATASET_NAMES[r["dataset"]] for r in ctx.rows
                   if ctx.judged.get(r["run"], {}).get("status") == baselines.NO_BASELINE})
    judged = [r for r in ctx.rows if r["run"] in ctx.judged]
    if not judged:
        return []
    parts = []
    for runs in c.config_groups(bad):
        r = runs[0]
        mine = [o for o in judged if c.config_key(o) == c.config_key(r)]
        budget_words = f"{fmt_g(r['max_train_minutes'])} min" if r.get("max_train_minutes") is not None else \
            f"{r['meta_iterations']:,} iterations"
        vals = "; ".join(f"seed {fmt_g(o.get('seed'))} {c.result_text(o)} vs {ctx.judged[o['run']]['baseline']}"
                         for o in runs)
        parts.append(f"{r['label']} on {c.DATASET_NAMES[r['dataset']]} {r['setting']} ({budget_words}) in "
                     f"{len(runs)} of {len(mine)} seeds ({vals})")
    text = (f"{len(bad)} of {len(judged)} completed comparison runs did not learn (the 95% CI of their improvement "
            f"over a baseline not above 0; baselines: chance for classification, the pretrained network of the same "
            f"seed and budget and the zero predictor for sinusoid): " + ("; ".join(parts) or "none"))
    if none:
        text += f"; {', '.join(none)} rows have no baseline record, so whether they learned is not judged"
    groups = budget.groups(ctx.rows)
    key = next((budget.budget_key(r) for r in bad + ctx.rows if budget.budget_key(r) in groups), None)
    name = budget.protocol_table(key, groups[key], ctx.judged).name if key else "runs"
    return [text + f" {_link(name)}."]


def deviations(ctx: Context) -> list[str]:
    from .deviations import carriers, is_long, rows_of, target
    shown = [s for s in ctx.studies.get("deviations") or [] if target(s) == "release"]
    short = [s for s in shown if not is_long(s)]
    long = [s for s in shown if is_long(s)]
    out = []
    if short:
        df = short[-1]["tables"]["deviations.csv"]
        up, _ = carriers(df)
        minutes = fmt_g(df["budget_minutes"].dropna().max())
        ladder = [r for r in rows_of(df, "ladder") if r.get("accuracy") is not None]
        if ladder:
            text = (f"The deviation ladder (iMAML, Omniglot 5w1s, {minutes} min per rung, seed 0, "
                    f"{fmt_g(ladder[0].get('n'))} test tasks) attributes the gain from the paper as written "
                    f"({fmt(ladder[0]['accuracy'], 2, 100)} ± {fmt(ladder[0]['ci95'], 2, 100)}%) to the release "
                    f"({fmt(ladder[-1]['accuracy'], 2, 100)} ± {fmt(ladder[-1]['ci95'], 2, 100)}%) to "
                    + (", ".join(f"{r['rung']} (+{fmt(r['diff_mean'], 2, 100)} [{fmt(r['diff_low'], 2, 100)}, "
                                 f"{fmt(r['diff_high'], 2, 100)}] points)" for r in up) or "no single rung"))
            if long:
                ends = {r["rung"]: r for r in rows_of(long[-1]["tables"]["deviations.csv"], "endpoints")}
                lm = fmt_g(long[-1]["tables"]["deviations.csv"]["budget_minutes"].dropna().max())
                if "paper" in ends and "release" in ends and ends["paper"].get("accuracy") is not None:
                    p, rel = ends["paper"], ends["release"]
                    text += (f"; at {lm} min the paper as written reaches {fmt(p['accuracy'], 2, 100)} ± "
                             f"{fmt(p['ci95'], 2, 100)}% (at {minutes} min: {fmt(ladder[0]['accuracy'], 2, 100)} ± "
                             f"{fmt(ladder[0]['ci95'], 2, 100)}%) and the release {fmt(rel['accuracy'], 2, 100)} ± "
                             f"{fmt(rel['ci95'], 2, 100)}%")
            out.append(text + f" {_link('deviations_ladder')}.")
    hyper = [s for s in ctx.studies.get("deviations") or [] if target(s) == "hypertorch" and not is_long(s)]
    if hyper:
        df = hyper[-1]["tables"]["deviations.csv"]
        ladder = [r for r in rows_of(df, "ladder") if r.get("accuracy") is not None]
        up, down = carriers(df)
        if len(ladder) > 1:
            minutes = fmt_g(df["budget_minutes"].dropna().max())
            moved = ", ".join(f"{r['rung']} ({'+' if r['diff_mean'] > 0 else ''}{fmt(r['diff_mean'], 2, 100)} "
                              f"[{fmt(r['diff_low'], 2, 100)}, {fmt(r['diff_high'], 2, 100)}] points)"
                              for r in up + down) or "no single rung (no 95% CI excludes 0)"
            text = (f"the hypertorch ladder (same tasks, {minutes} min per rung, seed 0) goes from the paper as "
                    f"written ({fmt(ladder[0]['accuracy'], 2, 100)} ± {fmt(ladder[0]['ci95'], 2, 100)}%) to "
                    f"hypertorch's protocol ({fmt(ladder[-1]['accuracy'], 2, 100)} ± "
                    f"{fmt(ladder[-1]['ci95'], 2, 100)}%); the rungs that moved it: {moved} "
                    f"{_link('deviations_hypertorch_ladder')}.")
            # one finding for both ladders: appended to the release ladder's sentence when there is one
            out[-1:] = [out[-1][:-1] + "; " + text] if out else [text[0].upper() + text[1:]]
    return out


def assumptions(ctx: Context) -> list[str]:
    from .studies import _dataset, assumption_rows
    parts, name, total, failed = [], None, 0, 0
    for s in ctx.studies.get("assumptions") or []:
        if "assumptions.csv" not in s["tables"]:
            continue
        rows = assumption_rows(s)
        n, bad = sum(r["pairs"] for r in rows), sum(r["not_strongly_convex"] for r in rows)
        lams = sorted({r["lam"] for r in rows})
        cks = sorted({r["checkpoint"] for r in rows})
        parts.append(f"on {c.DATASET_NAMES.get(_dataset(s), _dataset(s))} {n - bad} of {n} task/checkpoint/λ "
                     f"triples were strongly convex (λ ∈ {{{', '.join(fmt_g(v) for v in lams)}}}, checkpoints "
                     f"{', '.join(fmt_g(v) for v in cks)}, seed {(s.get('config') or {}).get('seed', '?')})")
        name, total, failed = name or f"assumptions_{_dataset(s)}", total + n, failed + bad
    if not parts:
        return []
    verdict = "held" if not failed else "failed more often than it held" if 2 * failed > total else "failed at times"
    return [f"iMAML's strong-convexity assumption (λ_min(H) + λ > 0 at φ_K) {verdict}: {'; '.join(parts)} "
            f"{_link(name)}."]


def _latest_table(ctx: Context, study: str, name: str):
    """The table ``name`` of the latest shown run of ``study`` that has it, or None."""
    shown = [s for s in ctx.studies.get(study) or [] if name in s["tables"]]
    return shown[-1]["tables"][name] if shown else None


def fidelity(ctx: Context) -> list[str]:
    df = _latest_table(ctx, "fidelity", "fidelity.csv")
    if df is None:
        return []
    src = "trained" if (df["theta_source"] == "trained").any() else df["theta_source"].min()
    df = df[df["theta_source"] == src]
    kmax = df["inner_steps"].max()
    at = df[df["inner_steps"] == kmax]
    parts = []
    im = at[at["method"] == "imaml"]
    if len(im):
        cg = im["cg_steps"].max()
        parts.append(f"iMAML (CG {fmt_g(cg)}) {im[im['cg_steps'] == cg]['rel_error'].median():.2e}")
    for m in ("maml_prox", "fomaml"):
        g = at[at["method"] == m]
        if len(g):
            parts.append(f"{m} {g['rel_error'].median():.2e}")
    rep = at[at["method"] == "reptile"]
    tail = f"; Reptile's direction θ − φ_K has median cosine {rep['cosine'].median():.2f} with it" if len(rep) else ""
    tasks = df["task"].nunique()
    return [f"Against the exact implicit meta-gradient at θ {src} with K = {fmt_g(kmax)}, the median relative error "
            f"over {tasks} tasks was {', '.join(parts)}{tail} (sinusoid MLP, no CI: medians over tasks) "
            f"{_link('fidelity_rel_error')}"]


def cost(ctx: Context) -> list[str]:
    df = _latest_table(ctx, "cost", "cost.csv")
    if df is None:
        return []
    df = df[df["status"] == "completed"].copy()
    df["memory"] = df["gpu_peak_bytes"].where(df["gpu_peak_bytes"].notna(), df["alloc_peak_bytes"])
    parts = []
    for algo in sorted(df["algorithm"].unique()):
        g = df[(df["algorithm"] == algo) & (df["inner_optimizer"] == "sgd")]
        if g["inner_steps"].nunique() < 2:
            continue
        lo, hi = g[g["inner_steps"] == g["inner_steps"].min()], g[g["inner_steps"] == g["inner_steps"].max()]
        parts.append(f"{algo} (sgd) {fmt(lo['memory'].median() / 2**20, 1)} → {fmt(hi['memory'].median() / 2**20, 1)} "
                     f"MiB and {fmt(1000 * lo['median_iter_s'].median(), 1)} → "
                     f"{fmt(1000 * hi['median_iter_s'].median(), 1)} ms per meta-iteration")
    if not parts:
        return []
    ks = sorted(df["inner_steps"].unique())
    devices = ", ".join(sorted(df["device"].dropna().astype(str).unique()))
    return [f"from K = {fmt_g(ks[0])} to K = {fmt_g(ks[-1])} inner steps, peak memory and time grew as "
            f"{'; '.join(parts)} (sinusoid MLP, {devices}, medians of the timed iterations) {_link('cost_memory')}"]


def fidelity_and_cost(ctx: Context) -> list[str]:
    """Rule 7: what the estimators' error is at the largest K, and what K costs."""
    parts = fidelity(ctx) + cost(ctx)
    if not parts:
        return []
    return [(parts[0][0].upper() + parts[0][1:]) + ("; " + parts[1] if len(parts) > 1 else "") + "."]


def time_to_accuracy(ctx: Context) -> list[str]:
    if not ctx.tta:
        return []
    t = _tta.THRESHOLDS[-1]
    parts = []
    for lab in sorted({_tta.label(r) for r in ctx.tta}, key=c.label_rank):
        mine = [r for r in ctx.tta if _tta.label(r) == lab]
        hit = sorted((r for r in mine if _tta.first_reaching(r, t)),
                     key=lambda r: _tta.first_reaching(r, t)["train_wall_s"])
        if hit:
            s = _tta.first_reaching(hit[0], t)
            parts.append(f"{lab} first reached ≥ {100 * t:g}% after {fmt(s['train_wall_s'] / 60, 1)} min "
                         f"({_tta._acc(s)}%, `{hit[0]['name']}`, seed {_tta.seed(hit[0])})")
        else:
            r = max(mine, key=lambda r: _tta.best(r)["test_mean"])
            b = _tta.best(r)
            where = f"{_tta._acc(b)}% after {fmt(b['train_wall_s'] / 60, 1)} min (`{r['name']}`, seed {_tta.seed(r)})"
            parts.append(f"{lab} did not within {fmt(r['segments'][-1]['train_wall_s'] / 60, 1)} min; its best was {where}"
                         if len(mine) == 1 else
                         f"none of the {len(mine)} {lab} configurations tried did; the highest of them, {where}, "
                         "is a maximum over configurations on the test tasks, so optimistic")
    return [f"Time to accuracy on Omniglot 5w1s on {', '.join(_tta.devices(ctx.tta))}: {'; '.join(parts)} "
            f"{_link('time_to_accuracy')}."]


RULES = (best_per_setting, at_paper_budget, claims, did_not_learn, deviations, assumptions, fidelity_and_cost,
         time_to_accuracy)


def findings(ctx: Context) -> list[str]:
    out = []
    for rule in RULES:
        out += rule(ctx) if ctx.rows or rule not in (best_per_setting, at_paper_budget, did_not_learn) else []
    return out[:MAX_FINDINGS]
