"""N-way K-shot classification tasks over a decoded uint8 image tensor.

The images sit in memory as ``images[class, item, C, H, W]`` (uint8); a split is a list of
class indices; no task ever decodes an image. Two samplers, both deterministic functions
of the ``torch.Generator`` they are given:

- ``learn2learn`` (default) — learn2learn 0.2.0's ``TaskDataset`` with ``NWays`` → ``KShots`` →
  ``LoadData`` → ``RemapLabels`` over an ``l2l.data.MetaDataset`` of the split. learn2learn
  samples each task's description (every random draw it makes); the pixels are then
  gathered from the uint8 tensor in one indexing op rather than by learn2learn's per-image
  ``LoadData`` calls — the same tasks and labels as ``TaskDataset.__getitem__`` (tested).
  learn2learn draws from Python's global ``random``; each ``sample`` call draws one seed
  from the torch generator, seeds ``random`` with it (the per-class task rotations are
  drawn from it too) and restores the caller's ``random`` state afterwards, so tasks follow
  the generator and nothing else is disturbed. (Not thread-safe: one sampling thread.)
  learn2learn is imported on first use.
- ``torch`` — the same distribution drawn directly with the generator (vectorised); no
  learn2learn needed. Different draws than ``learn2learn`` for the same seed.

Within a task, ``k = shots + query_shots`` distinct images are drawn per class without
replacement (in random order); the first ``shots`` form the support set, the rest the
query set, as the MAML reference code draws a class's images together and splits them.
"""
from __future__ import annotations

import random
from contextlib import contextmanager

import torch
from torch.utils.data import Dataset

import checks

SAMPLERS = ("learn2learn", "torch")


@contextmanager
def seeded_python_random(seed: int):
    """Seed Python's global ``random`` for learn2learn's transforms; restore it afterwards."""
    state = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(state)


class _SplitImages(Dataset):
    """The images of one split as a flat Dataset for learn2learn: item ``i`` is
    (image, split label). Virtual classes (``class_rot``) rotate a character by 90°·r."""

    def __init__(self, images: torch.Tensor, classes: list[int], class_rot: list[int] | None):
        self.images, self.classes = images, classes
        self.class_rot = class_rot or [0] * len(classes)
        self.per_class = images.shape[1]

    def __len__(self) -> int:
        return len(self.classes) * self.per_class

    def locate(self, i: int) -> tuple[int, int, int]:
        c, j = divmod(i, self.per_class)
        return self.classes[c], j, self.class_rot[c]

    def __getitem__(self, i: int):
        c, j, r = self.locate(i)
        x = self.images[c, j]
        return (torch.rot90(x, r, dims=(-2, -1)) if r else x), i // self.per_class

    def labels_to_indices(self) -> dict[int, list[int]]:
        m = self.per_class
        return {c: list(range(c * m, (c + 1) * m)) for c in range(len(self.classes))}


