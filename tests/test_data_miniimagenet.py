"""mini-ImageNet: synthetic Ravi-layout and pickle sources for every bad-data path (counts
patched small), validation; the real data (``@pytest.mark.data``) for counts and tasks.

The real-data tests share one module-scoped build whose cache lives in the repo's
git-ignored ``.cache/metagrad``: a cold cache (fresh CI) decodes the 60,000 JPEGs once
(~15 s on 2 shared cores), a warm one memory-maps the 1.27 GB tensor file."""
from __future__ import annotations

import collections
import csv
import io
import pickle
import zipfile
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REAL_ROOT, REPO_CACHE, data_cfg
from PIL import Image

import datasets
from datasets import miniimagenet as mi
from datasets import store

cfg = partial(data_cfg, "miniimagenet")
REAL_DIR = REAL_ROOT / "mini-imagenet"
HAVE_REAL = (REAL_DIR / "images.zip").is_file() and all((REAL_DIR / f"{s}.csv").is_file() for s in mi.SPLITS)
SMALL = {"train": 3, "val": 2, "test": 2}
N = 4  # images per class in the synthetic sets


@pytest.fixture
def small(monkeypatch):
    monkeypatch.setattr(mi, "SPLITS", dict(SMALL))
    monkeypatch.setattr(mi, "PER_CLASS", N)


def _classes():
    return {s: [f"n{s}{i:02d}" for i in range(k)] for s, k in SMALL.items()}


