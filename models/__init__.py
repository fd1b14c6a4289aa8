"""The standard networks as pure functions ``forward(params, x)`` over a dict of tensors.

- ``mlp``: 1-40-40-1 ReLU (sinusoid; Finn et al. 2017 §5.1).
- ``conv4``: 4 × [3×3 conv → batch norm → ReLU] + linear head.
  Omniglot (MAML / iMAML reference code): 64 filters, stride-2 convs, no pooling.
  mini-ImageNet (MAML reference code): 32 filters, stride 1, 2×2 max-pool, flatten 5·5·32.
  ``head='mean'`` averages the final feature map (MAML reference, learn2learn's
  ``OmniglotCNN``); ``head='flatten'`` flattens it (official iMAML release: 2·2·64 = 256).

Official iMAML release variants (aravindr93/imaml_dev, ``learner_model.make_conv_network``),
each its own switch of :func:`build`: ``arch='imaml_release'`` — batch-norm eps 1e-5
(``nn.BatchNorm2d(64, track_running_stats=False)``) and a ``ZeroPad2d((0, 1, 0, 1))`` after
block 2 (at 28×28 the pad only makes explicit a zero row and column that the next conv's own
padding supplies anyway: 7×7 → 8×8 → 4×4 either way, the same numbers; tested), used with
``head='flatten'`` (``Linear(256, N)``); ``init='imaml_release'`` — xavier-uniform with gain
1.73 on the conv and linear weights, biases U(0, 0.05), batch-norm scale 1 and shift 0
(torch's defaults, which the release keeps).

prolearner/hypertorch's iMAML example (``examples/iMAML.py``, ``get_cnn_omniglot``,
``initialize``): ``arch='hypertorch'`` — 4 × [3×3 conv, stride 1 → ReLU → 2×2 max-pool →
batch norm, eps 1e-5] (28 → 14 → 7 → 3 → 1, so 64 features for either head); it evaluates in
training mode, so batch norm uses batch statistics there too. ``init='hypertorch'`` — conv
weights N(0, 2 / (9·filters)) with zero bias, batch-norm scale 1 and shift 0, head zero.

Batch norm always normalises with the statistics of the batch it sees (eps 1e-3, as in
the TF reference; 1e-5 with ``arch='imaml_release'``): ``bn_mode='transductive'`` feeds
the whole query set as one batch (MAML reference and the iMAML release; the default),
``bn_mode='per_example'`` evaluates each query image together with the support set
(Nichol et al. 2018's non-transductive protocol) — the trainer implements the latter at
evaluation time. No running statistics exist, so the functions are pure and run under ``vmap``.
A conv4's forward, and the losses and metrics built on it, carry a ``fused`` variant on
``F.batch_norm`` for use outside ``vmap`` (:func:`batch_norm`).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F

import checks

Params = dict[str, torch.Tensor]
BN_EPS = 1e-3
INITS = ("maml", "imaml_release", "hypertorch")
ARCHS = ("maml", "imaml_release", "hypertorch")
RELEASE_BN_EPS = 1e-5
RELEASE_GAIN = 1.73
ACTIVATIONS = {"relu": F.relu, "tanh": torch.tanh, "softplus": F.softplus}


def _xavier(shape, fan_in, fan_out, g, dtype):
    a = math.sqrt(6.0 / (fan_in + fan_out))
    return (torch.rand(shape, generator=g, dtype=dtype) * 2 - 1) * a


def init_mlp(g: torch.Generator, dtype=torch.float32, hidden=(40, 40), n_in=1, n_out=1) -> Params:
    sizes = [n_in, *hidden, n_out]
    p = {}
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        bound = 1 / math.sqrt(a)  # torch.nn.Linear's default init
        p[f"fc{i}.weight"] = (torch.rand(b, a, generator=g, dtype=dtype) * 2 - 1) * bound
        p[f"fc{i}.bias"] = (torch.rand(b, generator=g, dtype=dtype) * 2 - 1) * bound
    return p


def mlp(params: Params, x: torch.Tensor, activation: str = "relu") -> torch.Tensor:
    """The MLP; ``activation='tanh'`` or ``'softplus'`` makes it smooth. The ReLU MLP's inner
    objective is only piecewise smooth: its minimisers sit on kinks, where the exact implicit
    gradient, which needs ∇²L at a stationary point (Rajeswaran et al. 2019, Eq. 6), does not
    exist (the fidelity study's ``activation``)."""
    act = ACTIVATIONS[activation]
    n = len(params) // 2
    for i in range(n):
        x = F.linear(x, params[f"fc{i}.weight"], params[f"fc{i}.bias"])
        if i < n - 1:
            x = act(x)
    return x


def init_conv4(g: torch.Generator, ways: int, channels: int, filters: int, feat_dim: int,
               dtype=torch.float32, init: str = "maml") -> Params:
    """``init='maml'``: xavier-uniform convs with zero bias, batch-norm scale U[0,1], shift 0
    (as learn2learn's ``maml_init_``); xavier-uniform head weights, zero bias.
    ``init='imaml_release'``: ``xavier_uniform_(weight, gain=1.73)`` and ``uniform_(bias, 0, 0.05)``
    on the convs and the head, batch-norm scale 1, shift 0 (imaml_dev ``make_conv_network``).
    ``init='hypertorch'``: conv weights N(0, 2 / (9·filters)), zero biases, batch-norm scale 1,
    shift 0, zero head (hypertorch ``examples/iMAML.py`` ``initialize``)."""
    if init == "hypertorch":
        return _init_hypertorch(g, ways, channels, filters, feat_dim, dtype)
    release = init == "imaml_release"
    gain = RELEASE_GAIN if release else 1.0

    def bias(n):
        return torch.rand(n, generator=g, dtype=dtype) * 0.05 if release else torch.zeros(n, dtype=dtype)

    p = {}
    c_in = channels
    for i in range(4):
        p[f"conv{i}.weight"] = gain * _xavier((filters, c_in, 3, 3), c_in * 9, filters * 9, g, dtype)
        p[f"conv{i}.bias"] = bias(filters)
        p[f"bn{i}.weight"] = torch.ones(filters, dtype=dtype) if release else torch.rand(filters, generator=g, dtype=dtype)
        p[f"bn{i}.bias"] = torch.zeros(filters, dtype=dtype)
        c_in = filters
    p["head.weight"] = gain * _xavier((ways, feat_dim), feat_dim, ways, g, dtype)
    p["head.bias"] = bias(ways)
    return p


def _init_hypertorch(g: torch.Generator, ways: int, channels: int, filters: int, feat_dim: int, dtype) -> Params:
    p, c_in, std = {}, channels, math.sqrt(2.0 / (9 * filters))
    for i in range(4):
        p[f"conv{i}.weight"] = torch.randn((filters, c_in, 3, 3), generator=g, dtype=dtype) * std
        p[f"conv{i}.bias"] = torch.zeros(filters, dtype=dtype)
        p[f"bn{i}.weight"] = torch.ones(filters, dtype=dtype)
        p[f"bn{i}.bias"] = torch.zeros(filters, dtype=dtype)
        c_in = filters
    p["head.weight"] = torch.zeros((ways, feat_dim), dtype=dtype)
    p["head.bias"] = torch.zeros(ways, dtype=dtype)
    return p


def batch_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float = BN_EPS,
               fused: bool = False) -> torch.Tensor:
    """Batch norm with the batch's own statistics (biased variance), no running stats (Ioffe & Szegedy 2015).

    Args:
        x: ``(N, C, H, W)`` feature maps.
        w, b: per-channel scale and shift.
        eps: added to the variance.
        fused: ``F.batch_norm``'s fused kernels, as learn2learn uses; valid only outside
            ``vmap``, where their double backward fails with a batched cotangent (iMAML's
            reverse-over-reverse HVP). False: the same function written out (one reduction
            for both statistics, the scale w/sqrt(var + eps) formed per channel), valid anywhere.

    Returns:
        The normalised, scaled and shifted ``x``. The two forms agree to rounding.
    """
    if fused:
        return F.batch_norm(x, None, None, w, b, training=True, eps=eps)
    var, mean = torch.var_mean(x, dim=(0, 2, 3), unbiased=False, keepdim=True)
    return (x - mean) * (w.view(1, -1, 1, 1) * torch.rsqrt(var + eps)) + b.view(1, -1, 1, 1)


