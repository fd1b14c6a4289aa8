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

from dataclasses import dataclass

import torch
from omegaconf import OmegaConf

import catalog
import datasets
from trainer.config import compose, inner_config
from trainer.problem import Problem, build_problem

ALGORITHMS = catalog.algorithms()


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


class SyntheticTasks:
    """Uniform-noise images in [0, 1] with the task shapes the real sampler of ``w`` gives."""

    metric = "accuracy"

    def __init__(self, w: Workload):
        self.w, self.model = w, datasets.DATASETS[w.dataset].model
        self.image_size, self.channels = (84, 3) if w.dataset == "miniimagenet" else (28, 1)

    def sample(self, split: str, n: int, g: torch.Generator):
        w, size = self.w, self.image_size
        labels = torch.arange(w.ways)
        xs = torch.rand(n, w.ways * w.shots, self.channels, size, size, generator=g)
        xq = torch.rand(n, w.ways * w.query_shots, self.channels, size, size, generator=g)
        ys = labels.repeat_interleave(w.shots).expand(n, -1).contiguous()
        yq = labels.repeat_interleave(w.query_shots).expand(n, -1).contiguous()
        return xs, ys, xq, yq


def _make_resident(source) -> None:
    """Touch one byte per page of the memory-mapped uint8 image cache, so sampling is timed on
    images in memory, as in a run past its first iterations — not on first-touch page faults."""
    images = getattr(source, "images", None)
    if isinstance(images, torch.Tensor) and images.numel():
        images.reshape(-1)[::4096].sum()


def workload_problem(w: Workload, data_root: str, seed: int = 0, synthetic: bool = False) -> Problem:
    """The trainer's problem for ``w`` on the CPU: real tasks when the data is present (unless
    ``synthetic``), else :class:`SyntheticTasks`; ``origin`` says which, and why."""
    cfg = compose([*w.overrides, f"data.root={data_root}", f"seed={seed}", "device=cpu"])
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
            return build_problem(cfg, source=source, origin=origin)
    return build_problem(cfg, source=SyntheticTasks(w),
                         origin=f"synthetic: {why}; uniform-noise tensors of the real shapes")


def sampler(problem: Problem) -> str:
    """The task sampler behind ``problem``: synthetic, the dataset's ``sampler`` or the generator."""
    if isinstance(problem.source, SyntheticTasks):
        return "synthetic"
    return str(OmegaConf.select(problem.cfg, "dataset.sampler", default="") or "generator")


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
