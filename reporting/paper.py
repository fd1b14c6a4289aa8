"""The papers' numbers and ordering claims (``reporting/paper_numbers.yaml``), validated on load."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
        """The published number for a run: same setting and algorithm; the transductive
        number for a transductive (batch-statistics) run, the non-transductive one otherwise
        when the papers give one."""
        found = [r for r in self.results if (r.dataset, r.ways, r.shots, r.label, r.steps)
                 == (dataset, ways, shots, label, steps)]
        if len(found) <= 1:
            return found[0] if found else None
        want = bn_mode is None or bn_mode == "transductive"
        matching = [r for r in found if r.transductive is want]
        return (matching or [r for r in found if r.transductive])[0]


def _need(entry: dict, key: str, types: tuple, where: str) -> Any:
    v = entry.get(key)
    if not isinstance(v, types) or isinstance(v, bool) and bool not in types:
        raise ValueError(f"{PAPER_FILE.name}: {where}: field {key!r} should be "
                         f"{'/'.join(t.__name__ for t in types)}, got {v!r}")
    return v


def load_paper_numbers(path: Path = PAPER_FILE) -> PaperNumbers:
    with open(path, encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    sources = doc.get("sources") or {}
    results, seen = [], set()
    for i, e in enumerate(doc.get("results") or []):
        where = f"results[{i}]"
        r = PaperResult(dataset=_need(e, "dataset", (str,), where), ways=_need(e, "ways", (int,), where),
                        shots=_need(e, "shots", (int,), where), label=_need(e, "label", (str,), where),
                        value=float(_need(e, "value", (int, float), where)),
                        pm=None if e.get("pm") is None else float(_need(e, "pm", (int, float), where)),
                        transductive=e.get("transductive"), source=_need(e, "source", (str,), where),
                        steps=e.get("steps"))
        if r.source not in sources:
            raise ValueError(f"{PAPER_FILE.name}: {where}: unknown source {r.source!r}")
        key = (r.dataset, r.ways, r.shots, r.label, r.steps, r.transductive)
        if key in seen:
            raise ValueError(f"{PAPER_FILE.name}: {where}: duplicate entry {key}")
        seen.add(key)
        results.append(r)
    claims = []
    for i, e in enumerate(doc.get("claims") or []):
        where = f"claims[{i}]"
        c = Claim(better=_need(e, "better", (str,), where), relation=_need(e, "relation", (str,), where),
                  worse=_need(e, "worse", (str,), where), dataset=_need(e, "dataset", (str,), where),
                  ways=_need(e, "ways", (int,), where), shots=_need(e, "shots", (int,), where),
                  evidence=_need(e, "evidence", (str,), where), source=_need(e, "source", (str,), where))
        if c.relation not in (">", ">="):
            raise ValueError(f"{PAPER_FILE.name}: {where}: relation must be '>' or '>='")
        claims.append(c)
    return PaperNumbers(dict(sources), tuple(results), tuple(claims))