def conv4(params: Params, x: torch.Tensor, stride: int = 2, pool: bool = False, head: str = "mean",
          bn_eps: float = BN_EPS, pad_block2: bool = False, fused_bn: bool = False,
          bn_last: bool = False) -> torch.Tensor:
    """The conv4 forward: logits ``(N, ways)`` of images ``x``.

    ``pad_block2``: the release's ``ZeroPad2d((0, 1, 0, 1))`` (right, bottom) after block 2;
    ``fused_bn``: :func:`batch_norm`'s ``fused``; ``bn_last``: each block is conv → ReLU →
    pool → batch norm (hypertorch) instead of conv → batch norm → ReLU → pool."""
    for i in range(4):
        x = F.conv2d(x, params[f"conv{i}.weight"], params[f"conv{i}.bias"], stride=stride, padding=1)
        if bn_last:
            x = F.max_pool2d(F.relu(x), 2, 2) if pool else F.relu(x)
            x = batch_norm(x, params[f"bn{i}.weight"], params[f"bn{i}.bias"], bn_eps, fused_bn)
            continue
        x = F.relu(batch_norm(x, params[f"bn{i}.weight"], params[f"bn{i}.bias"], bn_eps, fused_bn))
        if pool:
            x = F.max_pool2d(x, 2, 2)
        if pad_block2 and i == 1:
            x = F.pad(x, (0, 1, 0, 1))
    x = x.mean(dim=(2, 3)) if head == "mean" else x.flatten(1)
    return F.linear(x, params["head.weight"], params["head.bias"])


