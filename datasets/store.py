"""Where the real data lives and how it becomes a uint8 tensor cache.

- Data root: ``data.root`` in the config → the environment variable ``METAGRAD_DATA`` →
  ``./data``. The root may be read-only: nothing is ever written under it.
- Cache dir: ``data.cache_dir`` → ``./.cache/metagrad`` (git-ignored, writable).
- Sources are zip archives or extracted folders, read through :class:`Archive` so that
  both look alike (member names relative to the archive's top folder's parent).
- Source checksums: sha256 of a file (or a digest of a folder's files) is slow for
  multi-hundred-MB archives, so it is remembered in ``<cache>/sha256.json`` keyed by
  (path, size, mtime).
- Decoded tensors are saved once with ``torch.save`` under a name derived from the source
  checksums and decode settings, written atomically (:mod:`atomic`) so a
  failed or interrupted decode leaves nothing behind; later loads memory-map it.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
import zlib
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from atomic import atomic_torch_save, atomic_write_bytes

ENV_VAR = "METAGRAD_DATA"
DEFAULT_ROOT = "./data"
DEFAULT_CACHE = "./.cache/metagrad"
CACHE_FORMAT = 1  # bump when the layout of a cached tensor file changes


class DataError(ValueError):
    """Missing, corrupt or miscounted data; the message names the path and the fix."""


def data_root(root: str | os.PathLike | None) -> Path:
    """``root`` if given, else ``$METAGRAD_DATA``, else ``./data`` (not required to exist)."""
    if root is None or str(root) == "":
        root = os.environ.get(ENV_VAR) or DEFAULT_ROOT
    return Path(root).expanduser().resolve()


def cache_dir(path: str | os.PathLike | None) -> Path:
    """The writable cache folder (created on demand)."""
    p = Path(path if path else DEFAULT_CACHE).expanduser().resolve()
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cache dir {p} cannot be created ({e}); set data.cache_dir to a writable folder") from e
    return p


# ---------------------------------------------------------------- sources
class Archive:
    """A zip file or an extracted folder. ``names()`` lists files as posix paths that start
    with the folder's own name (``images_background/Alphabet/.../x.png``), as inside the zip."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.is_zip = self.path.is_file()
        if self.is_zip:
            try:
                self._zip = zipfile.ZipFile(self.path)
            except (zipfile.BadZipFile, OSError, EOFError) as e:
                raise DataError(f"{self.path}: not a readable zip archive ({e}); it is truncated or corrupt — "
                                "replace it with an intact copy") from e

    def names(self) -> list[str]:
        if self.is_zip:
            return [i.filename for i in self._zip.infolist() if not i.is_dir()]
        base = self.path.parent
        return sorted(p.relative_to(base).as_posix() for p in self.path.rglob("*") if p.is_file())

    def read(self, name: str) -> bytes:
        try:
            if self.is_zip:
                return self._zip.read(name)
            return (self.path.parent / name).read_bytes()
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, KeyError) as e:
            raise DataError(f"{self.path}: cannot read {name} ({e}); the archive is truncated or corrupt — "
                            "replace it with an intact copy") from e

    def close(self) -> None:
        if self.is_zip:
            self._zip.close()


# ---------------------------------------------------------------- checksums
def _sha_cache_load(cache: Path) -> dict:
    try:
        return json.loads((cache / "sha256.json").read_text())
    except (OSError, ValueError):
        return {}


