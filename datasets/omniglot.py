"""Omniglot (Lake et al. 2015) few-shot classification, MAML protocol (Finn et al. 2017 §5.2
and reference code; learn2learn 0.2.0's ``omniglot_tasksets``).

Data: ``images_background`` (30 alphabets / 964 characters) and ``images_evaluation``
(20 / 659), 20 images per character, as the two zips (verified by content) or extracted
folders (torchvision's ``omniglot-py/`` layout), under ``<root>/omniglot``,
``<root>/omniglot-py`` or ``<root>``. Decoded once to uint8: greyscale, 28×28 with LANCZOS
(``resample: nearest`` reproduces MAML's resize script, where Pillow silently used
NEAREST on mode-'1' files). Model input ``x = 1 − u/255`` (``invert: false``: the iMAML
release's ``u/255``).

Options (``dataset.*``):

- ``split_seed``, ``split``: the 1,623 characters, sorted by ``set/alphabet/character``, shuffled
  by ``random.Random(split_seed)`` and cut into train / val / test (default 1,100 / 100 / 423;
  the iMAML release, aravindr93/imaml_dev: seed 123 and 1,200 / 0 / 423). See :func:`split_classes`.
- ``test_split``: ``standard`` or ``release_leaky`` (the release's evaluation characters,
  :func:`release_eval_classes`; mostly meta-training characters, so never the default).
- ``rotations``, ``rotation_mode``, ``rotate_splits``: quarter-turn augmentation. ``per_task``
  (MAML reference, learn2learn, the iMAML release): each class of a task gets one rotation,
  shared by its support and query images. ``new_classes`` (Santoro et al. 2016; Vinyals et
  al. 2016; Reptile's reference code): each (character, rotation) is a class of its own, within
  the character's split, for the splits of ``rotate_splits`` (the others keep each character
  unrotated, as Reptile's test characters).
- ``sampler``: see :mod:`datasets.tasks`.
"""
from __future__ import annotations

import random
import sys
from functools import partial
from pathlib import Path

import torch

import checks

from . import DATASETS, DTYPES, store
from .tasks import TaskSampler, check_tasks, option

SETS = {"images_background": (30, 964, 19_280), "images_evaluation": (20, 659, 13_180)}
PER_CLASS = 20
N_CLASSES = 1623
SPLITS = ("train", "val", "test")
TEST_SPLITS = ("standard", "release_leaky")
RELEASE_EVAL_SEED, RELEASE_TRAIN_SIZE = 12345, 1200  # imaml_dev examples/measure_accuracy.py
DEFAULTS = {"split_seed": 1, "split": {"train": 1100, "val": 100, "test": 423}, "test_split": "standard",
            "rotations": [0, 90, 180, 270], "rotation_mode": "per_task", "rotate_splits": list(SPLITS),
            "image_size": 28, "resample": "lanczos", "invert": True, "sampler": "learn2learn",
            "download": False}
SOURCE_HELP = ("https://github.com/brendenlake/omniglot (python/images_background.zip and "
               "python/images_evaluation.zip)")


_opt = partial(option, defaults=DEFAULTS)


def _sizes(cfg) -> dict[str, int]:
    s = _opt(cfg, "split")
    return {k: int(s[k]) for k in SPLITS}


