"""Omniglot: synthetic archives for every bad-data path (counts patched small), validation,
split disjointness; the real data (``@pytest.mark.data``) for counts, splits, tasks."""
from __future__ import annotations

import io
import random
import zipfile
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import HAVE_OMNIGLOT, REAL_ROOT, REPO_CACHE, data_cfg
from PIL import Image

import datasets
from datasets import omniglot, store

cfg = partial(data_cfg, "omniglot")

# small synthetic release: alphabet → characters, per set
SMALL = {"images_background": {"Alpha": 3, "Beta": 1}, "images_evaluation": {"Gamma": 2}}


@pytest.fixture
def small(monkeypatch):
    """Patch the expected counts to the small release; split 2 / 2 / 2."""
    sets = {s: (len(a), sum(a.values()), sum(a.values()) * omniglot.PER_CLASS) for s, a in SMALL.items()}
    monkeypatch.setattr(omniglot, "SETS", sets)
    monkeypatch.setattr(omniglot, "N_CLASSES", 6)
    return {"split": {"train": 2, "val": 2, "test": 2}}


def _png(rng) -> bytes:
    im = Image.fromarray(rng.random((105, 105)) > 0.3).convert("1")
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def make_release(root: Path, layout: str = "zip", drop: str | None = None, corrupt: str | None = None) -> Path:
    """Write the small release under root/omniglot (zips) or root/omniglot-py (folders)."""
    rng = np.random.default_rng(0)
    where = root / ("omniglot" if layout == "zip" else "omniglot-py")
    where.mkdir(parents=True, exist_ok=True)
    for s, alphabets in SMALL.items():
        files = {}
        for a, n in alphabets.items():
            for c in range(1, n + 1):
                for j in range(1, omniglot.PER_CLASS + 1):
                    files[f"{s}/{a}/character{c:02d}/{c:04d}_{j:02d}.png"] = _png(rng)
        files.pop(drop, None)
        if corrupt in files:
            files[corrupt] = b"\x89PNG not really"
        if layout == "zip":
            with zipfile.ZipFile(where / f"{s}.zip", "w") as z:
                for name, data in files.items():
                    z.writestr(name, data)
        else:
            for name, data in files.items():
                (where / name).parent.mkdir(parents=True, exist_ok=True)
                (where / name).write_bytes(data)
    return where


def no_cache_written(cache: Path) -> bool:
    """Only the checksum memo and lock files: no tensor cache, no temp file."""
    return all(p.name == "sha256.json" or p.name.endswith(".pt.lock") for p in cache.iterdir())


def snapshot(root: Path) -> dict:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


# ---------------------------------------------------------------- synthetic data
@pytest.mark.parametrize("layout", ["zip", "folder"])
def test_small_release_builds_from_read_only_root(tmp_path, small, layout):
    root = tmp_path / "root"
    make_release(root, layout)
    before = snapshot(root)
    for p in root.rglob("*"):
        p.chmod(0o555 if p.is_dir() else 0o444)
    root.chmod(0o555)
    try:
        ds = datasets.build(cfg(root, tmp_path / "cache", dataset=small))
    finally:
        for p in [root, *root.rglob("*")]:
            p.chmod(0o755)
    assert snapshot(root) == before                                      # nothing written under the root
    assert ds.images.shape == (6, 20, 1, 28, 28) and ds.images.dtype == torch.uint8
    assert set(ds.archive_sha256) == ({"images_background.zip", "images_evaluation.zip"} if layout == "zip"
                                      else {"images_background/", "images_evaluation/"})
    xs, ys, xq, yq = ds.sample("train", 3, torch.Generator().manual_seed(0))
    assert xs.shape == (3, 2, 1, 28, 28) and xq.shape == (3, 2, 1, 28, 28)
    assert 0.0 <= float(xs.min()) and float(xs.max()) <= 1.0


def test_cache_is_reused_without_decoding(tmp_path, small, monkeypatch):
    make_release(tmp_path / "root")
    calls = []
    real_decode = omniglot.decode
    monkeypatch.setattr(omniglot, "decode", lambda *a: calls.append(1) or real_decode(*a))
    c = cfg(tmp_path / "root", tmp_path / "cache", dataset=small)
    a = datasets.build(c)
    b = datasets.build(c)
    assert len(calls) == 1 and torch.equal(a.images, b.images)
    datasets.build(cfg(tmp_path / "root", tmp_path / "cache", dataset={**small, "resample": "nearest"}))
    assert len(calls) == 2                                               # other decode settings: own cache


