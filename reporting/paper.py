"""The papers' numbers and ordering claims (``reporting/paper_numbers.yaml``), validated on load."""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from .common import task_words
from .records import setting_name

PAPER_FILE = Path(__file__).with_name("paper_numbers.yaml")


@dataclass(frozen=True)
class PaperResult:
    dataset: str
    ways: int
    shots: int
    label: str
    value: float
    pm: float | None
    transductive: bool | None
    source: str
    steps: int | None = None


@dataclass(frozen=True)
class Claim:
    better: str
    relation: str
    worse: str
    dataset: str
    ways: int
    shots: int
    evidence: str
    source: str

    @property
    def setting(self) -> str:
        """The test setting as the records name it."""
        return setting_name(self.dataset, self.ways, self.shots)

    @property
    def text(self) -> str:
        rel = "≥" if self.relation == ">=" else ">"
        return f"{self.better} {rel} {self.worse} on {task_words(self.dataset, self.ways, self.shots)}"


@dataclass(frozen=True)
class PaperNumbers:
    sources: dict[str, str]
    results: tuple[PaperResult, ...]
    claims: tuple[Claim, ...]

    def lookup(self, dataset: str, ways: int, shots: int, label: str, bn_mode: str | None,
               steps: int | None = None) -> PaperResult | None:
        """The published number for a run: same setting and algorithm; the transductive number for a transductive
        (batch-statistics) run, the non-transductive one otherwise when the papers give one (else the transductive)."""
        found = [r for r in self.results if (r.dataset, r.ways, r.shots, r.label, r.steps)
                 == (dataset, ways, shots, label, steps)]
        want = bn_mode is None or bn_mode == "transductive"
        return min(found, key=lambda r: (r.transductive is not want, not r.transductive), default=None)


# What each declared field type of an entry accepts (an int is a valid float; a bool is no number).
_ACCEPTS = {"str": (str,), "int": (int,), "float": (int, float), "float | None": (int, float, type(None)),
            "bool | None": (bool, type(None)), "int | None": (int, type(None))}


def _entry(cls: type, e: dict, where: str):
    """``cls`` from a YAML entry, each field checked against the type ``cls`` declares."""
    values = {}
    for f in fields(cls):
        v = e.get(f.name)
        if not isinstance(v, _ACCEPTS[f.type]) or isinstance(v, bool) and f.type != "bool | None":
            raise ValueError(f"{PAPER_FILE.name}: {where}: field {f.name!r} should be {f.type}, got {v!r}")
        values[f.name] = float(v) if "float" in f.type and v is not None else v
    return cls(**values)


def load_paper_numbers(path: Path = PAPER_FILE) -> PaperNumbers:
    with open(path, encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    sources = doc.get("sources") or {}
    results = [_entry(PaperResult, e, f"results[{i}]") for i, e in enumerate(doc.get("results") or [])]
    claims = [_entry(Claim, e, f"claims[{i}]") for i, e in enumerate(doc.get("claims") or [])]
    keys = [(r.dataset, r.ways, r.shots, r.label, r.steps, r.transductive) for r in results]
    for i, r in enumerate(results):
        if r.source not in sources:
            raise ValueError(f"{PAPER_FILE.name}: results[{i}]: unknown source {r.source!r}")
        if keys[i] in keys[:i]:
            raise ValueError(f"{PAPER_FILE.name}: results[{i}]: duplicate entry {keys[i]}")
    for i, cl in enumerate(claims):
        if cl.relation not in (">", ">="):
            raise ValueError(f"{PAPER_FILE.name}: claims[{i}]: relation must be '>' or '>='")
    return PaperNumbers(dict(sources), tuple(results), tuple(claims))
