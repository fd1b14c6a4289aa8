"""atomic.py: a failed write leaves the previous file and no temporary file."""
import json
import os

import pytest

from atomic import atomic_torch_save, atomic_write_json


def test_atomic_write_keeps_previous_file_on_crash(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    atomic_write_json(path, {"status": "completed", "v": 1})

    def crash(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        atomic_write_json(path, {"status": "completed", "v": 2})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"status": "completed", "v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]  # no temp file left


def test_atomic_save_leaves_nothing_on_failure(tmp_path):
    class Boom:
        def __reduce__(self):
            raise RuntimeError("boom")
    with pytest.raises(RuntimeError):
        atomic_torch_save(tmp_path / "c.pt", {"x": Boom()})
    assert list(tmp_path.iterdir()) == []