def test_pixels_lanczos_and_inversion(tmp_path, small):
    make_release(tmp_path / "root")
    ds = datasets.build(cfg(tmp_path / "root", tmp_path / "cache", dataset=small))
    with zipfile.ZipFile(tmp_path / "root" / "omniglot" / "images_background.zip") as z:
        raw = Image.open(io.BytesIO(z.read("images_background/Alpha/character01/0001_01.png")))
        want = np.asarray(raw.convert("L").resize((28, 28), Image.Resampling.LANCZOS)).copy()
    k = ds.class_keys.index("images_background/Alpha/character01")
    assert np.array_equal(ds.images[k, 0, 0].numpy(), want)
    x = ds._to_float(ds.images[k, :1])
    torch.testing.assert_close(x[0, 0], 1.0 - torch.from_numpy(want).float() / 255)


@pytest.mark.parametrize("layout", ["zip", "folder"])
def test_wrong_counts_name_expected_and_found(tmp_path, small, layout):
    make_release(tmp_path / "root", layout, drop="images_evaluation/Gamma/character02/0002_07.png")
    with pytest.raises(store.DataError, match=r"expected 1 alphabets / 2 characters / 40 images, found 1 / 2 / 39"):
        datasets.build(cfg(tmp_path / "root", tmp_path / "cache", dataset=small))
    assert not list((tmp_path / "cache").glob("*.pt"))


def test_truncated_zip_gives_error_and_no_cache(tmp_path, small):
    where = make_release(tmp_path / "root")
    z = where / "images_background.zip"
    z.write_bytes(z.read_bytes()[:3000])
    with pytest.raises(store.DataError, match="images_background.zip.*truncated or corrupt"):
        datasets.build(cfg(tmp_path / "root", tmp_path / "cache", dataset=small))
    assert no_cache_written(tmp_path / "cache")


@pytest.mark.parametrize("layout", ["zip", "folder"])
def test_corrupt_image_gives_error_and_no_cache(tmp_path, small, layout):
    make_release(tmp_path / "root", layout, corrupt="images_evaluation/Gamma/character02/0002_20.png")
    with pytest.raises(store.DataError, match="cannot decode images_evaluation/Gamma/character02/0002_20.png"):
        datasets.build(cfg(tmp_path / "root", tmp_path / "cache", dataset=small))
    assert no_cache_written(tmp_path / "cache")


def test_missing_data_is_one_clear_line_and_never_downloads(tmp_path, monkeypatch):
    import torchvision.datasets
    monkeypatch.setattr(torchvision.datasets, "Omniglot", lambda *a, **k: pytest.fail("download attempted"))
    with pytest.raises(store.DataError) as e:
        datasets.build(cfg(tmp_path / "empty", tmp_path / "cache"))
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "empty" / "omniglot") in msg
    assert "images_background.zip" in msg and "images_evaluation.zip" in msg and "github.com/brendenlake" in msg


# ---------------------------------------------------------------- validation (no data needed)
@pytest.mark.parametrize("over, match", [
    ({"ways": 424}, r"ways=424 exceeds the 100 classes of omniglot's val split; use ways <= 100"),
    ({"ways": 101}, r"ways=101 exceeds the 100 classes of omniglot's val split"),
    ({"shots": 15, "query_shots": 6}, r"shots \+ query_shots = 15 \+ 6 = 21 exceeds the 20 images per class"),
    ({"shots": 20, "query_shots": None}, r"= 40 exceeds the 20 images per class"),
    ({"eval": {"shots": 10, "query_shots": 11}}, r"eval.shots \+ eval.query_shots = 10 \+ 11"),
    ({"shots": 0}, r"shots=0 must be an integer >= 1"),
    ({"dataset": {"split": {"train": 1100, "val": 100, "test": 400}}}, r"dataset.split=.*sum to the 1623"),
    ({"dataset": {"rotations": [0, 45]}}, r"dataset.rotations=\[0, 45\]"),
    ({"dataset": {"rotation_mode": "spin"}}, r"dataset.rotation_mode='spin'"),
    ({"dataset": {"sampler": "numpy"}}, r"dataset.sampler='numpy' is unknown"),
])
def test_validation_errors_before_touching_data(tmp_path, over, match):
    c = cfg(tmp_path / "no-such-root", tmp_path / "cache", **over)
    with pytest.raises(ValueError, match=match) as e:
        datasets.build(c)
    assert not isinstance(e.value, store.DataError)                     # a config error, not a data error


