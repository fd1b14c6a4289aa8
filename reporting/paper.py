"""The papers' numbers and ordering claims (``reporting/paper_numbers.yaml``), validated on load."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from .common import task_words
from .records import setting_name

PAPER_FILE = Path(__file__).with_name("paper_numbers.yaml")


class _Entry(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True)  # an int is a valid float; a bool is no number


class PaperResult(_Entry):
    dataset: str
    ways: int
    shots: int
    label: str
    value: float
    pm: float | None
    transductive: bool | None
    source: str
    steps: int | None = None


class Claim(_Entry):
    better: str
    relation: Literal[">", ">="]
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


class PaperNumbers(_Entry):
    sources: dict[str, str]
    results: list[PaperResult]
    claims: list[Claim]

    def lookup(self, dataset: str, ways: int, shots: int, label: str, bn_mode: str | None,
               steps: int | None = None) -> PaperResult | None:
        """The published number for a run: same setting and algorithm; the transductive number for a transductive
        (batch-statistics) run, the non-transductive one otherwise when the papers give one (else the transductive)."""
        found = [r for r in self.results if (r.dataset, r.ways, r.shots, r.label, r.steps)
                 == (dataset, ways, shots, label, steps)]
        want = bn_mode is None or bn_mode == "transductive"
        return min(found, key=lambda r: (r.transductive is not want, not r.transductive), default=None)


def load_paper_numbers(path: Path = PAPER_FILE) -> PaperNumbers:
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    try:
        paper = PaperNumbers.model_validate({"sources": doc.get("sources") or {}, "results": doc.get("results") or [],
                                             "claims": doc.get("claims") or []})
    except ValidationError as e:
        err = e.errors()[0]
        raise ValueError(f"{path.name}: {'.'.join(map(str, err['loc']))}: {err['msg']}") from None
    keys = [(r.dataset, r.ways, r.shots, r.label, r.steps, r.transductive) for r in paper.results]
    for i, r in enumerate(paper.results):
        if r.source not in paper.sources:
            raise ValueError(f"{path.name}: results.{i}: unknown source {r.source!r}")
        if keys[i] in keys[:i]:
            raise ValueError(f"{path.name}: results.{i}: duplicate entry {keys[i]}")
    return paper
