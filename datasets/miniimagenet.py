"""mini-ImageNet (Vinyals et al. 2016) with the Ravi & Larochelle (2017) split, MAML
protocol (Finn et al. 2017 §5.2: 5-way 1/5-shot, 15 query images per class in training).

Data (under ``<root>/mini-imagenet``, ``<root>/miniimagenet`` or ``<root>``), first match:
- Ravi & Larochelle layout: ``images.zip`` (or an extracted ``images/`` folder) with
  ``train.csv`` / ``val.csv`` / ``test.csv`` (``filename,label``): 64 / 16 / 20 classes ×
  600 images, 84×84 RGB. Images of another size are resized to 84×84 with LANCZOS, as
  the MAML reference's ``proc_images.py`` did.
- learn2learn's caches ``mini-imagenet-cache-{train,validation,test}.pkl`` (dicts with
  ``image_data`` N×84×84×3 uint8 and ``class_dict`` class → indices), read with a
  restricted unpickler that only builds numpy arrays and plain containers.

Decoded once into uint8 ``(100, 600, 3, 84, 84)``: classes sorted by name within each split
(train, val, test), images in file-name order (pickles: ``class_dict`` order).

Model input: ``x = (u/255 − mean) / std`` per channel with ``mean = (120.39586422,
115.59361427, 104.54012653)/255`` and ``std = (70.68188272, 68.27635443, 72.54505529)/255``:
the constants of learn2learn 0.2.0's ``mini_imagenet_tasksets(data_augmentation='lee2019')``
(from MetaOptNet, Lee et al. 2019). The MAML reference code only scales to [0, 1]:
``dataset.normalize: false``.
"""
from __future__ import annotations

import csv
import pickle
from functools import partial
from pathlib import Path

import torch

from . import DATASETS, DTYPES, store
from .tasks import TaskSampler, check_tasks, option

SPLITS = {"train": 64, "val": 16, "test": 20}
PKL_MODE = {"train": "train", "val": "validation", "test": "test"}
PER_CLASS = 600
SIZE = 84
MEAN = (120.39586422, 115.59361427, 104.54012653)
STD = (70.68188272, 68.27635443, 72.54505529)
DEFAULTS = {"normalize": True, "mean": list(MEAN), "std": list(STD), "sampler": "learn2learn", "download": False}
SOURCE_HELP = ("the Ravi & Larochelle images.zip + train/val/test.csv (the layout MAML's README asks for), or "
               "learn2learn's mini-imagenet-cache-*.pkl")


_opt = partial(option, defaults=DEFAULTS)


def validate(cfg) -> None:
    """Config errors (ValueError naming key, value and limit), before any data is touched."""
    for key in ("mean", "std"):
        v = list(_opt(cfg, key))
        if len(v) != 3 or (key == "std" and min(v) <= 0):
            raise ValueError(f"dataset.{key}={v} must be 3 per-channel values in 0..255 units"
                             + (" (all > 0)" if key == "std" else ""))
    check_tasks("miniimagenet", cfg, SPLITS, PER_CLASS, _opt(cfg, "sampler"))


# ---------------------------------------------------------------- locating
def _find(d: Path) -> dict[str, Path] | None:
    csvs = {s: d / f"{s}.csv" for s in SPLITS}
    if all(p.is_file() for p in csvs.values()):
        for img in (d / "images.zip", d / "images"):
            if img.exists():
                return {"images": img, **csvs}
    pkls = {s: d / f"mini-imagenet-cache-{m}.pkl" for s, m in PKL_MODE.items()}
    return {"pickles": d, **pkls} if all(p.is_file() for p in pkls.values()) else None


def _download(root: Path) -> dict[str, Path]:
    dest = root / "mini-imagenet"
    try:
        import learn2learn as l2l
        dest.mkdir(parents=True, exist_ok=True)
        for m in PKL_MODE.values():
            l2l.vision.datasets.MiniImagenet(str(dest), mode=m, download=True)
    except Exception as e:  # noqa: BLE001 — any failure becomes one clear line
        raise store.DataError(f"mini-ImageNet download into {dest} failed ({e}); learn2learn's links are known to "
                              f"die — get {SOURCE_HELP} by hand instead") from e
    return {"pickles": dest, **{s: dest / f"mini-imagenet-cache-{m}.pkl" for s, m in PKL_MODE.items()}}


