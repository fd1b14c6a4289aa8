"""Linear algebra on parameter dicts: tree ops, Hessian-vector products, CG, Lanczos.

Shared by iMAML (implicit meta-gradient), the Hessian-free inner solver and the studies.
Everything here is a pure function of dicts of tensors; the CG used by iMAML has a fixed
number of steps and no data-dependent Python branching, so it runs under ``torch.func.vmap``.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch.func import grad, jvp, vjp

Params = dict[str, torch.Tensor]


def tree_dot(a: Params, b: Params) -> torch.Tensor:
    return sum((a[k] * b[k]).sum() for k in a)


def tree_add(a: Params, b: Params, alpha: float | torch.Tensor = 1.0) -> Params:
    return {k: a[k] + alpha * b[k] for k in a}


def tree_scale(a: Params, alpha: float | torch.Tensor) -> Params:
    return {k: alpha * a[k] for k in a}


def tree_norm(a: Params) -> torch.Tensor:
    return tree_dot(a, a).sqrt()


def tree_flatten(a: Params) -> torch.Tensor:
    return torch.cat([a[k].reshape(-1) for k in a])


def tree_unflatten(vec: torch.Tensor, like: Params) -> Params:
    out, i = {}, 0
    for k, t in like.items():
        out[k] = vec[i:i + t.numel()].view_as(t)
        i += t.numel()
    return out


def gradient(f: Callable, params: Params, has_aux: bool = False, create_graph: bool = False,
             autograd: bool = False):
    """∇f(params), with f's aux when ``has_aux`` (f then returns ``(value, aux)``).

    Args:
        f: scalar function of a parameter dict.
        params: where to differentiate.
        has_aux: f returns ``(value, aux)``; aux is returned beside the gradient.
        create_graph: keep the graph through the inputs, so that an enclosing ``gradient``
            differentiates through the result (the MAML unroll; ``autograd=True`` only).
        autograd: ``torch.autograd.grad``, the same arithmetic without functorch's per-op
            wrapping; valid only outside ``torch.func`` transforms and ``torch.compile``
            (the per-task loop). False: ``torch.func.grad``, valid anywhere.

    Returns:
        The gradient dict (zeros for unused inputs), and aux when ``has_aux``.
    """
    if not autograd:
        return grad(f, has_aux=has_aux)(params)
    with torch.enable_grad():
        p = {k: v if create_graph and v.requires_grad else v.detach().requires_grad_() for k, v in params.items()}
        out = f(p)
        value, aux = out if has_aux else (out, None)
        gs = torch.autograd.grad(value, list(p.values()), create_graph=create_graph, allow_unused=True)
    g = {k: torch.zeros_like(v) if d is None else d for (k, v), d in zip(p.items(), gs)}
    return (g, aux) if has_aux else g


def hvp(f: Callable[[Params], torch.Tensor], params: Params, v: Params, mode: str = "revrev") -> Params:
    """Hessian-vector product ∇²f(params)·v without forming the Hessian.

    ``revrev`` (double backward: vjp of the gradient) is the default: ``fwdrev``
    (forward-over-reverse, jvp of the gradient) fails in torch 2.14 on the ReLU MLP
    ("ZeroTensors are immutable"). Both are kept; tests check one against the other
    where both run.
    """
    if mode == "fwdrev":
        return jvp(grad(f), (params,), (v,))[1]
    if mode == "revrev":
        _, pullback = vjp(grad(f), params)
        return pullback(v)[0]
    raise ValueError(f"hvp mode must be 'fwdrev' or 'revrev', got {mode!r}")


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den, and 0 where den is 0 (CG has converged exactly), without data-dependent branches."""
    ok = den != 0
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(den))


