"""``fora``: fast-forward caching (docs/methods/fora.md). Every module output is refreshed every N
steps and reused in between (gates recomputed). FORA equals ToCa with R = 0."""

from __future__ import annotations

import pydantic

from dsbench.core import FULL, REUSE, Decision, Layer, Method, MethodConfig, RunInfo
from dsbench.methods.base import register

# Refresh period per family (docs/methods/fora.md): DiT 3 (18 full steps at DDIM-50), PixArt 2 (even i).
DEFAULT_INTERVAL = {"dit": 3, "pixart": 2, "flux": 2, "wan": 2}


class ForaConfig(MethodConfig):
    interval: int | None = pydantic.Field(
        None, ge=1, description="refresh period N >= 1 (default per model: DiT 3, PixArt 2, FLUX 2, Wan 2)"
    )


def reference_counter(family: str, i: int, num_steps: int) -> int:
    """The reference codes' step counter s (docs/concepts.md#step-index): DiT counts down, the others up."""
    return num_steps - 1 - i if family == "dit" else i


@register
class Fora(Method):
    name = "fora"
    Config = ForaConfig
    budget_field = "interval"
    summary = "refresh all module outputs every N steps, reuse them in between"

    def reset(self, run: RunInfo) -> None:
        super().reset(run)
        self.interval = self.config.interval or DEFAULT_INTERVAL[run.family]
        self.full = {
            i
            for i in range(run.num_steps)
            if i == 0 or reference_counter(run.family, i, run.num_steps) % self.interval == 0
        }

    def resolved_config(self) -> dict:
        return {"interval": self.interval}

    def decide(self, i: int, layer: Layer) -> Decision:
        return FULL if i in self.full else REUSE