SOURCE = store.Source("mini-ImageNet", ("mini-imagenet", "miniimagenet"), _find,
                      "images.zip (or images/) with train.csv, val.csv, test.csv, or "
                      "for mini-imagenet-cache-{train,validation,test}.pkl", SOURCE_HELP, _download,
                      "learn2learn's pickles; its links are known to die")


# ---------------------------------------------------------------- reading
def read_csvs(paths: dict[str, Path]) -> dict[str, dict[str, list[str]]]:
    """split → class → sorted file names; counts and disjointness checked."""
    out, seen = {}, {}
    for split, n_cls in SPLITS.items():
        try:
            with open(paths[split], newline="") as f:
                rows = list(csv.reader(f))
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            raise store.DataError(f"{paths[split]}: unreadable split file ({e}); replace it with an intact copy") from e
        if not rows or [c.strip() for c in rows[0]] != ["filename", "label"]:
            raise store.DataError(f"{paths[split]}: expected the header 'filename,label'; this is not a Ravi & "
                                  "Larochelle split file")
        classes: dict[str, list[str]] = {}
        for row in rows[1:]:
            if len(row) == 2:
                classes.setdefault(row[1], []).append(row[0])
        store.check_count(f"classes in the {split} split", n_cls, len(classes), paths[split])
        for c, files in classes.items():
            store.check_count(f"images of class {c}", PER_CLASS, len(set(files)), paths[split])
            if c in seen:
                raise store.DataError(f"{paths[split]}: class {c} is also in the {seen[c]} split; "
                                      "splits must be disjoint")
            seen[c] = split
        out[split] = {c: sorted(classes[c]) for c in sorted(classes)}
    return out


def _to_chw(img) -> torch.Tensor:
    """PIL RGB image → uint8 (3, 84, 84), resized with LANCZOS when it is another size."""
    import numpy as np
    from PIL import Image
    if img.size != (SIZE, SIZE):
        img = img.resize((SIZE, SIZE), Image.Resampling.LANCZOS)
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


def decode_images(src: Path, splits: dict[str, dict[str, list[str]]]) -> dict:
    arc = store.Archive(src)
    try:
        have = set(arc.names())
        wanted = [f"images/{f}" for cls in splits.values() for files in cls.values() for f in files]
        missing = [w for w in wanted if w not in have]
        if missing:
            raise store.DataError(f"{src}: {len(missing):,} of the {len(wanted):,} images listed in the split CSVs are "
                                  f"missing (e.g. {missing[0]}); replace it with an intact copy")
        classes = [c for cls in splits.values() for c in cls]
        out = torch.empty(len(classes), PER_CLASS, 3, SIZE, SIZE, dtype=torch.uint8)
        for ci, files in enumerate(f for cls in splits.values() for f in cls.values()):
            for j, name in enumerate(files):
                out[ci, j] = _to_chw(store.image(arc, f"images/{name}", "RGB"))
        return {"images": out, "classes": classes, "splits": {s: list(c) for s, c in splits.items()}}
    finally:
        arc.close()


class _NumpyOnly(pickle.Unpickler):
    """Unpickler that builds numpy arrays and plain containers only (a pickle can run code)."""
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"),
               ("builtins", "range")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def decode_pickles(paths: dict[str, Path]) -> dict:
    import numpy as np
    blocks, classes, splits = [], [], {}
    for split, n_cls in SPLITS.items():
        p = paths[split]
        try:
            with open(p, "rb") as f:
                d = _NumpyOnly(f).load()
            data, class_dict = d["image_data"], d["class_dict"]
        except Exception as e:  # noqa: BLE001 — truncated, corrupt or foreign pickle
            raise store.DataError(f"{p}: not a readable learn2learn mini-ImageNet cache ({type(e).__name__}: {e}); "
                                  "it is truncated or corrupt — replace it with an intact copy") from e
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 4 or data.shape[3] != 3:
            raise store.DataError(f"{p}: image_data must be an N×H×W×3 uint8 array, found "
                                  f"{getattr(data, 'shape', type(data))} {getattr(data, 'dtype', '')}")
        store.check_count(f"classes in the {split} split", n_cls, len(class_dict), p)
        store.check_count(f"images in the {split} split", n_cls * PER_CLASS, len(data), p)
        for c in sorted(class_dict):
            idx = [int(i) for i in class_dict[c]]
            store.check_count(f"images of class {c}", PER_CLASS, len(set(idx)), p)
            x = torch.from_numpy(np.ascontiguousarray(data[idx])).permute(0, 3, 1, 2)
            if x.shape[-2:] != (SIZE, SIZE):
                from PIL import Image
                x = torch.stack([_to_chw(Image.fromarray(a)) for a in data[idx]])
            blocks.append(x)
            classes.append(c)
        splits[split] = sorted(class_dict)
    if len(set(classes)) != len(classes):
        raise store.DataError(f"{paths['train'].parent}: a class appears in two pickles; splits must be disjoint")
    return {"images": torch.stack(blocks), "classes": classes, "splits": splits}