def conjugate_gradient(matvec: Callable[[Params], Params], b: Params, steps: int,
                       tol: float = 0.0, trace: list | None = None) -> tuple[Params, torch.Tensor]:
    """Solve A x = b for symmetric positive-definite A with ``steps`` CG iterations from x0 = 0.

    Hestenes & Stiefel (1952). Fixed step count, no early exit (vmap-compatible); a zero
    curvature pᵀAp or zero residual freezes the iterate instead of dividing by zero.
    ``tol > 0``: once an iteration leaves ||r||² < tol, the later ones change nothing — the
    official iMAML release's ``utils.cg_solve(..., residual_tol=1e-10)``, which breaks out of
    its loop there (the first iteration always runs). The masked iterations still cost their
    matvec, so the loop stays free of data-dependent branching.
    Returns (x, relative residual ||b − A x|| / ||b||, from the CG recurrence). ``trace`` (a list,
    outside ``torch.func`` transforms only): each iteration appends its pᵀAp and relative residual.
    """
    x = {k: torch.zeros_like(t) for k, t in b.items()}
    r = dict(b)
    p = dict(b)
    rr = tree_dot(r, r)
    bb = rr
    for i in range(steps):
        ap = matvec(p)
        pap = tree_dot(p, ap)
        alpha = _ratio(rr, pap)
        x_new = tree_add(x, p, alpha)
        r_new = tree_add(r, ap, -alpha)
        rr_new = tree_dot(r_new, r_new)
        beta = _ratio(rr_new, rr)
        p_new = tree_add(r_new, p, beta)
        if tol > 0 and i > 0:
            done = rr < tol
            x_new, r_new, p_new = ({k: torch.where(done, old[k], new[k]) for k in new}
                                   for old, new in ((x, x_new), (r, r_new), (p, p_new)))
            rr_new = torch.where(done, rr, rr_new)
        x, r, p, rr = x_new, r_new, p_new, rr_new
        if trace is not None:
            trace.append({"stage": "cg", "iteration": i + 1, "pAp": float(pap), "alpha": float(alpha),
                          "residual": float((rr / bb).sqrt()) if float(bb) > 0 else 0.0})
    rel = torch.where(bb > 0, (rr / torch.where(bb > 0, bb, torch.ones_like(bb))).sqrt(), torch.zeros_like(bb))
    return x, rel


def truncated_newton_direction(matvec: Callable[[Params], Params], g: Params, steps: int,
                               trace: list | None = None) -> Params:
    """Approximate Newton direction d ≈ −A⁻¹g by ``steps`` CG iterations, stopping at negative curvature.

    Truncated Newton / Newton-CG (Nocedal & Wright, Alg. 7.1): if the first search direction
    already has non-positive curvature, return steepest descent −g; at a later one, the
    iterate reached so far; at a zero residual, the current iterate. The stops are masks, not
    branches (every iteration costs its matvec), so it runs under ``vmap`` and ``torch.compile``.
    """
    d = {k: torch.zeros_like(t) for k, t in g.items()}
    r = tree_scale(g, -1.0)
    p = dict(r)
    rr = tree_dot(r, r)
    done = torch.zeros_like(rr, dtype=torch.bool)
    for i in range(steps):
        ap = matvec(p)
        pap = tree_dot(p, ap)
        negative = ~done & (pap <= 0)
        if i == 0:
            d = {k: torch.where(negative, r[k], d[k]) for k in d}
        done = done | negative
        alpha = rr / torch.where(done, torch.ones_like(pap), pap)
        d = {k: torch.where(done, d[k], v) for k, v in tree_add(d, p, alpha).items()}
        r = {k: torch.where(done, r[k], v) for k, v in tree_add(r, ap, -alpha).items()}
        rr_new = tree_dot(r, r)
        zero = ~done & (rr_new == 0)
        done = done | zero
        beta = rr_new / torch.where(rr == 0, torch.ones_like(rr), rr)
        p = {k: torch.where(done, p[k], v) for k, v in tree_add(r, p, beta).items()}
        rr = torch.where(done, rr, rr_new)
        if trace is not None:
            trace.append({"stage": "cg", "iteration": i + 1, "pAp": float(pap), "residual_sq": float(rr)})
    return d


def lanczos_extreme_eigs(matvec: Callable[[torch.Tensor], torch.Tensor], dim: int, steps: int,
                         generator: torch.Generator | None = None, dtype=torch.float64,
                         device="cpu") -> tuple[float, float]:
    """Smallest and largest eigenvalue of a symmetric operator by Lanczos with full
    reorthogonalisation (Lanczos 1950; Golub & Van Loan §10.1). ``matvec`` acts on flat vectors.
    With ``steps >= dim`` the result is exact up to rounding."""
    steps = min(steps, dim)
    q = torch.randn(dim, generator=generator, dtype=dtype, device=device)
    q = q / q.norm()
    qs = [q]
    alphas, betas = [], []
    for j in range(steps):
        w = matvec(qs[-1]).to(dtype)
        a = torch.dot(w, qs[-1])
        alphas.append(a)
        Q = torch.stack(qs)
        w = w - Q.T @ (Q @ w)
        w = w - Q.T @ (Q @ w)  # twice is enough (Parlett)
        b = w.norm()
        if j == steps - 1 or b.item() < 1e-12 * max(1.0, abs(a.item())):
            break
        betas.append(b)
        qs.append(w / b)
    T = torch.diag(torch.stack(alphas))
    if betas:
        off = torch.stack(betas)
        T = T + torch.diag(off, 1) + torch.diag(off, -1)
    ev = torch.linalg.eigvalsh(T)
    return ev[0].item(), ev[-1].item()