class TaskSampler:
    """Tasks from ``images[class, item, C, H, W]`` (uint8) restricted to each split's classes.

    ``splits``: split name → list of (class index, rotation quarter-turns) pairs — the
    split's classes; a rotated copy of a class is a separate class when it appears with
    another r. ``task_rotations``: quarter-turns drawn per class per task (MAML's Omniglot
    augmentation) for the splits in ``rotate_splits``; ``(0,)`` disables it.
    ``to_float(uint8) -> float`` maps pixels to model inputs (scaling, inversion, norm)."""

    def __init__(self, images: torch.Tensor, splits: dict[str, list[tuple[int, int]]], *, ways: int,
                 shots: int, query_shots: int, to_float, sampler: str = "learn2learn",
                 task_rotations: tuple[int, ...] = (0,), rotate_splits: tuple[str, ...] = (), name: str = "images",
                 class_names: list[str] | None = None):
        if sampler not in SAMPLERS:
            raise ValueError(f"dataset.sampler={sampler!r} is unknown; allowed: {list(SAMPLERS)}")
        self.images, self.splits, self.to_float, self.sampler, self.name = images, splits, to_float, sampler, name
        self.ways, self.shots, self.query_shots = ways, shots, query_shots
        self.task_rotations, self.rotate_splits = tuple(task_rotations), tuple(rotate_splits)
        self._l2l: dict[tuple, object] = {}
        self.class_names = class_names  # by index of ``images``' first axis (a failure record names them)

    # -- learn2learn plumbing (built lazily per split, ways and k)
    def _taskset(self, split: str, ways: int, k: int):
        key = (split, ways, k)
        if key not in self._l2l:
            import learn2learn as l2l  # heavy import (gym, ...): only when used
            from learn2learn.data.transforms import KShots, LoadData, NWays, RemapLabels
            pairs = self.splits[split]
            view = _SplitImages(self.images, [c for c, _ in pairs], [r for _, r in pairs])
            meta = l2l.data.MetaDataset(view, labels_to_indices=view.labels_to_indices())
            tfs = [NWays(meta, n=ways), KShots(meta, k=k), LoadData(meta), RemapLabels(meta)]
            self._l2l[key] = l2l.data.TaskDataset(meta, task_transforms=tfs, num_tasks=-1)
        return self._l2l[key]

    def _draw_l2l(self, split: str, n: int, ways: int, k: int, seed: int):
        """(images (n, ways, k, C, H, W) uint8, labels (n, ways) int64, rotations (n, ways)).

        learn2learn samples each task's description (NWays → KShots → LoadData → RemapLabels,
        every random draw it makes); the images are then gathered in one indexing op instead
        of learn2learn's per-image ``LoadData`` calls and collation. Same tasks, same labels
        (``TaskDataset.get_task`` on the same description is the test's oracle)."""
        taskset = self._taskset(split, ways, k)
        view = taskset.dataset.dataset
        to_label = taskset.dataset.indices_to_labels
        idx, ys, rots = [], [], []
        with seeded_python_random(seed):
            for _ in range(n):
                desc = taskset.sample_task_description()
                remap = desc[0].transforms[-1].keywords["mapping"]  # RemapLabels' (shuffled) label map
                y = torch.tensor([remap(to_label[d.index]) for d in desc]).view(ways, k)
                if not bool((y == y[:, :1]).all()):
                    raise RuntimeError("learn2learn returned a task whose classes are not contiguous")
                idx.append([view.locate(d.index) for d in desc])
                ys.append(y[:, 0])
                rots.append(torch.tensor([random.choice(self.task_rotations) for _ in range(ways)]))
        cls, item, crot = torch.tensor(idx).unbind(-1)                                   # (n, ways·k) each
        x = _rot90_per_class(self.images[cls.flatten(), item.flatten()], crot.flatten())
        self._last = (cls.view(n, ways, k)[:, :, 0], crot.view(n, ways, k)[:, :, 0])
        return x.view(n, ways, k, *x.shape[1:]), torch.stack(ys), torch.stack(rots)

    def _draw_torch(self, split: str, n: int, ways: int, k: int, g: torch.Generator):
        pairs = self.splits[split]
        cls = torch.tensor([c for c, _ in pairs])
        crot = torch.tensor([r for _, r in pairs])
        m = self.images.shape[1]
        pick = torch.rand(n, len(pairs), generator=g).argsort(dim=1)[:, :ways]          # (n, ways)
        item = torch.rand(n, ways, m, generator=g).argsort(dim=2)[:, :, :k]            # (n, ways, k)
        x = self.images[cls[pick][..., None], item]                                    # (n, ways, k, C, H, W)
        x = _rot90_per_class(x.flatten(0, 1), crot[pick].flatten()).view(x.shape)
        opts = torch.tensor(self.task_rotations)
        rots = opts[torch.randint(len(opts), (n, ways), generator=g)]
        self._last = (cls[pick], crot[pick])
        return x, torch.arange(ways).expand(n, ways), rots

    def sample(self, split: str, n: int, generator: torch.Generator, *, ways: int | None = None,
               shots: int | None = None, query_shots: int | None = None, device=None):
        """``n`` tasks: xs (n, ways·shots, C, H, W), ys (n, ways·shots) int64 in 0..ways−1, xq/yq
        likewise with ``query_shots`` per class; ordered class by class. ``ways`` / ``shots`` /
        ``query_shots`` override the configured ones (e.g. evaluation shots); ``device`` moves
        the uint8 pixels there before the float conversion (4× fewer bytes to copy)."""
        if split not in self.splits:
            raise ValueError(f"split={split!r} is unknown; allowed: {list(self.splits)}")
        ways = ways or self.ways
        shots = shots or self.shots
        query_shots = query_shots or self.query_shots
        check_task_shape(self.name, {split: len(self.splits[split])}, self.images.shape[1], ways, shots, query_shots)
        k = shots + query_shots
        if self.sampler == "torch":
            x, y, rots = self._draw_torch(split, n, ways, k, generator)
        else:
            seed = int(torch.randint(0, 2**62, (), generator=generator))
            x, y, rots = self._draw_l2l(split, n, ways, k, seed)
        if split in self.rotate_splits and any(self.task_rotations):
            x = _rot90_per_class(x.flatten(0, 1), rots.flatten()).view(x.shape)
        else:
            rots = torch.zeros_like(rots)
        self._last = (*self._last, rots)
        if device is not None:
            x, y = x.to(device), y.to(device)
        y = y[:, :, None].expand(n, ways, k)
        xs, xq = x[:, :, :shots].flatten(1, 2), x[:, :, shots:].flatten(1, 2)
        ys, yq = y[:, :, :shots].flatten(1, 2), y[:, :, shots:].flatten(1, 2)
        return self.to_float(xs), ys.contiguous(), self.to_float(xq), yq.contiguous()


    def describe(self, split: str, n: int, generator: torch.Generator, **override) -> list[dict]:
        """What defines each of the ``n`` tasks :meth:`sample` draws from ``generator`` (the same
        draws): its classes in label order (names where known) and each class's quarter-turns."""
        self.sample(split, n, generator, **override)
        cls, class_rot, task_rot = self._last
        names = self.class_names
        return [{"classes": [names[c] if names else c for c in cls[i].tolist()],
                 "rotations": [90 * ((int(a) + int(b)) % 4) for a, b in zip(class_rot[i], task_rot[i])]}
                for i in range(n)]


