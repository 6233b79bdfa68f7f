"""``teacache``: Timestep Embedding Aware Cache (docs/methods/teacache.md).

Every step first computes the first block's timestep-modulated input (a PROBE(0, 0) step). Its relative
L1 change from the previous step, rescaled by the published per-model polynomial where one fits the
signal, is accumulated; while the sum stays below the threshold δ the step reuses the residual of the
whole block stack from the last computed step (last block output minus first block input), else it
computes every block and resets the sum. The first and the last step always compute.
"""

from __future__ import annotations

import numpy as np
import pydantic
import torch

from dsbench.core import FULL, Decision, Directive, Layer, Method, MethodConfig, RunInfo, probe
from dsbench.methods.base import register

# Published rescaling polynomials (highest power first) fitted to this signal: the FLUX one was fitted on
# FLUX.1-dev to the modulated input of the first double block's image stream (TeaCache4FLUX). TeaCache's Wan
# polynomials are fitted to the timestep embedding instead, and none exists for DiT or PixArt: those use the
# plain relative L1 distance (docs/methods/teacache.md).
COEFFICIENTS = {"flux": (4.98651651e02, -2.83781631e02, 5.58554382e01, -3.82021401e00, 2.64230861e-01)}
PLAIN = (1.0, 0.0)
# δ per family: FLUX 0.4 (TeaCache4FLUX: "0.4 for 1.8x speedup"), Wan 0.08 (the Wan2.1 t2v 1.3B example),
# DiT / PixArt 0.1 (no published image setting; the slow setting of the paper's DiT video models Latte and
# Open-Sora)
DEFAULT_THRESHOLD = {"flux": 0.4, "wan": 0.08, "dit": 0.1, "pixart": 0.1}


class TeaCacheConfig(MethodConfig):
    threshold: float | None = pydantic.Field(
        None,
        ge=0.0,
        le=4.0,
        description="δ in [0, 4]: reuse while the accumulated (rescaled) relative L1 change stays below it; 0 "
        "never reuses (default per model: FLUX 0.4, Wan 0.08, DiT / PixArt 0.1)",
    )
    coefficients: list[float] | None = pydantic.Field(
        None,
        min_length=1,
        description="rescaling polynomial, highest power first (default per model: FLUX the published one, "
        "others none: the plain relative L1)",
    )


def relative_l1(current: torch.Tensor, previous: torch.Tensor) -> float:
    """mean |current − previous| / mean |previous|, as TeaCache (and cache-dit) measure change."""
    return float((current - previous).abs().mean() / previous.abs().mean())


@register
class TeaCache(Method):
    name = "teacache"
    Config = TeaCacheConfig
    budget_field = "threshold"
    summary = "reuse the whole block stack's residual while the first block's modulated input barely changes"
    residual_spans = ((0, 0),)

    def reset(self, run: RunInfo) -> None:
        super().reset(run)
        c = self.config
        self.threshold = DEFAULT_THRESHOLD[run.family] if c.threshold is None else c.threshold
        self.coefficients = tuple(c.coefficients or COEFFICIENTS.get(run.family, PLAIN))
        self._rescale = np.poly1d(self.coefficients)
        self._previous: dict[str, torch.Tensor] = {}  # per branch: the last step's signal
        self._accumulated: dict[str, float] = {}

    def resolved_config(self) -> dict:
        return {"threshold": self.threshold, "coefficients": list(self.coefficients)}

    def begin_step(self, i: int) -> Directive:
        return probe(0, 0)

    def decide(self, i: int, layer: Layer) -> Decision:
        return FULL

    def reuse_after_probe(self, i: int, signal: torch.Tensor, branch: str) -> bool:
        previous = self._previous.get(branch)
        self._previous[branch] = signal
        if previous is None or i == 0 or i == self.run.num_steps - 1:
            self._accumulated[branch] = 0.0
            return False
        # a polynomial is fitted over the range the model's signals take; below 0 it would make a step count
        # as negative change (δ = 0 would then reuse): clamped at 0
        change = max(0.0, float(self._rescale(relative_l1(signal, previous))))
        accumulated = self._accumulated[branch] + change
        if accumulated < self.threshold:
            self._accumulated[branch] = accumulated
            return True
        self._accumulated[branch] = 0.0
        return False
