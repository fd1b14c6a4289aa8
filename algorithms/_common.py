"""What every estimator reports besides its gradient (vmap-friendly 0-dim tensors)."""
from __future__ import annotations

from collections.abc import Callable

import torch

from .inner import LossFn, inner_grad_norm
from .linalg import Params


def query_loss(loss_fn: LossFn, metric_fn: Callable | None, phi: Params, x: torch.Tensor,
               y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The query loss (differentiable in φ) and ``{"query_metric_after": metric}`` (detached;
    empty without ``metric_fn``; a dict so it can be a transform's aux). One forward pass
    serves both when the two functions expose the same ``forward`` with a
    ``criterion(out, y)`` / ``score(out, y)`` (as ``models`` builds them); otherwise the
    metric costs its own forward."""
    if metric_fn is None:
        return loss_fn(phi, x, y), {}
    forward = getattr(loss_fn, "forward", None)
    if forward is not None and forward is getattr(metric_fn, "forward", None):
        out = forward(phi, x)
        return loss_fn.criterion(out, y), {"query_metric_after": metric_fn.score(out.detach(), y).detach()}
    metric = metric_fn({k: v.detach() for k, v in phi.items()}, x, y)
    return loss_fn(phi, x, y), {"query_metric_after": metric.detach()}


def diagnostics(loss_fn: LossFn, theta: Params, phi: Params, support, query, lam: float,
                query_loss_after: torch.Tensor, query_metric: dict[str, torch.Tensor],
                full: bool, autograd: bool = False) -> dict[str, torch.Tensor]:
    """The query loss and metric after adaptation; with ``full`` also the query loss at θ and ||∇G(φ_K)||."""
    phi = {k: v.detach() for k, v in phi.items()}
    aux = {"query_loss_after": query_loss_after.detach(), **{k: v.detach() for k, v in query_metric.items()}}
    if full:
        with torch.no_grad():
            aux["query_loss_before"] = loss_fn({k: v.detach() for k, v in theta.items()}, *query)
        aux["inner_grad_norm"] = inner_grad_norm(loss_fn, phi, theta, support, lam, autograd)
    return aux
