"""datasets/store.py: data-root resolution, checksum cache, tensor cache, archives."""
from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest
import torch

from datasets import store


def test_data_root_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv(store.ENV_VAR, str(tmp_path / "env"))
    assert store.data_root(tmp_path / "cfg") == (tmp_path / "cfg").resolve()   # config wins
    assert store.data_root(None) == (tmp_path / "env").resolve()              # then the env var
    monkeypatch.delenv(store.ENV_VAR)
    monkeypatch.chdir(tmp_path)
    assert store.data_root(None) == (tmp_path / "data").resolve()             # then ./data
    assert store.cache_dir(None) == (tmp_path / ".cache" / "metagrad").resolve()
    assert (tmp_path / ".cache" / "metagrad").is_dir()


def test_source_sha256_is_right_and_cached_by_stamp(tmp_path, monkeypatch):
    f = tmp_path / "a.bin"
    f.write_bytes(b"x" * 1000)
    cache = store.cache_dir(tmp_path / "cache")
    want = hashlib.sha256(b"x" * 1000).hexdigest()
    assert store.source_sha256(f, cache) == want
    calls = []
    real = hashlib.sha256
    monkeypatch.setattr(store.hashlib, "sha256", lambda *a: calls.append(1) or real(*a))
    assert store.source_sha256(f, cache) == want and calls == []            # same (size, mtime): remembered
    f.write_bytes(b"y" * 1001)                                                # content and size change
    assert store.source_sha256(f, cache) == real(b"y" * 1001).hexdigest() and calls


def test_folder_digest_depends_on_content_and_names(tmp_path):
    cache = store.cache_dir(tmp_path / "cache")
    d = tmp_path / "top"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "f.txt").write_text("one")
    first = store.source_sha256(d, cache)
    (d / "sub" / "f.txt").write_text("two")                                   # same size, new mtime
    second = store.source_sha256(d, cache)
    (d / "sub" / "f.txt").rename(d / "sub" / "g.txt")
    third = store.source_sha256(d, cache)
    assert len({first, second, third}) == 3


def test_load_or_build_reuses_and_rebuilds(tmp_path):
    path, calls = tmp_path / "c.pt", []

    def build():
        calls.append(1)
        return {"images": torch.arange(6, dtype=torch.uint8)}
    a = store.load_or_build(path, build, {"k": 1})
    b = store.load_or_build(path, build, {"k": 1})
    assert len(calls) == 1 and torch.equal(a["images"], b["images"])
    store.load_or_build(path, build, {"k": 2})                                # settings changed: rebuilt
    assert len(calls) == 2
    path.write_bytes(path.read_bytes()[:50])                                  # a damaged cache is not trusted
    c = store.load_or_build(path, build, {"k": 2})
    assert len(calls) == 3 and torch.equal(c["images"], torch.arange(6, dtype=torch.uint8))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt", "c.pt.lock"]  # no temp files left


def test_archive_zip_and_folder_list_alike(tmp_path):
    top = tmp_path / "set_a"
    (top / "x").mkdir(parents=True)
    (top / "x" / "1.txt").write_bytes(b"hi")
    z = tmp_path / "set_a.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("set_a/", b"")
        zf.write(top / "x" / "1.txt", "set_a/x/1.txt")
    for a in (store.Archive(z), store.Archive(top)):
        assert a.names() == ["set_a/x/1.txt"] and a.read("set_a/x/1.txt") == b"hi"
        a.close()


def test_truncated_and_corrupt_zip_are_clear_errors(tmp_path):
    z = tmp_path / "a.zip"
    with zipfile.ZipFile(z, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("a/f.bin", b"0123456789" * 100)
    data = z.read_bytes()
    Path(tmp_path / "trunc.zip").write_bytes(data[: len(data) // 2])
    with pytest.raises(store.DataError, match=r"trunc\.zip.*truncated or corrupt"):
        store.Archive(tmp_path / "trunc.zip")
    bad = bytearray(data)
    bad[data.index(b"0123456789") + 5] ^= 0xFF                                # flip a payload byte: CRC fails
    Path(tmp_path / "crc.zip").write_bytes(bytes(bad))
    a = store.Archive(tmp_path / "crc.zip")
    with pytest.raises(store.DataError, match=r"cannot read a/f\.bin"):
        a.read("a/f.bin")


def test_check_count_names_expected_and_found():
    with pytest.raises(store.DataError, match="expected 600 images, found 599"):
        store.check_count("images", 600, 599, "somewhere")


def test_concurrent_builders_decode_once(tmp_path):
    import threading
    import time
    path, calls, inside, release = tmp_path / "c.pt", [], threading.Event(), threading.Event()

    def build():
        calls.append(1)
        inside.set()
        release.wait(5)                                                       # hold the lock a while
        return {"images": torch.ones(3, dtype=torch.uint8)}
    out = {}
    a = threading.Thread(target=lambda: out.setdefault("a", store.load_or_build(path, build, {"k": 1})))
    a.start()
    inside.wait(5)                                                            # A is building, holding the lock
    b = threading.Thread(target=lambda: out.setdefault("b", store.load_or_build(path, build, {"k": 1})))
    b.start()
    time.sleep(0.3)                        # give B time to reach the lock (without one it would build too)
    release.set()
    a.join()
    b.join()
    assert len(calls) == 1 and torch.equal(out["a"]["images"], out["b"]["images"])
