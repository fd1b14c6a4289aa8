"""Sinusoid regression (Finn et al. 2017, §5.1): y = A·sin(x − φ), A ~ U[0.1, 5.0],
φ ~ U[0, π], x ~ U[−5, 5]; K support and ``query_shots`` query points per task, MSE loss.
No data files: every task is drawn from the generator it is given. ``target_scale`` multiplies
every y (1 is the protocol; the rescaling study varies it), so MSE is in units of scale²."""
from __future__ import annotations

import math

import torch

from . import DATASETS, DTYPES


class Sinusoid:
    name = "sinusoid"
    metric = "mse"
    model = DATASETS["sinusoid"].model
    archive_sha256: dict[str, str] = {}

    def __init__(self, shots: int = 10, query_shots: int = 10, amp=(0.1, 5.0), phase=(0.0, math.pi),
                 x_range=(-5.0, 5.0), target_scale: float = 1.0, dtype=torch.float32):
        self.shots, self.query_shots, self.target_scale = shots, query_shots, float(target_scale)
        self.amp, self.phase, self.x_range, self.dtype = amp, phase, x_range, dtype

    def sample(self, split: str, n: int, generator: torch.Generator):
        """``n`` tasks stacked: xs (n, K, 1), ys (n, K, 1), xq (n, Q, 1), yq (n, Q, 1).
        The split only names the stream; the distribution is the same for all."""
        # Drawn in float64 whatever the dtype: torch's uniform_ consumes the generator
        # differently per dtype, so float32 and float64 runs would otherwise see different
        # tasks under the same seed (and the same test-task fingerprint).
        g, d = generator, torch.float64
        amp = torch.empty(n, 1, 1, dtype=d).uniform_(*self.amp, generator=g)
        ph = torch.empty(n, 1, 1, dtype=d).uniform_(*self.phase, generator=g)
        x = torch.empty(n, self.shots + self.query_shots, 1, dtype=d).uniform_(*self.x_range, generator=g)
        y = self.target_scale * amp * torch.sin(x - ph)
        x, y, k = x.to(self.dtype), y.to(self.dtype), self.shots
        return x[:, :k], y[:, :k], x[:, k:], y[:, k:]

    def describe(self, split: str, n: int, generator: torch.Generator) -> list[dict]:
        """Amplitude and phase of each of the ``n`` tasks :meth:`sample` draws from ``generator``."""
        amp = torch.empty(n, dtype=torch.float64).uniform_(*self.amp, generator=generator)
        ph = torch.empty(n, dtype=torch.float64).uniform_(*self.phase, generator=generator)
        return [{"amplitude": float(a), "phase": float(p)} for a, p in zip(amp, ph)]

    def fingerprint_fields(self) -> dict:
        fields = {"dataset": self.name, "shots": self.shots, "query_shots": self.query_shots,
                  "amp": list(self.amp), "phase": list(self.phase), "x_range": list(self.x_range)}
        if self.target_scale != 1.0:  # other tasks; the protocol's fingerprint stays as it was
            fields["target_scale"] = self.target_scale
        return fields


def validate(cfg) -> None:
    scale = cfg.dataset.get("target_scale", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"dataset.target_scale={scale!r}: must be a finite number > 0 (1 is the protocol)")


def build(cfg) -> Sinusoid:
    return Sinusoid(shots=cfg.shots, query_shots=cfg.query_shots, target_scale=cfg.dataset.get("target_scale", 1.0),
                    dtype=DTYPES[cfg.dtype])