def _rot90_per_class(x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Rotate ``x[i]`` (…, H, W) by ``r[i]`` quarter-turns counter-clockwise."""
    if not bool((r % 4).any()):
        return x
    out = x.clone()
    for q in (1, 2, 3):
        sel = (r % 4) == q
        if sel.any():
            out[sel] = torch.rot90(x[sel], q, dims=(-2, -1))
    return out


def option(cfg, key: str, defaults: dict):
    """``dataset.<key>`` of ``cfg`` (a DictConfig or a namespace), or its default when unset."""
    d = cfg.dataset
    v = d.get(key) if hasattr(d, "get") else getattr(d, key, None)
    return defaults[key] if v is None else v


def check_tasks(dataset: str, cfg, split_classes: dict[str, int], per_class: int, sampler: str) -> None:
    """The sampler's name, the training task shape and, when ``eval.shots`` / ``eval.query_shots``
    are set, the test task shape (:func:`check_task_shape`)."""
    checks.choice("dataset.sampler", sampler, SAMPLERS, unknown=True)
    q = cfg.query_shots if cfg.query_shots is not None else cfg.shots
    check_task_shape(dataset, split_classes, per_class, cfg.ways, cfg.shots, q)
    ev = cfg.get("eval") if hasattr(cfg, "get") else None
    if ev is not None and (ev.get("shots") is not None or ev.get("query_shots") is not None):
        check_task_shape(dataset, split_classes, per_class, cfg.ways, ev.get("shots") or cfg.shots,
                         ev.get("query_shots") or q, "eval.")


def check_task_shape(dataset: str, split_classes: dict[str, int], per_class: int, ways, shots, query_shots,
                     prefix: str = "") -> None:
    """Config errors before any data is touched: ways ≤ classes in every split, and
    shots + query_shots ≤ images per class."""
    for key, v in ((f"{prefix}ways", ways), (f"{prefix}shots", shots), (f"{prefix}query_shots", query_shots)):
        checks.integer(key, v, 1, f" ({dataset})")
    for split, n in sorted(split_classes.items(), key=lambda kv: kv[1]):  # the smallest split binds
        if ways > n:
            raise ValueError(f"{prefix}ways={ways} exceeds the {n} classes of {dataset}'s {split} split; "
                             f"use ways <= {n}")
    if shots + query_shots > per_class:
        raise ValueError(f"{prefix}shots + {prefix}query_shots = {shots} + {query_shots} = {shots + query_shots} "
                         f"exceeds the {per_class} images per class of {dataset}; use a sum <= {per_class}")