def _jpeg(rng, size=(84, 84)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def make_ravi(root: Path, layout: str = "zip", drop_row: str | None = None, drop_image: str | None = None,
              dup_class: bool = False, header=("filename", "label"), odd_size: str | None = None) -> Path:
    rng = np.random.default_rng(0)
    d = root / "mini-imagenet"
    d.mkdir(parents=True, exist_ok=True)
    images = {}
    for split, classes in _classes().items():
        if dup_class and split == "test":
            classes = [_classes()["train"][0], *classes[1:]]
        rows = []
        for c in classes:
            for j in range(N):
                name = f"{c}{j:08d}.jpg"
                rows.append((name, c))
                images[name] = _jpeg(rng, (100, 90) if name == odd_size else (84, 84))
        with open(d / f"{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(r for r in rows if r[0] != drop_row)
    images.pop(drop_image, None)
    if layout == "zip":
        with zipfile.ZipFile(d / "images.zip", "w", compression=zipfile.ZIP_STORED) as z:
            for name, data in images.items():
                z.writestr(f"images/{name}", data)
    else:
        (d / "images").mkdir()
        for name, data in images.items():
            (d / "images" / name).write_bytes(data)
    return d


def make_pickles(root: Path, n_per_class=N, payload=None) -> Path:
    rng = np.random.default_rng(1)
    d = root / "mini-imagenet"
    d.mkdir(parents=True, exist_ok=True)
    for split, classes in _classes().items():
        data = rng.integers(0, 256, (len(classes) * N, 84, 84, 3), dtype=np.uint8)
        cd = {c: list(range(i * N, i * N + n_per_class)) for i, c in enumerate(classes)}
        obj = payload if payload is not None else {"image_data": data, "class_dict": cd}
        with open(d / f"mini-imagenet-cache-{mi.PKL_MODE[split]}.pkl", "wb") as f:
            pickle.dump(obj, f, protocol=4)
    return d


def no_cache_written(cache: Path) -> bool:
    """Only the checksum memo and lock files: no tensor cache, no temp file."""
    return all(p.name == "sha256.json" or p.name.endswith(".pt.lock") for p in cache.iterdir())


# ---------------------------------------------------------------- synthetic data
@pytest.mark.parametrize("source", ["zip", "folder", "pickles"])
def test_small_sources_build(tmp_path, small, source):
    root = tmp_path / "root"
    make_pickles(root) if source == "pickles" else make_ravi(root, source)
    ds = datasets.build(cfg(root, tmp_path / "cache"))
    assert ds.images.shape == (7, N, 3, 84, 84) and ds.images.dtype == torch.uint8
    assert {s: len(c) for s, c in ds.split_classes().items()} == SMALL
    want = {"pickles": {f"mini-imagenet-cache-{m}.pkl" for m in mi.PKL_MODE.values()},
            "zip": {"images.zip", "train.csv", "val.csv", "test.csv"},
            "folder": {"images/", "train.csv", "val.csv", "test.csv"}}[source]
    assert set(ds.archive_sha256) == want
    xs, ys, xq, yq = ds.sample("test", 3, torch.Generator().manual_seed(0))
    assert xs.shape == (3, 2, 3, 84, 84) and xq.shape == (3, 2, 3, 84, 84) and ys.max() == 1


def test_pickle_pixels_and_normalisation(tmp_path, small):
    d = make_pickles(tmp_path / "root")
    with open(d / "mini-imagenet-cache-validation.pkl", "rb") as f:
        raw = pickle.load(f)
    ds = datasets.build(cfg(tmp_path / "root", tmp_path / "cache"))
    k = ds.class_names.index("nval01")
    want = torch.from_numpy(raw["image_data"][raw["class_dict"]["nval01"][2]]).permute(2, 0, 1)
    assert torch.equal(ds.images[k, 2], want)
    mean, std = torch.tensor(mi.MEAN).view(3, 1, 1), torch.tensor(mi.STD).view(3, 1, 1)
    torch.testing.assert_close(ds._to_float(want[None])[0], (want.float() - mean) / std, rtol=1e-5, atol=1e-5)
    plain = datasets.build(cfg(tmp_path / "root", tmp_path / "cache", dataset={"normalize": False}))
    torch.testing.assert_close(plain._to_float(want[None])[0], want.float() / 255)
    a = ds.sample("val", 2, torch.Generator().manual_seed(5))
    b = ds.sample("val", 2, torch.Generator().manual_seed(5), device="cpu")   # the convert-on-device path
    assert all(torch.equal(u, v) for u, v in zip(a, b))


def test_other_sizes_are_resized_to_84(tmp_path, small):
    make_ravi(tmp_path / "root", odd_size="ntrain0000000001.jpg")
    ds = datasets.build(cfg(tmp_path / "root", tmp_path / "cache"))
    assert ds.images.shape[-2:] == (84, 84)


def test_cache_is_reused_without_decoding(tmp_path, small, monkeypatch):
    make_ravi(tmp_path / "root")
    calls = []
    real_decode = mi.decode_images
    monkeypatch.setattr(mi, "decode_images", lambda *a: calls.append(1) or real_decode(*a))
    a = datasets.build(cfg(tmp_path / "root", tmp_path / "cache"))
    b = datasets.build(cfg(tmp_path / "root", tmp_path / "cache"))
    assert len(calls) == 1 and torch.equal(a.images, b.images)


@pytest.mark.parametrize("kw, match", [
    ({"drop_row": "ntest0100000002.jpg"}, r"test.csv: expected 4 images of class ntest01, found 3"),
    ({"drop_image": "nval0000000003.jpg"}, r"images.zip: 1 of the 28 images listed in the split CSVs are missing"),
    ({"dup_class": True}, r"test.csv: class ntrain00 is also in the train split"),
    ({"header": ("file", "class")}, r"val.csv|train.csv: expected the header 'filename,label'"),
])
def test_bad_ravi_layouts(tmp_path, small, kw, match):
    make_ravi(tmp_path / "root", **kw)
    with pytest.raises(store.DataError, match=match):
        datasets.build(cfg(tmp_path / "root", tmp_path / "cache"))
    assert no_cache_written(tmp_path / "cache")


def test_truncated_zip_and_corrupt_jpeg(tmp_path, small):
    d = make_ravi(tmp_path / "root")
    data = (d / "images.zip").read_bytes()
    (d / "images.zip").write_bytes(data[: len(data) - 200])               # the central directory is cut
    with pytest.raises(store.DataError, match="images.zip.*truncated or corrupt"):
        datasets.build(cfg(tmp_path / "root", tmp_path / "cache"))
    bad = bytearray(data)
    name = b"images/ntest0100000001.jpg"
    at = data.index(name) + len(name) + 400                               # inside that JPEG's stored bytes
    bad[at:at + 50] = b"\0" * 50
    (d / "images.zip").write_bytes(bytes(bad))
    with pytest.raises(store.DataError, match="ntest0100000001.jpg"):
        datasets.build(cfg(tmp_path / "root", tmp_path / "cache2"))
    assert no_cache_written(tmp_path / "cache") and no_cache_written(tmp_path / "cache2")


def test_corrupt_foreign_and_miscounted_pickles(tmp_path, small):
    d = make_pickles(tmp_path / "root")
    p = d / "mini-imagenet-cache-train.pkl"
    p.write_bytes(p.read_bytes()[:5000])
    with pytest.raises(store.DataError, match="cache-train.pkl: not a readable .* truncated or corrupt"):
        datasets.build(cfg(tmp_path / "root", tmp_path / "c1"))
    make_pickles(tmp_path / "r2", payload=collections.Counter("abc"))     # a global outside the allow-list
    with pytest.raises(store.DataError, match="refusing to load"):
        datasets.build(cfg(tmp_path / "r2", tmp_path / "c2"))
    make_pickles(tmp_path / "r3", n_per_class=N - 1)
    with pytest.raises(store.DataError, match="expected 4 images of class ntrain00, found 3"):
        datasets.build(cfg(tmp_path / "r3", tmp_path / "c3"))
    assert all(no_cache_written(tmp_path / c) for c in ("c1", "c2", "c3"))


def test_missing_data_is_one_clear_line(tmp_path):
    with pytest.raises(store.DataError) as e:
        datasets.build(cfg(tmp_path / "empty", tmp_path / "cache"))
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "empty" / "mini-imagenet") in msg
    for part in ("images.zip", "train.csv", "val.csv", "test.csv", "mini-imagenet-cache-", "download"):
        assert part in msg


@pytest.mark.parametrize("over, match", [
    ({"ways": 17}, r"ways=17 exceeds the 16 classes of miniimagenet's val split; use ways <= 16"),
    ({"shots": 590, "query_shots": 15}, r"= 605 exceeds the 600 images per class of miniimagenet"),
    ({"dataset": {"std": [1, 0, 1]}}, r"dataset.std=\[1, 0, 1\]"),
])
def test_validation_errors_before_touching_data(tmp_path, over, match):
    with pytest.raises(ValueError, match=match) as e:
        datasets.build(cfg(tmp_path / "nowhere", tmp_path / "cache", **over))
    assert not isinstance(e.value, store.DataError)


# ---------------------------------------------------------------- real data
@pytest.fixture(scope="module")
def real_ds():
    if not HAVE_REAL:
        pytest.skip(f"real mini-ImageNet not under {REAL_DIR}")
    return datasets.build(cfg(REAL_ROOT, REPO_CACHE, ways=5, shots=1, query_shots=15))


@pytest.mark.data
@pytest.mark.skipif(not HAVE_REAL, reason=f"real mini-ImageNet not under {REAL_DIR}")
def test_real_counts_from_the_csvs_and_zip():
    splits = mi.read_csvs({s: REAL_DIR / f"{s}.csv" for s in mi.SPLITS})   # raises on any count mismatch
    assert {s: len(c) for s, c in splits.items()} == {"train": 64, "val": 16, "test": 20}
    with zipfile.ZipFile(REAL_DIR / "images.zip") as z:
        names = {n for n in z.namelist() if n.endswith(".jpg")}
    listed = {f"images/{f}" for c in splits.values() for fs in c.values() for f in fs}
    assert len(listed) == 60_000 and listed == names


@pytest.mark.data
def test_real_build_shapes_splits_and_root_untouched(real_ds):
    assert real_ds.images.shape == (100, 600, 3, 84, 84)
    sp = {s: set(c) for s, c in real_ds.split_classes().items()}
    assert {s: len(c) for s, c in sp.items()} == {"train": 64, "val": 16, "test": 20}
    assert not (sp["train"] & sp["val"] or sp["train"] & sp["test"] or sp["val"] & sp["test"])
    assert real_ds.archive_sha256["images.zip"] == "73b1ce8834c3e7877274b56639a733cf53ad8284aed46202c0ce6552f8e696a9"
    before = {str(p): p.stat().st_mtime_ns for p in REAL_ROOT.rglob("*")}
    datasets.build(cfg(REAL_ROOT, REPO_CACHE))
    assert {str(p): p.stat().st_mtime_ns for p in REAL_ROOT.rglob("*")} == before


@pytest.mark.data
def test_real_tasks_fixed_by_seed_shaped_and_in_split(real_ds):
    a = real_ds.sample("test", 20, torch.Generator().manual_seed(12345))
    b = real_ds.sample("test", 20, torch.Generator().manual_seed(12345))
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    xs, ys, xq, yq = a
    assert xs.shape == (20, 5, 3, 84, 84) and xq.shape == (20, 75, 3, 84, 84) and xs.dtype == torch.float32
    assert all(torch.equal(torch.bincount(t, minlength=5), torch.full((5,), 15)) for t in yq)
    # map every task image to the test-split image it equals: the first pixel row (one page
    # per image of the memory-mapped cache) finds candidates, then the whole image must match
    names = real_ds.class_names
    test_cls = torch.tensor([names.index(c) for c in real_ds.split_classes()["test"]])
    rows = real_ds.images[test_cls, :, :, 0, :].flatten(2).numpy()         # (20, 600, 3·84)
    by_row: dict[bytes, list] = {}
    for c in range(rows.shape[0]):
        for j in range(rows.shape[1]):
            by_row.setdefault(rows[c, j].tobytes(), []).append((c, j))
    for t in range(20):
        u = torch.round((torch.cat([xs[t], xq[t]]) - real_ds._shift) / real_ds._scale).to(torch.uint8)
        y = torch.cat([ys[t], yq[t]])
        owners: dict[int, set] = {}
        for i in range(len(u)):
            hits = by_row.get(u[i, :, 0, :].flatten().numpy().tobytes(), [])
            cls = {int(test_cls[c]) for c, j in hits if torch.equal(real_ds.images[test_cls[c], j], u[i])}
            assert len(cls) == 1, "a test task image is not (exactly one) test-split image"
            owners.setdefault(int(y[i]), set()).update(cls)
        assert all(len(v) == 1 for v in owners.values()) and len(set().union(*owners.values())) == 5


@pytest.mark.data
def test_real_normalised_inputs_are_standardised(real_ds):
    xs, _, xq, _ = real_ds.sample("train", 8, torch.Generator().manual_seed(0))
    x = torch.cat([xs, xq], 1).transpose(0, 2).flatten(1)                # channels first
    assert x.mean(1).abs().max() < 0.25 and (x.std(1) - 1).abs().max() < 0.25