def test_new_classes_mode_multiplies_the_class_pool(tmp_path):
    c = cfg(tmp_path / "x", tmp_path / "c", ways=400, dataset={"rotation_mode": "new_classes"})
    datasets.validate(c)                                                 # 400 ≤ 4 × 100 val classes
    with pytest.raises(ValueError, match="ways=401 exceeds the 400 classes of omniglot's val split"):
        datasets.validate(cfg(tmp_path / "x", tmp_path / "c", ways=401, dataset={"rotation_mode": "new_classes"}))


# ---------------------------------------------------------------- split
def test_learn2learn_sampler_gathers_exactly_what_learn2learn_loads():
    """The learn2learn sampler takes learn2learn's task descriptions and gathers the images
    itself; the oracle is learn2learn's own ``TaskDataset`` item (per-image LoadData,
    RemapLabels, collation) drawn from the same Python ``random`` state."""
    pytest.importorskip("learn2learn")
    from datasets.tasks import TaskSampler, _rot90_per_class, seeded_python_random
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (12, 6, 1, 5, 5), dtype=torch.uint8, generator=g)
    # virtual classes: a character under another rotation is another class
    splits = {"train": [(c, r) for c in range(6) for r in (0, 1)] + [(7, 3)], "test": [(c, 0) for c in range(8, 12)]}
    ts = TaskSampler(images, splits, ways=4, shots=2, query_shots=3, to_float=lambda u: u.float(),
                     task_rotations=(0, 1, 2, 3), rotate_splits=("train",))
    for split, n in (("train", 5), ("test", 3)):
        x, y, rots = ts._draw_l2l(split, n, 4, 5, seed=123)
        taskset = ts._taskset(split, 4, 5)
        with seeded_python_random(123):
            for i in range(n):
                xo, yo = taskset[0]  # learn2learn's LoadData → RemapLabels → collate
                ro = [random.choice(ts.task_rotations) for _ in range(4)]
                assert torch.equal(x[i].flatten(0, 1), xo)
                assert torch.equal(y[i].repeat_interleave(5), yo)
                assert rots[i].tolist() == ro
        assert len({tuple(t.tolist()) for t in y}) > 1  # RemapLabels shuffles: labels differ between tasks
    # the full sample() is unchanged in shape and label layout
    xs, ys, xq, yq = ts.sample("train", 2, torch.Generator().manual_seed(1))
    assert xs.shape == (2, 8, 1, 5, 5) and xq.shape == (2, 12, 1, 5, 5)
    assert (ys.view(2, 4, 2) == yq.view(2, 4, 3)[:, :, :1]).all()
    assert _rot90_per_class(images[:2, 0], torch.tensor([0, 4])).equal(images[:2, 0])


def test_split_is_disjoint_complete_and_independent_of_listing_order():
    keys = sorted(f"images_background/A{i // 40}/character{i % 40:02d}" for i in range(1623))
    sizes = {"train": 1100, "val": 100, "test": 423}
    a = omniglot.split_classes(keys, 1, sizes)
    named = {s: {keys[i] for i in idx} for s, idx in a.items()}
    assert {s: len(v) for s, v in named.items()} == sizes
    assert not (named["train"] & named["val"] or named["train"] & named["test"] or named["val"] & named["test"])
    assert set().union(*named.values()) == set(keys)
    shuffled = list(keys)
    random.Random(7).shuffle(shuffled)                                   # another listing order, same split
    b = omniglot.split_classes(shuffled, 1, sizes)
    assert {s: {shuffled[i] for i in idx} for s, idx in b.items()} == named
    c = omniglot.split_classes(keys, 2, sizes)                           # another seed, another split
    assert {keys[i] for i in c["test"]} != named["test"]