def validate(cfg) -> None:
    """Config errors (ValueError naming key, value and limit), before any data is touched."""
    sizes = _sizes(cfg)
    if sizes["train"] < 1 or sizes["test"] < 1 or sizes["val"] < 0 or sum(sizes.values()) != N_CLASSES:
        raise ValueError(f"dataset.split={sizes} must have train and test >= 1, val >= 0 (0: no validation) "
                         f"and sum to the {N_CLASSES} Omniglot characters")
    checks.choice("dataset.test_split", _opt(cfg, "test_split"), TEST_SPLITS,
                  " (release_leaky: the iMAML release's evaluation characters, mostly training characters)")
    rots = list(_opt(cfg, "rotations"))
    if not rots or any(r not in (0, 90, 180, 270) for r in rots) or len(set(rots)) != len(rots):
        raise ValueError(f"dataset.rotations={rots} must be distinct values from [0, 90, 180, 270]")
    mode = checks.choice("dataset.rotation_mode", _opt(cfg, "rotation_mode"), ("per_task", "new_classes"))
    checks.subset("dataset.rotate_splits", list(_opt(cfg, "rotate_splits")), SPLITS)
    checks.choice("dataset.resample", _opt(cfg, "resample"), ("lanczos", "nearest"))
    rotated = set(_opt(cfg, "rotate_splits"))
    if _opt(cfg, "test_split") == "release_leaky":
        sizes = dict(sizes, test=N_CLASSES - RELEASE_TRAIN_SIZE)
    classes = {k: v * (len(rots) if mode == "new_classes" and k in rotated else 1) for k, v in sizes.items() if v > 0}
    check_tasks("omniglot", cfg, classes, PER_CLASS, _opt(cfg, "sampler"))


# ---------------------------------------------------------------- data
def _find(d: Path) -> dict[str, Path] | None:
    found = {}
    for s in SETS:
        if (d / f"{s}.zip").is_file():
            found[s] = d / f"{s}.zip"
        elif (d / s).is_dir():
            found[s] = d / s
    return found if len(found) == len(SETS) else None


def _download(root: Path) -> dict[str, Path]:
    from torchvision.datasets import Omniglot as TVOmniglot
    try:
        for background in (True, False):
            TVOmniglot(str(root), background=background, download=True)
    except Exception as e:  # noqa: BLE001 — any failure becomes one clear line
        raise store.DataError(f"Omniglot download into {root / 'omniglot-py'} failed ({e}); get the zips from "
                              f"{SOURCE_HELP} instead") from e
    return {s: root / "omniglot-py" / s for s in SETS}


SOURCE = store.Source("Omniglot", ("omniglot", "omniglot-py"), _find,
                      "images_background.zip and images_evaluation.zip (or the extracted images_background/ "
                      "and images_evaluation/ folders)", f"them from {SOURCE_HELP}", _download,
                      "torchvision; needs a writable root")


def index(archives: dict[str, store.Archive]) -> dict[str, list[str]]:
    """Class key ``set/alphabet/character`` → sorted member names; counts checked per set."""
    classes: dict[str, list[str]] = {}
    for s, arc in archives.items():
        alphabets, n_img, n_chr = set(), 0, 0
        for name in arc.names():
            parts = name.split("/")
            if len(parts) != 4 or parts[0] != s or not name.lower().endswith(".png"):
                continue
            alphabets.add(parts[1])
            classes.setdefault("/".join(parts[:3]), []).append(name)
            n_img += 1
        n_chr = sum(1 for k in classes if k.startswith(s + "/"))
        want = SETS[s]
        if (len(alphabets), n_chr, n_img) != want:
            raise store.DataError(f"{arc.path}: expected {want[0]} alphabets / {want[1]:,} characters / "
                                  f"{want[2]:,} images, found {len(alphabets)} / {n_chr:,} / {n_img:,} — the data is "
                                  f"incomplete or not the Omniglot release; get intact copies from {SOURCE_HELP}")
    for k, files in classes.items():
        store.check_count(f"images in character {k}", PER_CLASS, len(files), "Omniglot")
    return {k: sorted(classes[k]) for k in sorted(classes)}