def _stamp(path: Path) -> list:
    """What identifies a file's or a folder's content cheaply: size and mtime (for a folder,
    a digest of every file's relative path, size and mtime)."""
    if path.is_file():
        st = path.stat()
        return [st.st_size, st.st_mtime_ns]
    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        st = p.stat()
        h.update(f"{p.relative_to(path).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return [h.hexdigest()]


def source_sha256(path: Path, cache: Path) -> str:
    """sha256 of a file, or for a folder the sha256 of ``relpath\\0sha256(file)\\n`` over its
    sorted files. Remembered in ``<cache>/sha256.json`` keyed by (path, stamp)."""
    path = Path(path).resolve()
    stamp = _stamp(path)
    known = _sha_cache_load(cache)
    hit = known.get(str(path))
    if hit and hit["stamp"] == stamp:
        return hit["sha256"]
    if path.is_file():
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    else:
        h = hashlib.sha256()
        for p in sorted(q for q in path.rglob("*") if q.is_file()):
            h.update(f"{p.relative_to(path).as_posix()}\0{hashlib.sha256(p.read_bytes()).hexdigest()}\n".encode())
    digest = h.hexdigest()
    known = _sha_cache_load(cache)  # re-read: another process may have added entries meanwhile
    known[str(path)] = {"stamp": stamp, "sha256": digest}
    atomic_write_bytes(cache / "sha256.json", json.dumps(known, indent=1, sort_keys=True).encode())
    return digest


def cache_key(sources: dict[str, str], settings: dict) -> str:
    """Short key from the source checksums and the decode settings."""
    blob = json.dumps({"sources": sources, "settings": settings, "format": CACHE_FORMAT}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_or_build(path: Path, build: Callable[[], dict], meta: dict) -> dict:
    """Load the tensor cache at ``path`` (memory-mapped) or build it with ``build()`` and save
    it atomically. ``meta`` is stored with the tensors and must match on load; a cache that
    does not load or does not match is rebuilt (never used half-written). Concurrent
    processes (a parallel sweep on a cold cache) take turns on a lock file, so only the
    first one decodes."""
    obj = _load_matching(path, meta)
    if obj is not None:
        return obj
    with _lock(path.with_name(path.name + ".lock")):
        obj = _load_matching(path, meta)  # another process may have built it meanwhile
        if obj is None:
            obj = build()
            obj["meta"] = meta
            atomic_torch_save(path, obj)
    return torch.load(path, mmap=True, weights_only=True)


def _load_matching(path: Path, meta: dict) -> dict | None:
    if not path.exists():
        return None
    try:
        obj = torch.load(path, mmap=True, weights_only=True)
        return obj if obj.get("meta") == meta else None
    except Exception:  # noqa: BLE001 — any unreadable cache file is rebuilt, never trusted
        return None


@contextmanager
def _lock(path: Path):
    try:
        import fcntl
    except ImportError:  # not POSIX: no inter-process lock, builds may repeat (still atomic)
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@dataclass(frozen=True)
class Source:
    """Where a dataset's files lie under the data root, and how to get them.

    Args:
        name: the dataset's name in error messages.
        folders: searched under the root (``root/<folder>``), then the root itself.
        find: ``find(folder)`` → the dataset's files in that folder (name → path), or None.
        wants, get, download_note: the not-found error's what is looked for, where to get it
            (into ``root/<folders[0]>``) and what the download needs (:func:`not_found`).
        download: ``download(root)`` fetches the files and returns what ``find`` would.
    """
    name: str
    folders: tuple[str, ...]
    find: Callable[[Path], dict | None]
    wants: str
    get: str
    download: Callable[[Path], dict] | None = None
    download_note: str = ""


def locate(source: Source, root: Path, download: bool = False) -> dict:
    """``source.find``'s result for the first folder that has the files, else (``download``) the
    download's; else :func:`not_found`."""
    dirs = [root / f for f in source.folders] + [root]
    for d in dirs:
        found = source.find(d)
        if found:
            return found
    if download and source.download is not None:
        return source.download(root)
    raise not_found(source.name, root, dirs, source.wants, f"{source.get} into {root / source.folders[0]}",
                    source.download_note)


def sources(source: Source, cfg, download: bool) -> tuple[dict[str, Path], dict[str, str], Path]:
    """A run's data: the located files (:func:`locate`), their sha256 by file name (a folder's
    name ends in ``/``; the ``pickles`` folder entry is not a source of its own) and the cache folder."""
    cache = cache_dir(cfg.data.cache_dir)
    found = locate(source, data_root(cfg.data.root), download)
    sha = {p.name + ("" if p.is_file() else "/"): source_sha256(p, cache) for k, p in found.items() if k != "pickles"}
    return found, sha, cache


def not_found(dataset: str, root: Path, dirs: list[Path], wants: str, get: str, download: str) -> DataError:
    """The error of a dataset absent under the data root: where it looked, for what, and the
    three fixes (get the files, point the data root elsewhere, or download)."""
    return DataError(f"{dataset} not found under data root {root}: looked in {[str(d) for d in dirs]} for {wants}. "
                     f"Get {get}, or set data.root / ${ENV_VAR} to a folder that has them, or set "
                     f"dataset.download=true when online ({download}).")


def image(arc: Archive, member: str, mode: str):
    """Member ``member`` of ``arc`` decoded by PIL and converted to ``mode`` (``L``, ``RGB``); a
    file PIL cannot decode is a :class:`DataError` naming it."""
    from PIL import Image
    try:
        with Image.open(io.BytesIO(arc.read(member))) as im:
            return im.convert(mode)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 — PIL raises many types for a broken image
        raise DataError(f"{arc.path}: cannot decode {member} ({e}); the archive is corrupt — replace it with an "
                        "intact copy") from e


def check_count(what: str, expected: int, found: int, where: Path | str) -> None:
    if expected != found:
        raise DataError(f"{where}: expected {expected:,} {what}, found {found:,} — the data is incomplete or "
                        "not the standard release; replace it with an intact copy")