# ---------------------------------------------------------------- real data
def real_cfg(**kw):
    return cfg(REAL_ROOT, REPO_CACHE, **kw)


@pytest.fixture(scope="module")
def real_ds():
    if not HAVE_OMNIGLOT:
        pytest.skip(f"real Omniglot zips not under {REAL_ROOT}/omniglot")
    return datasets.build(real_cfg(ways=5))


@pytest.fixture(scope="module")
def lookup(real_ds):
    return build_lookup(real_ds)


def build_lookup(real_ds):
    """hash of an image's bytes under each rotation → {(class, quarter-turns)}."""
    table: dict[int, set] = {}
    imgs = real_ds.images[:, :, 0]
    for q in range(4):
        rot = torch.rot90(imgs, q, dims=(-2, -1)).contiguous().numpy()
        for c in range(rot.shape[0]):
            for j in range(rot.shape[1]):
                table.setdefault(hash(rot[c, j].tobytes()), set()).add((c, q))
    return table


def identify(ds, lookup, x, y):
    """For each label of one task: the (class, rotation) pairs all its images agree on."""
    u = torch.round((1.0 - x[:, 0].double()) * 255).to(torch.uint8).numpy()
    out = {}
    for lab in y.unique().tolist():
        cands = [lookup.get(hash(u[i].tobytes()), set()) for i in (y == lab).nonzero().flatten().tolist()]
        out[lab] = set.intersection(*cands)
    return out


@pytest.mark.data
@pytest.mark.skipif(not HAVE_OMNIGLOT, reason=f"real Omniglot zips not under {REAL_ROOT}/omniglot")
def test_real_counts_and_read_only_root(tmp_path):
    before = snapshot(REAL_ROOT)
    archives = {s: store.Archive(p) for s, p in store.locate(omniglot.SOURCE, REAL_ROOT).items()}
    classes = omniglot.index(archives)                                  # raises on any count mismatch
    assert len(classes) == 1623 and {len(v) for v in classes.values()} == {20}
    assert sum(k.startswith("images_background/") for k in classes) == 964
    ds = datasets.build(real_cfg())
    assert ds.images.shape == (1623, 20, 1, 28, 28) and ds.class_keys == list(classes)
    assert ds.archive_sha256 == {
        "images_background.zip": "cc315a3732fcba4709bd73f200dda094a26dc57b19a0f0cf94c9ebd30344aac4",
        "images_evaluation.zip": "92c28603a0516f9f67c04776d717ab301aecb868ad552ae41f97a925633a27b3"}
    assert snapshot(REAL_ROOT) == before


@pytest.mark.data
def test_real_split_sizes_and_disjointness(real_ds):
    sp = {s: set(v) for s, v in real_ds.split_classes().items()}
    assert {s: len(v) for s, v in sp.items()} == {"train": 1100, "val": 100, "test": 423}
    assert not (sp["train"] & sp["val"] or sp["train"] & sp["test"] or sp["val"] & sp["test"])
    assert set().union(*sp.values()) == set(real_ds.class_keys)
    again = datasets.build(real_cfg()).fingerprint_fields()
    assert real_ds.fingerprint_fields()["split_sha256"] == again["split_sha256"]


@pytest.mark.data
@pytest.mark.parametrize("sampler", ["learn2learn", "torch"])
def test_real_test_set_is_fixed_by_seed(real_ds, sampler):
    if sampler != "learn2learn":
        real_ds = datasets.build(real_cfg(ways=5, dataset={"sampler": sampler}))
    random.seed(99)
    a = real_ds.sample("test", 600, torch.Generator().manual_seed(12345))
    state = random.getstate()
    random.seed(7)                                                       # the caller's global random is irrelevant
    b = real_ds.sample("test", 600, torch.Generator().manual_seed(12345))
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    random.setstate(state)
    c = real_ds.sample("test", 600, torch.Generator().manual_seed(12346))
    assert not torch.equal(a[0], c[0])
    assert random.getstate() == state                                    # sampling left it untouched