def decode(archives: dict[str, store.Archive], classes: dict[str, list[str]], size: int, resample: str) -> dict:
    """All images as uint8 ``(1623, 20, 1, size, size)`` (greyscale, not yet inverted)."""
    import numpy as np
    from PIL import Image
    method = Image.Resampling.LANCZOS if resample == "lanczos" else Image.Resampling.NEAREST
    out = torch.empty(len(classes), PER_CLASS, 1, size, size, dtype=torch.uint8)
    for ci, (key, files) in enumerate(classes.items()):
        arc = archives[key.split("/")[0]]
        for j, name in enumerate(files):
            a = np.asarray(store.image(arc, name, "L").resize((size, size), method))
            out[ci, j, 0] = torch.from_numpy(a.copy())
    return {"images": out, "classes": list(classes)}


def split_classes(keys: list[str], seed: int, sizes: dict[str, int],
                  test_split: str = "standard") -> dict[str, list[int]]:
    """Indices into ``keys`` per split: one seeded permutation of the sorted list cut
    into consecutive slices, so the splits are disjoint and independent of listing order.
    ``test_split='release_leaky'``: the test split is :func:`release_eval_classes` instead.

    The iMAML release shuffles ``list(range(1623))`` with ``random.seed(123)`` and cuts at
    1,200, over the characters of ``images_background`` then ``images_evaluation``, alphabets
    sorted, characters in ``os.listdir`` order: seed 123 with sizes 1,200 / 0 / 423 here is its
    split exactly when that listing was sorted."""
    ordered = sorted(keys)
    pos = {k: i for i, k in enumerate(keys)}
    perm = list(ordered)
    random.Random(seed).shuffle(perm)  # = random.seed(seed); random.shuffle(list(range(n))) applied to the list
    out, start = {}, 0
    for s in SPLITS:
        out[s] = [pos[k] for k in perm[start:start + sizes[s]]]
        start += sizes[s]
    if test_split == "release_leaky":
        out["test"] = release_eval_classes(keys)
    return out


def release_eval_classes(keys: list[str]) -> list[int]:
    """The characters the iMAML release tests on (``examples/measure_accuracy.py``:
    ``random.seed(12345)``, ``random.shuffle`` of ``range(1623)``, ``OmniglotTask(train=False)``
    takes ``chars[1200:]``), as indices into ``keys``, the characters in sorted order."""
    ordered = sorted(keys)
    pos = {k: i for i, k in enumerate(keys)}
    perm = list(ordered)
    random.Random(RELEASE_EVAL_SEED).shuffle(perm)
    return [pos[k] for k in perm[RELEASE_TRAIN_SIZE:]]


