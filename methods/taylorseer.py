"""``taylorseer``: cache-then-forecast (docs/methods/taylorseer.md).

After W warm-up steps, one full step every N steps; on full steps from the last warm-up step
(i = W − 1) on, the engine keeps, per module, finite differences of its pre-gate output up to
order m (distances in step-index units; earlier full steps keep the output alone, as the authors'
``derivative_approximation`` does); on the
other steps every module output is the Taylor series of those factors at the step distance
Δ = i − i_full (order-0 forecast = plain reuse). The history starts empty at every run (the
DiT reference hard-wires T = 50; we count i from the first call instead).
"""

from __future__ import annotations

import pydantic

from dsbench.core import FULL, Decision, Layer, Method, MethodConfig, RunInfo, taylor
from dsbench.methods.base import register

# (N, m, W) per model (docs/methods/taylorseer.md): DiT DDIM-50 README setting (14 full steps), PixArt [PD]
# (11 full steps, 1.57 T), FLUX-dev reference, FLUX-schnell [PD], Wan reference.
DEFAULTS = {"dit": (4, 4, 2), "pixart": (2, 1, 2), "flux-dev": (6, 1, 3), "flux-schnell": (2, 1, 1), "wan": (5, 1, 1)}


class TaylorSeerConfig(MethodConfig):
    interval: int | None = pydantic.Field(
        None,
        ge=1,
        description="full-step interval N >= 1 (default per model: DiT 4, PixArt 2, FLUX-dev 6, FLUX-schnell 2, Wan 5)",
    )
    order: int | None = pydantic.Field(
        None, ge=0, le=4, description="Taylor order m in 0..4; 0 = plain reuse (default per model: DiT 4, others 1)"
    )
    warmup: int | None = pydantic.Field(
        None,
        ge=1,
        description="leading full steps W >= 1 (default per model: DiT 2, PixArt 2, FLUX-dev 3, FLUX-schnell 1, Wan 1)",
    )


def defaults_key(run: RunInfo) -> str:
    if run.family == "flux":
        return "flux-schnell" if run.variant == "schnell" else "flux-dev"
    return run.family


@register
class TaylorSeer(Method):
    name = "taylorseer"
    Config = TaylorSeerConfig
    budget_field = "interval"
    summary = "full steps every N steps; Taylor forecasts of every module output in between"

    def reset(self, run: RunInfo) -> None:
        super().reset(run)
        c = self.config
        interval, order, warmup = DEFAULTS[defaults_key(run)]
        self.interval = c.interval or interval
        self.taylor_order = order if c.order is None else c.order  # the engine keeps this many differences
        self.warmup = c.warmup or warmup
        self.taylor_from = self.warmup - 1  # differences from the last warm-up step on (TS-1)
        self.full = {i for i in range(run.num_steps) if i < self.warmup or (i - (self.warmup - 1)) % self.interval == 0}

    def resolved_config(self) -> dict:
        return {"interval": self.interval, "order": self.taylor_order, "warmup": self.warmup}

    def decide(self, i: int, layer: Layer) -> Decision:
        return FULL if i in self.full else taylor(self.taylor_order)
