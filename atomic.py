"""Atomic file writes: every record, cache, table and report in the suite is written here.

The data goes to a temporary file in the target's folder, is flushed and fsync'ed, then
renamed over the target (``os.replace`` is atomic on POSIX), so a crash or a kill leaves
either the previous file or the new one, never a torn one, and no temporary file behind.
Files are made world-readable (``mkstemp`` creates them 0600): a shared cache or a run
folder must stay readable by others. Torch is imported only by :func:`atomic_torch_save`,
so the report generator and the data layer import this module without it.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def _atomic(path: Path | str, write: Callable[[IO[bytes]], Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    _atomic(path, lambda f: f.write(data))


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path | str, obj: Any) -> None:
    """Indented, key-sorted JSON (NaN allowed: a diverged run's metrics are NaN)."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=True) + "\n")


def atomic_torch_save(path: Path | str, obj: Any) -> None:
    """``torch.save(obj)`` streamed into the temporary file (a decoded image cache can be GBs)."""
    import torch

    _atomic(path, lambda f: torch.save(obj, f))