def _features(channels: int, side: int, head: str) -> int:
    """The head's input width: the channels (``mean`` pools space away) or the flattened map."""
    return channels if head == "mean" else channels * side * side


def build(name: str, *, ways: int = 1, seed: int = 0, dtype=torch.float32, head: str = "mean",
          image_size: int = 28, init: str = "maml", arch: str = "maml",
          activation: str = "relu") -> tuple[Params, Callable[[Params, torch.Tensor], torch.Tensor]]:
    """Return (initial params, forward). Names: ``mlp``, ``conv4_omniglot``, ``conv4_miniimagenet``.
    ``head``, ``init`` and ``arch`` apply to the conv4s (``arch`` other than ``maml``: Omniglot only),
    ``activation`` to the MLP."""
    g = torch.Generator().manual_seed(seed)
    check_options(name, head, init, arch, activation)
    if name == "mlp":
        return init_mlp(g, dtype), mlp if activation == "relu" else partial(mlp, activation=activation)
    if name == "conv4_omniglot" and arch == "hypertorch":
        fwd = _conv4_forward(stride=1, pool=True, head=head, bn_eps=RELEASE_BN_EPS, bn_last=True)
        return init_conv4(g, ways, 1, 64, _features(64, image_size // 16, head), dtype, init), fwd
    if name == "conv4_omniglot":
        release = arch == "imaml_release"
        side = image_size
        for i in range(4):  # 3×3 stride-2 pad-1 convolutions; the release pads one row and column after block 2
            side = (side + 2 - 3) // 2 + 1 + (1 if release and i == 1 else 0)
        eps = RELEASE_BN_EPS if release else BN_EPS
        fwd = _conv4_forward(stride=2, pool=False, head=head, bn_eps=eps, pad_block2=release)
        return init_conv4(g, ways, 1, 64, _features(64, side, head), dtype, init), fwd
    if name == "conv4_miniimagenet":
        feat = _features(32, image_size // 16, head)  # four 2×2 max-pools
        return init_conv4(g, ways, 3, 32, feat, dtype, init), _conv4_forward(stride=1, pool=True, head=head)
    raise ValueError(f"model name={name!r} is unknown; allowed: ['mlp', 'conv4_omniglot', 'conv4_miniimagenet']")


def _conv4_forward(**options) -> Callable:
    """``forward(params, x)`` of a conv4, its ``fused`` attribute the same with ``fused_bn=True``."""
    fwd = partial(conv4, **options)
    fwd.fused = partial(conv4, fused_bn=True, **options)
    return fwd


def check_options(name: str, head: str = "mean", init: str = "maml", arch: str = "maml",
                  activation: str = "relu") -> None:
    """ValueError (one line naming the key) for a head / init / arch / activation this model does not have."""
    checks.choice("model.activation", activation, ACTIVATIONS)
    if activation != "relu" and name != "mlp":
        raise ValueError(f"activation={activation!r} applies to the sinusoid MLP only, not {name}; use activation=relu")
    for key, value, allowed in (("head", head, ("mean", "flatten")), ("init", init, INITS), ("arch", arch, ARCHS)):
        checks.choice(f"model.{key}", value, allowed)
    if arch != "maml" and name != "conv4_omniglot":
        raise ValueError(f"model.arch={arch!r} is an Omniglot conv4, not {name!r}; use arch=maml")


def _with_fused(make: Callable, forward: Callable, fn: Callable) -> Callable:
    """``fn`` with ``fn.fused = make(forward.fused)`` when ``forward`` has a fused variant."""
    if hasattr(forward, "fused"):
        fn.fused = make(forward.fused)
    return fn


def cross_entropy_loss(forward):
    """``loss_fn(params, x, y)``: cross-entropy of ``forward``'s logits."""
    def loss_fn(params, x, y):
        return F.cross_entropy(forward(params, x), y)
    loss_fn.forward, loss_fn.criterion = forward, F.cross_entropy  # lets an estimator share the forward
    return _with_fused(cross_entropy_loss, forward, loss_fn)


def accuracy_metric(forward):
    """``metric_fn(params, x, y)``: the fraction of ``forward``'s argmax predictions equal to ``y``."""
    def score(out, y):
        return (out.argmax(-1) == y).to(out.dtype).mean()

    def metric_fn(params, x, y):
        return score(forward(params, x), y)
    metric_fn.forward, metric_fn.score = forward, score
    return _with_fused(accuracy_metric, forward, metric_fn)


def mse_loss(forward):
    """``loss_fn(params, x, y)``: mean squared error of ``forward``'s output."""
    def loss_fn(params, x, y):
        return F.mse_loss(forward(params, x), y)
    loss_fn.forward, loss_fn.criterion = forward, F.mse_loss
    return _with_fused(mse_loss, forward, loss_fn)
