"""Run records: reading them back, environment facts, checkpoints.

``summary.json`` is :mod:`trainer.record`'s model; the study records' schema is SCHEMA.md beside
the report. Records are written
by :mod:`atomic`, so a crash leaves the previous valid file; readers treat unreadable files
as absent (with a warning).
"""
from __future__ import annotations

import json
import platform
import subprocess
import sys
import warnings
from pathlib import Path

import torch


def read_json(path: Path | str) -> dict | None:
    """The parsed JSON object, or None (with a warning) if missing, truncated or not an object."""
    try:
        obj = json.loads(Path(path).read_text())
        if not isinstance(obj, dict):
            raise ValueError("not a JSON object")
        return obj
    except FileNotFoundError:
        return None
    except (ValueError, OSError, UnicodeDecodeError) as e:
        warnings.warn(f"ignoring unreadable record {path}: {e}", stacklevel=2)
        return None


def load_checkpoint(path: Path | str) -> dict | None:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        return None
    except Exception as e:  # truncated or garbage file: start fresh, say so
        warnings.warn(f"ignoring unreadable checkpoint {path}: {e}; starting fresh", stacklevel=2)
        return None


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=5, cwd=Path(__file__).resolve().parent).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str | None]:
    try:
        sys.modules.setdefault("gym_notices", None)  # gym (via learn2learn) prints a banner otherwise
        import learn2learn
        l2l = learn2learn.__version__
    except Exception:  # learn2learn is optional for sinusoid-only use
        l2l = None
    return {"python": platform.python_version(), "torch": torch.__version__, "learn2learn": l2l,
            "git_commit": git_commit()}


def machines(before: list[dict], device: str, start: int, it: int, train_wall_s: float) -> list[dict]:
    """The machines a run trained on, one entry per stretch of iterations: ``before`` (from the
    checkpoint it resumed) plus this process's stretch, ``start`` → ``it``, merged into the last
    entry when the device is the same. A run resumed across sessions may change machines, and its
    wall-clock numbers then mix them; this says which iterations ran where."""
    out = [dict(m) for m in before]
    if out and out[-1]["device_name"] == device and out[-1]["to"] == start:
        out[-1].update(to=it, train_wall_s=out[-1]["train_wall_s"] + train_wall_s)
    elif it > start or not out:
        out.append({"device_name": device, "from": start, "to": it, "train_wall_s": train_wall_s})
    return out


def machines_text(ms: list[dict]) -> str | None:
    """One device name when every stretch ran on it, else each with its iterations; None if no record."""
    names = [m["device_name"] or "an unrecorded device" for m in ms]
    if not names:
        return None
    if len(set(names)) == 1:
        return names[0]
    return " + ".join(f"{n} (iterations {m['from']:,}–{m['to']:,})" for n, m in zip(names, ms))


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu} ({torch.get_num_threads()} threads)"


def append_jsonl(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row, sort_keys=True) + "\n")
        f.flush()


def read_jsonl(path: Path, max_iter: int | None = None) -> list[dict]:
    """Rows of a metrics file; a torn last line (crash mid-write) is dropped."""
    rows = []
    try:
        for line in Path(path).read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if max_iter is None or row.get("iter", 0) <= max_iter:
                rows.append(row)
    except FileNotFoundError:
        pass
    return rows
