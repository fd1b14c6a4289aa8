"""What every estimator reports besides its gradient (vmap-friendly 0-dim tensors)."""
from __future__ import annotations

from typing import Callable

import torch

from .inner import LossFn, inner_grad_norm
from .linalg import Params


def diagnostics(loss_fn: LossFn, theta: Params, phi: Params, support, query, lam: float,
                query_loss_after: torch.Tensor, metric_fn: Callable | None, full: bool) -> dict[str, torch.Tensor]:
    phi = {k: v.detach() for k, v in phi.items()}
    aux = {"query_loss_after": query_loss_after.detach()}
    if metric_fn is not None:
        aux["query_metric_after"] = metric_fn(phi, *query).detach()
    if full:
        with torch.no_grad():
            aux["query_loss_before"] = loss_fn({k: v.detach() for k, v in theta.items()}, *query)
        aux["inner_grad_norm"] = inner_grad_norm(loss_fn, phi, theta, support, lam)
    return aux