class MiniImageNet:
    name = "miniimagenet"
    metric = "accuracy"
    model = DATASETS["miniimagenet"].model
    image_size = SIZE

    def __init__(self, cfg):
        validate(cfg)
        self.ways, self.shots = int(cfg.ways), int(cfg.shots)
        self.query_shots = int(cfg.query_shots if cfg.query_shots is not None else cfg.shots)
        self.dtype = DTYPES[cfg.dtype]
        self.normalize = bool(_opt(cfg, "normalize"))
        self.mean, self.std = [float(v) for v in _opt(cfg, "mean")], [float(v) for v in _opt(cfg, "std")]
        self.sampler_name = _opt(cfg, "sampler")

        src, self.archive_sha256, cache = store.sources(SOURCE, cfg, bool(_opt(cfg, "download")))
        layout = "pickles" if "pickles" in src else "ravi"
        meta = {"dataset": "miniimagenet", "sources": self.archive_sha256, "settings": {"layout": layout}}
        path = cache / f"miniimagenet-{store.cache_key(self.archive_sha256, meta['settings'])}.pt"

        def build():
            if layout == "pickles":
                return decode_pickles(src)
            return decode_images(src["images"], read_csvs(src))

        data = store.load_or_build(path, build, meta)
        self.images, self.class_names, self.class_splits = data["images"], data["classes"], data["splits"]
        pos = {c: i for i, c in enumerate(self.class_names)}
        for s, n in SPLITS.items():
            store.check_count(f"{s} classes in the cache", n, len(self.class_splits[s]), path)
        splits = {s: [(pos[c], 0) for c in cs] for s, cs in self.class_splits.items()}
        # x = (u/255 − mean/255) / (std/255) = u·scale + shift, one fused pass per task batch
        mean, std = torch.tensor(self.mean, dtype=torch.float64), torch.tensor(self.std, dtype=torch.float64)
        if not self.normalize:
            mean, std = torch.zeros(3, dtype=torch.float64), torch.full((3,), 255.0, dtype=torch.float64)
        self._scale = (1.0 / std).to(self.dtype).view(3, 1, 1)
        self._shift = (-mean / std).to(self.dtype).view(3, 1, 1)
        self.tasks = TaskSampler(self.images, splits, ways=self.ways, shots=self.shots, query_shots=self.query_shots,
                                 to_float=self._to_float, sampler=self.sampler_name, name="miniimagenet",
                                 class_names=list(self.class_names))

    def _to_float(self, u: torch.Tensor) -> torch.Tensor:
        d = u.device
        return u.to(self.dtype).mul_(self._scale.to(d)).add_(self._shift.to(d))

    def sample(self, split: str, n: int, generator: torch.Generator, **override):
        """See :meth:`datasets.tasks.TaskSampler.sample`; xs is (n, ways·shots, 3, 84, 84)."""
        return self.tasks.sample(split, n, generator, **override)

    def describe(self, split: str, n: int, generator: torch.Generator, **override) -> list[dict]:
        """See :meth:`datasets.tasks.TaskSampler.describe`."""
        return self.tasks.describe(split, n, generator, **override)

    def split_classes(self) -> dict[str, list[str]]:
        return {s: list(c) for s, c in self.class_splits.items()}

    def fingerprint_fields(self) -> dict:
        import hashlib
        import json
        split_digest = hashlib.sha256(json.dumps(self.split_classes(), sort_keys=True).encode()).hexdigest()
        return {"dataset": self.name, "split_protocol": "Ravi & Larochelle 2017 (64/16/20)",
                "split_classes": {s: len(c) for s, c in self.class_splits.items()}, "split_sha256": split_digest,
                "normalize": self.normalize, "mean": self.mean, "std": self.std, "sampler": self.sampler_name,
                "ways": self.ways, "shots": self.shots, "query_shots": self.query_shots,
                "archive_sha256": self.archive_sha256}


def build(cfg) -> MiniImageNet:
    return MiniImageNet(cfg)