class Omniglot:
    name = "omniglot"
    metric = "accuracy"
    model = DATASETS["omniglot"].model

    def __init__(self, cfg):
        validate(cfg)
        g = lambda k: _opt(cfg, k)  # noqa: E731
        self.image_size, self.resample, self.invert = int(g("image_size")), g("resample"), bool(g("invert"))
        self.split_seed, self.split_sizes, self.test_split = int(g("split_seed")), _sizes(cfg), g("test_split")
        self.rotations, self.rotation_mode = [int(r) for r in g("rotations")], g("rotation_mode")
        self.rotate_splits = [s for s in SPLITS if s in g("rotate_splits")]
        self.ways, self.shots = int(cfg.ways), int(cfg.shots)
        self.query_shots = int(cfg.query_shots if cfg.query_shots is not None else cfg.shots)
        self.dtype = DTYPES[cfg.dtype]
        self.sampler_name = g("sampler")

        sources, self.archive_sha256, cache = store.sources(SOURCE, cfg, bool(g("download")))
        settings = {"size": self.image_size, "resample": self.resample}
        meta = {"dataset": "omniglot", "sources": self.archive_sha256, "settings": settings}
        path = cache / f"omniglot-{store.cache_key(self.archive_sha256, settings)}.pt"

        def build():
            archives = {s: store.Archive(p) for s, p in sources.items()}
            try:
                return decode(archives, index(archives), self.image_size, self.resample)
            finally:
                for a in archives.values():
                    a.close()

        data = store.load_or_build(path, build, meta)
        self.images, self.class_keys = data["images"], data["classes"]
        store.check_count("Omniglot characters in the cache", N_CLASSES, len(self.class_keys), path)
        self.split_index = split_classes(self.class_keys, self.split_seed, self.split_sizes, self.test_split)
        self.test_train_overlap = len(set(self.split_index["test"]) & set(self.split_index["train"]))
        if self.test_split == "release_leaky":
            print(f"WARNING: dataset.test_split=release_leaky — {self.test_train_overlap} of the "
                  f"{len(self.split_index['test'])} test characters are meta-training characters (the iMAML "
                  "release's evaluation split); the test metric is not a held-out measure", file=sys.stderr, flush=True)
        quarter = [r // 90 for r in self.rotations]
        if self.rotation_mode == "new_classes":
            splits = {s: [(c, q) for c in cs for q in (quarter if s in self.rotate_splits else [0])]
                      for s, cs in self.split_index.items()}
            task_rot = (0,)
        else:
            splits = {s: [(c, 0) for c in cs] for s, cs in self.split_index.items()}
            task_rot = tuple(quarter)
        self.tasks = TaskSampler(self.images, splits, ways=self.ways, shots=self.shots, query_shots=self.query_shots,
                                 to_float=self._to_float, sampler=self.sampler_name, name="omniglot",
                                 task_rotations=task_rot, rotate_splits=tuple(self.rotate_splits),
                                 class_names=list(self.class_keys))

    def _to_float(self, u: torch.Tensor) -> torch.Tensor:
        """``1 − u/255`` (or ``u/255`` without inversion) in one fused pass."""
        if self.invert:
            return u.to(self.dtype).mul_(-1.0 / 255.0).add_(1.0)
        return u.to(self.dtype).mul_(1.0 / 255.0)

    def sample(self, split: str, n: int, generator: torch.Generator, **override):
        """See :meth:`datasets.tasks.TaskSampler.sample`; xs is (n, ways·shots, 1, 28, 28)."""
        return self.tasks.sample(split, n, generator, **override)

    def describe(self, split: str, n: int, generator: torch.Generator, **override) -> list[dict]:
        """See :meth:`datasets.tasks.TaskSampler.describe`."""
        return self.tasks.describe(split, n, generator, **override)

    def has_split(self, split: str) -> bool:
        """Whether ``split`` has classes to sample (``val`` may be configured empty)."""
        return len(self.split_index.get(split, ())) > 0

    def split_record(self) -> dict:
        """The class split as a run records it (``summary.json`` ``data``)."""
        return {"split_seed": self.split_seed, "split_sizes": {s: len(v) for s, v in self.split_index.items()},
                "test_split": self.test_split, "test_train_overlap": self.test_train_overlap}

    def split_classes(self) -> dict[str, list[str]]:
        """Split name → its characters' keys (``set/alphabet/character``)."""
        return {s: [self.class_keys[i] for i in idx] for s, idx in self.split_index.items()}

    def fingerprint_fields(self) -> dict:
        import hashlib
        import json
        split_digest = hashlib.sha256(json.dumps(self.split_classes(), sort_keys=True).encode()).hexdigest()
        fields = {"dataset": self.name, "split_protocol": "sorted-characters shuffled by random.Random(split_seed)",
                  "split_seed": self.split_seed, "split_sizes": self.split_sizes, "split_sha256": split_digest,
                  "rotations": self.rotations, "rotation_mode": self.rotation_mode, "rotate_splits": self.rotate_splits,
                  "image_size": self.image_size, "resample": self.resample, "invert": self.invert,
                  "sampler": self.sampler_name, "ways": self.ways, "shots": self.shots,
                  "query_shots": self.query_shots, "archive_sha256": self.archive_sha256}
        if self.test_split != "standard":  # (the standard split keeps its earlier fingerprints)
            fields.update(test_split=self.test_split, test_train_overlap=self.test_train_overlap)
        return fields


def build(cfg) -> Omniglot:
    return Omniglot(cfg)
