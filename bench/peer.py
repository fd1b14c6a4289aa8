"""The peer: learn2learn 0.2.0's ``l2l.algorithms.MAML`` (clone / adapt over a per-task loop).

This is how learn2learn's own MAML examples train (``maml.clone()``, ``learner.adapt(loss)``
``K`` times, ``query_loss.backward()`` per task, gradients scaled by 1/meta-batch, one outer
Adam step) with ``first_order=False``: the exact second-order MAML meta-gradient of Finn et
al. (2017), Eq. 1–2, the same quantity our ``maml`` estimator computes.

Networks: ``l2l.vision.models.OmniglotCNN`` (64 filters, stride-2 convs, mean head) and
``MiniImagenetCNN`` (``hidden_size=32``, max-pool, flattened 5·5·32 head) — the same
architectures as our ``conv4_omniglot`` / ``conv4_miniimagenet`` (head ``flatten``) — and a
``torch.nn`` 1-40-40-1 ReLU MLP for the sinusoid. Our initial parameter dict is copied into
the module, and its batch norms get our eps (1e-3; learn2learn leaves PyTorch's 1e-5), so
both sides start from identical weights, see identical tasks and must produce the same
meta-gradient: :func:`grads_as_params` lets the harness check that before it times anything.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.func import functional_call

Params = dict[str, torch.Tensor]


def _module_pairs(net: torch.nn.Module, model: str) -> dict[str, torch.Tensor]:
    """Our parameter names → the module's parameter tensors."""
    if model == "mlp":
        linears = [m for m in net if isinstance(m, torch.nn.Linear)]
        out = {}
        for i, lin in enumerate(linears):
            out[f"fc{i}.weight"], out[f"fc{i}.bias"] = lin.weight, lin.bias
        return out
    blocks = list(net.base) if model == "conv4_omniglot" else list(net.features)
    out = {}
    for i, block in enumerate(blocks):
        out[f"conv{i}.weight"], out[f"conv{i}.bias"] = block.conv.weight, block.conv.bias
        out[f"bn{i}.weight"], out[f"bn{i}.bias"] = block.normalize.weight, block.normalize.bias
    out["head.weight"], out["head.bias"] = net.classifier.weight, net.classifier.bias
    return out


def build_module(model: str, ways: int, params: Params, bn_eps: float = 1e-3) -> torch.nn.Module:
    """learn2learn's network for ``model`` holding a copy of ``params`` (same device and dtype)."""
    import learn2learn as l2l

    if model == "mlp":
        net = torch.nn.Sequential(torch.nn.Linear(1, 40), torch.nn.ReLU(), torch.nn.Linear(40, 40),
                                  torch.nn.ReLU(), torch.nn.Linear(40, 1))
    elif model == "conv4_omniglot":
        net = l2l.vision.models.OmniglotCNN(output_size=ways)
    elif model == "conv4_miniimagenet":
        net = l2l.vision.models.MiniImagenetCNN(output_size=ways, hidden_size=32)
    else:
        raise ValueError(f"no learn2learn peer for model={model!r}; allowed: mlp, conv4_omniglot, conv4_miniimagenet")
    first = next(iter(params.values()))
    net = net.to(device=first.device, dtype=first.dtype).train()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eps = bn_eps
    pairs = _module_pairs(net, model)
    if {k: tuple(v.shape) for k, v in pairs.items()} != {k: tuple(v.shape) for k, v in params.items()}:
        raise ValueError(f"learn2learn's {model} does not have our parameter shapes; cannot compare on equal weights")
    with torch.no_grad():
        for k, p in pairs.items():
            p.copy_(params[k])
    return net


def module_problem(problem, params: Params | None = None) -> tuple[object, dict[str, str]]:
    """``problem`` as a researcher brings their own network: learn2learn's ``torch.nn`` module for
    the model, holding ``params`` (default: the problem's initial weights), its parameters under
    the module's own names, and the loss through ``torch.func.functional_call``. Batch norm keeps
    no running statistics (it normalises by the batch's, as in training; an in-place running-mean
    update cannot run inside a gradient transform). Returns the problem and module name → our name.
    """
    params = problem.params if params is None else params
    net = build_module(problem.model, problem.cfg.ways, params)
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.track_running_stats, m.running_mean, m.running_var, m.num_batches_tracked = False, None, None, None
    criterion = F.mse_loss if problem.metric == "mse" else F.cross_entropy

    def loss_fn(p, x, y):
        return criterion(functional_call(net, p, (x,)), y)

    ours = {id(t): k for k, t in _module_pairs(net, problem.model).items()}
    names = {k: ours[id(t)] for k, t in net.named_parameters()}
    mine = {k: t.detach().clone() for k, t in net.named_parameters()}
    return dataclasses.replace(problem, params=mine, loss_fn=loss_fn, metric_fn=None,
                               origin=f"{problem.origin}; the network as learn2learn's torch.nn module, "
                                      "loss through torch.func.functional_call"), names


def grads_as_params(net: torch.nn.Module, model: str) -> Params:
    """The module's ``.grad`` under our parameter names (for the equal-gradient check)."""
    return {k: p.grad.detach().clone() for k, p in _module_pairs(net, model).items()}


class PeerMAML:
    """One learn2learn MAML meta-iteration at a time: ``step(tasks)``."""

    def __init__(self, model: str, ways: int, params: Params, metric: str, inner_lr: float, steps: int,
                 outer_lr: float = 1e-3):
        import learn2learn as l2l

        self.model, self.steps = model, steps
        self.net = build_module(model, ways, params)
        self.maml = l2l.algorithms.MAML(self.net, lr=inner_lr, first_order=False)
        self.opt = torch.optim.Adam(self.maml.parameters(), lr=outer_lr)
        self.loss: Callable = F.mse_loss if metric == "mse" else F.cross_entropy

    def meta_gradient(self, tasks) -> None:
        """Accumulate the mean meta-gradient of the stacked tasks into ``.grad``."""
        xs, ys, xq, yq = tasks
        n = xs.shape[0]
        self.opt.zero_grad(set_to_none=True)
        for i in range(n):
            learner = self.maml.clone()
            for _ in range(self.steps):
                learner.adapt(self.loss(learner(xs[i]), ys[i]))
            self.loss(learner(xq[i]), yq[i]).backward()
        for p in self.maml.parameters():
            if p.grad is not None:
                p.grad.mul_(1.0 / n)

    def step(self, tasks) -> None:
        """A full meta-iteration: meta-gradient over the meta-batch, then the outer Adam step."""
        self.meta_gradient(tasks)
        self.opt.step()
