"""``deepcache``: DeepCache for DiTs (docs/methods/deepcache.md), a U-Net-style cache over the block stack.

On refresh steps every block runs and the engine stores the middle blocks' residual
R = h_{L−Bn} − h_{Fn} (h_j: the hidden state entering block j). On the other steps the first
Fn and last Bn blocks run, the middle ones are replaced by adding R once (BLOCK_RESIDUAL), and
the final layer runs with the current timestep. FLUX treats its double→single stack as one
stack, text and image streams together [PD].
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import pydantic

from dsbench.core import FULL, NORMAL, Decision, Directive, Layer, Method, MethodConfig, RunInfo, block_residual
from dsbench.methods.base import register


class DeepCacheConfig(MethodConfig):
    interval: int = pydantic.Field(
        2, ge=1, description="refresh interval N >= 1: one refresh step per N steps (default 2)"
    )
    front: int = pydantic.Field(1, ge=0, le=4, description="Fn, blocks computed first at every step, 0..4 (default 1)")
    back: int = pydantic.Field(0, ge=0, le=4, description="Bn, blocks computed last at every step, 0..4 (default 0)")
    schedule: Literal["uniform", "quadratic"] = pydantic.Field(
        "uniform", description="refresh steps: uniform (i mod N = 0) or quadratic (as many, denser around center)"
    )
    center: float = pydantic.Field(
        0.3,
        ge=0.0,
        le=1.0,
        description="quadratic schedule: where refresh steps are "
        "densest, as a fraction of the run in [0, 1] (default 0.3)",
    )


def uniform_refresh(num_steps: int, interval: int) -> list[int]:
    return list(range(0, num_steps, interval))


def quadratic_refresh(num_steps: int, interval: int, center: float) -> list[int]:
    """ceil(T/N) refresh steps whose spacing grows quadratically with the distance from ``center``.

    DeepCache's non-uniform 1:N strategy samples refresh steps densely where features change
    fastest. [PD] Construction: positions c ± u² for u evenly spaced over [−√c, √(T−1−c)], rounded,
    then pushed apart to distinct steps; step 0 is always a refresh step (caches start there).
    """
    n = math.ceil(num_steps / interval)
    last = num_steps - 1
    c = center * last
    u = np.linspace(-math.sqrt(c), math.sqrt(last - c), n)
    steps = [int(round(c + np.sign(x) * x * x)) for x in u]
    steps[0] = 0
    for k in range(1, n):  # distinct, increasing ...
        steps[k] = max(steps[k], steps[k - 1] + 1)
    for k in range(n - 1, 0, -1):  # ... and inside the run
        steps[k] = min(steps[k], last - (n - 1 - k))
    return steps


@register
class DeepCache(Method):
    name = "deepcache"
    Config = DeepCacheConfig
    budget_field = "interval"
    summary = "first Fn and last Bn blocks every step; the middle blocks' cached residual between refreshes"

    def reset(self, run: RunInfo) -> None:
        super().reset(run)
        c = self.config
        blocks = sum(run.blocks_per_stream.values())
        if c.front + c.back >= blocks:
            raise ValueError(
                f"deepcache: front + back = {c.front + c.back} must be below the model's {blocks} "
                "blocks (some middle block must be cached)"
            )
        self.residual_spans = ((c.front, c.back),)
        if c.schedule == "uniform":
            self.refresh = uniform_refresh(run.num_steps, c.interval)
        else:
            self.refresh = quadratic_refresh(run.num_steps, c.interval, c.center)
        self._refresh = set(self.refresh)

    def resolved_config(self) -> dict:
        return {**self.config.model_dump(), "refresh_steps": self.refresh}

    def begin_step(self, i: int) -> Directive:
        return NORMAL if i in self._refresh else block_residual(self.config.front, self.config.back)

    def decide(self, i: int, layer: Layer) -> Decision:
        return FULL