@pytest.mark.data
@pytest.mark.parametrize("ways, shots, query, dtype", [(5, 1, 1, "float32"), (20, 5, 15, "float64")])
def test_real_task_shapes_and_labels(ways, shots, query, dtype):
    if not HAVE_OMNIGLOT:
        pytest.skip("no real data")
    ds = datasets.build(real_cfg(ways=ways, shots=shots, query_shots=query, dtype=dtype))
    xs, ys, xq, yq = ds.sample("train", 3, torch.Generator().manual_seed(0))
    assert xs.shape == (3, ways * shots, 1, 28, 28) and xq.shape == (3, ways * query, 1, 28, 28)
    assert xs.dtype == xq.dtype == getattr(torch, dtype) and ys.dtype == yq.dtype == torch.int64
    for y, k in ((ys, shots), (yq, query)):
        assert all(torch.equal(torch.bincount(t, minlength=ways), torch.full((ways,), k)) for t in y)
    assert float(xs.min()) == 0.0 and float(xs.max()) == 1.0 and float(xs.mean()) < 0.3  # inverted: strokes 1
    es, _, eq, eyq = ds.sample("test", 2, torch.Generator().manual_seed(0), shots=2, query_shots=3)  # eval override
    assert es.shape == (2, ways * 2, 1, 28, 28) and eq.shape == (2, ways * 3, 1, 28, 28) and eyq.max() == ways - 1
    with pytest.raises(ValueError, match="shots \\+ query_shots = 15 \\+ 6 = 21 exceeds the 20"):
        ds.sample("test", 1, torch.Generator(), shots=15, query_shots=6)


@pytest.mark.data
@pytest.mark.parametrize("sampler", ["learn2learn", "torch"])
def test_real_tasks_stay_in_their_split_with_per_class_rotation(real_ds, lookup, sampler):
    ds = real_ds if sampler == "learn2learn" else datasets.build(real_cfg(ways=5, dataset={"sampler": sampler}))
    split_idx = {s: set(v) for s, v in ds.split_index.items()}
    rot_seen = []
    for split, n in (("test", 150), ("val", 30), ("train", 30)):
        xs, ys, xq, yq = ds.sample(split, n, torch.Generator().manual_seed(1))
        for t in range(n):
            who = identify(ds, lookup, torch.cat([xs[t], xq[t]]), torch.cat([ys[t], yq[t]]))
            assert all(who[lab] for lab in who), "support and query of a label disagree on class or rotation"
            classes = [{c for c, _ in pairs} for pairs in who.values()]
            assert all(cs & split_idx[split] for cs in classes)
            assert not any(cs <= split_idx[o] for cs in classes for o in split_idx if o != split)
            assert len(set().union(*classes)) >= len(classes)              # distinct labels, distinct characters
            rot_seen += [q for pairs in who.values() if len(pairs) == 1 for _, q in pairs]
    counts = torch.bincount(torch.tensor(rot_seen), minlength=4)
    assert counts.min() > 0.15 * counts.sum(), counts                     # all four rotations, roughly uniform


@pytest.mark.data
def test_real_rotation_switches(lookup):
    if not HAVE_OMNIGLOT:
        pytest.skip("no real data")
    for extra in ({"rotations": [0]}, {"rotate_splits": ["train"]}):
        ds = datasets.build(real_cfg(ways=5, dataset=extra))
        xs, ys, xq, yq = ds.sample("test", 40, torch.Generator().manual_seed(3))
        for t in range(40):
            who = identify(ds, lookup, torch.cat([xs[t], xq[t]]), torch.cat([ys[t], yq[t]]))
            assert all(any(q == 0 for _, q in pairs) for pairs in who.values())


@pytest.mark.data
def test_real_new_classes_mode(lookup):
    if not HAVE_OMNIGLOT:
        pytest.skip("no real data")
    ds = datasets.build(real_cfg(ways=20, dataset={"rotation_mode": "new_classes"}))
    assert ds.fingerprint_fields()["rotation_mode"] == "new_classes"
    test_idx = set(ds.split_index["test"])
    xs, ys, xq, yq = ds.sample("test", 30, torch.Generator().manual_seed(4))
    quarter = []
    for t in range(30):
        who = identify(ds, lookup, torch.cat([xs[t], xq[t]]), torch.cat([ys[t], yq[t]]))
        assert all(pairs and all(c in test_idx for c, _ in pairs) for pairs in who.values())
        quarter += [q for pairs in who.values() for _, q in pairs]
    assert set(quarter) == {0, 1, 2, 3}
