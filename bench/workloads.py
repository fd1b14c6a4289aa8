"""The benchmark's workloads and estimators, composed from the suite's own configs.

Workloads: Omniglot 5-way 1-shot (conv4-64, meta-batch 32, α = 0.4) and 20-way
1-shot (meta-batch 16, α = 0.1), mini-ImageNet 5-way 1-shot (conv4-32 with the flattened
5·5·32 head of MAML's reference code and learn2learn's ``MiniImagenetCNN``, 15 query images
per class, meta-batch 4, α = 0.01) and the sinusoid (MLP 1-40-40-1, K = 10, meta-batch 25,
α = 0.01) — Finn et al. (2017) §5.1–5.2. Tasks come from ``datasets.build`` (the real
samplers over the decoded uint8 cache) when the data is under the data root; otherwise from
random tensors of the same shapes, and the report says so.

Estimators: ``configs/algorithm/<name>.yaml`` through the trainer's composition (iMAML's
λ = 2 and 5 CG steps; iMAML-HF's Newton-CG inner solver), so the benchmark times exactly
what ``train.py`` runs.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from omegaconf import OmegaConf

import datasets
import models
from trainer.config import compose, inner_config

ALGORITHMS = ("maml", "fomaml", "reptile", "imaml", "imaml_hf")
# The faster batching over tasks per model, as measured by this harness (BENCHMARKS.md,
# "Per-task loop vs torch.func.vmap"): vmap turns the small Omniglot convs of a whole
# meta-batch into one grouped conv; on 84×84 mini-ImageNet maps its grouped convs, pooling
# and copies cost more than they save, and a meta-batch of 4 has little to batch.
AUTO_BATCHING = {"mlp": "vmap", "conv4_omniglot": "vmap", "conv4_miniimagenet": "loop"}


@dataclass(frozen=True)
class Workload:
    key: str
    label: str
    dataset: str
    ways: int
    shots: int
    query_shots: int
    meta_batch: int
    inner_lr: float
    head: str = "mean"

    @property
    def overrides(self) -> list[str]:
        return [f"dataset={self.dataset}", f"ways={self.ways}", f"shots={self.shots}",
                f"query_shots={self.query_shots}", f"meta_batch_size={self.meta_batch}", f"inner_lr={self.inner_lr}"]


WORKLOADS = {w.key: w for w in (
    Workload("omniglot-5w1s", "Omniglot 5-way 1-shot", "omniglot", 5, 1, 1, 32, 0.4),
    Workload("omniglot-20w1s", "Omniglot 20-way 1-shot", "omniglot", 20, 1, 1, 16, 0.1),
    Workload("miniimagenet-5w1s", "mini-ImageNet 5-way 1-shot", "miniimagenet", 5, 1, 15, 4, 0.01, "flatten"),
    Workload("sinusoid", "Sinusoid (K=10 points)", "sinusoid", 1, 10, 10, 25, 0.01),
)}


@dataclass
class Problem:
    """One workload made concrete: task source, model, loss and initial weights."""
    workload: Workload
    model: str
    params: dict[str, torch.Tensor]
    loss_fn: object
    metric_fn: object
    loss_name: str
    sample: object                      # (n, generator) -> (xs, ys, xq, yq) on the CPU
    origin: str                         # "real: ..." or "synthetic: <why>"
    sampler: str = ""
    extra: dict = field(default_factory=dict)

    def fresh_params(self, device) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone().to(device) for k, v in self.params.items()}


def _synthetic_sampler(w: Workload, channels: int, size: int):
    """Uniform-noise images in [0, 1] with the task shapes the real sampler gives."""
    def sample(n: int, g: torch.Generator):
        labels = torch.arange(w.ways)
        xs = torch.rand(n, w.ways * w.shots, channels, size, size, generator=g)
        xq = torch.rand(n, w.ways * w.query_shots, channels, size, size, generator=g)
        ys = labels.repeat_interleave(w.shots).expand(n, -1).contiguous()
        yq = labels.repeat_interleave(w.query_shots).expand(n, -1).contiguous()
        return xs, ys, xq, yq
    return sample


def _make_resident(source) -> None:
    """Touch one byte per page of the memory-mapped uint8 image cache, so sampling is timed on
    images in memory, as in a run past its first iterations — not on first-touch page faults
    (a cold mini-ImageNet cache costs up to ~0.3 s on the first meta-batch, falling as pages load)."""
    images = getattr(source, "images", None)
    if isinstance(images, torch.Tensor) and images.numel():
        images.reshape(-1)[::4096].sum()


def build_problem(w: Workload, data_root: str, seed: int = 0, synthetic: bool = False) -> Problem:
    """Tasks, model and initial weights for ``w`` (real data when present, unless ``synthetic``)."""
    cfg = compose([*w.overrides, f"data.root={data_root}", f"seed={seed}"])
    model = {"sinusoid": "mlp", "omniglot": "conv4_omniglot", "miniimagenet": "conv4_miniimagenet"}[w.dataset]
    size, channels = (84, 3) if w.dataset == "miniimagenet" else (28, 1)
    params, forward = models.build(model, ways=w.ways, seed=seed, head=w.head, image_size=size)
    if w.dataset == "sinusoid":
        loss_fn, metric_fn, loss_name = models.mse_loss(forward), None, "mse"
    else:
        loss_fn, metric_fn, loss_name = models.cross_entropy_loss(forward), models.accuracy_metric(forward), "ce"
    why = "--synthetic was given"
    if not synthetic or w.dataset == "sinusoid":  # the sinusoid needs no data: always its real generator
        try:
            source = datasets.build(cfg)
        except (ValueError, OSError) as e:  # DataError is a ValueError: data absent or unreadable
            why = f"no usable {w.dataset} data under {data_root} ({str(e).splitlines()[0][:160]})"
        else:
            _make_resident(source)
            sha = ", ".join(f"{k} {v[:12]}…" for k, v in sorted(source.archive_sha256.items()))
            origin = "real: " + (f"datasets.build, {sha}" if sha else "datasets.build (generated tasks, no files)")
            sampler = str(OmegaConf.select(cfg, "dataset.sampler", default="") or "generator")
            return Problem(w, model, params, loss_fn, metric_fn, loss_name,
                           lambda n, g: source.sample("train", n, g), origin, sampler)
    return Problem(w, model, params, loss_fn, metric_fn, loss_name, _synthetic_sampler(w, channels, size),
                   f"synthetic: {why}; uniform-noise tensors of the real shapes", "synthetic")


@dataclass(frozen=True)
class Estimator:
    name: str          # the algorithm config (maml, ..., imaml_hf)
    estimator: str     # the algorithms/ registry name
    hparams: dict
    inner: dict        # InnerConfig fields except the step count


def estimator(name: str, w: Workload) -> Estimator:
    """The estimator exactly as ``train.py algorithm=<name>`` configures it for ``w``."""
    if name not in ALGORITHMS:
        raise ValueError(f"algorithm {name!r} is unknown; allowed: {list(ALGORITHMS)}")
    cfg = compose([*w.overrides, f"algorithm={name}"])
    inner = inner_config(cfg)
    inner.pop("steps")
    hparams = OmegaConf.to_container(cfg.algorithm.hparams, resolve=True)
    return Estimator(name, str(cfg.algorithm.estimator), dict(hparams), inner)
