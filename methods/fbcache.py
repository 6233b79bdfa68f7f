"""``fbcache``: First-Block Cache / DBCache Fn·Bn (docs/methods/fbcache.md).

Every step computes the first Fn blocks (a PROBE(Fn, Bn) step) and compares their residual (image hidden
states after block Fn−1 minus before block 0) with the one of the last computed step by relative L1.
Below the threshold, after the warm-up steps and while the cap on consecutive reuses allows, the middle
blocks are replaced by the residual they produced at the last computed step and the last Bn blocks run;
otherwise every block runs and the stored residuals are refreshed.
"""

from __future__ import annotations

import pydantic

from dsbench.core import FULL, Decision, Directive, Layer, Method, MethodConfig, RunInfo, probe
from dsbench.methods.base import register
from dsbench.methods.teacache import relative_l1

# cache-dit's DBCache defaults (BasicCacheConfig): Fn 8, Bn 0, residual_diff_threshold 0.08,
# max_warmup_steps 8, max_continuous_cached_steps -1 (no cap). A model of at most 8 blocks (the embedded
# ones) cannot compute 8 front blocks: there Fn is 1, the original First-Block Cache (F1B0).
DBCACHE_FRONT = 8


class FBCacheConfig(MethodConfig):
    threshold: float = pydantic.Field(
        0.08,
        ge=0.0,
        le=1.0,
        description="residual_diff_threshold in [0, 1]: reuse when the first blocks' residual changed by less "
        "(relative L1); 0 never reuses (default 0.08, cache-dit)",
    )
    front: int | None = pydantic.Field(
        None,
        ge=1,
        description="Fn >= 1, blocks computed first at every step (default 8, or 1 on models of <= 8 blocks)",
    )
    back: int = pydantic.Field(0, ge=0, description="Bn >= 0, blocks computed last at every step (default 0)")
    warmup: int = pydantic.Field(8, ge=0, description="steps computed in full before any reuse (default 8, cache-dit)")
    max_consecutive: int | None = pydantic.Field(
        None, ge=1, description="cap on consecutive reused steps, >= 1 (default: none, cache-dit's -1)"
    )


@register
class FBCache(Method):
    name = "fbcache"
    Config = FBCacheConfig
    budget_field = "threshold"
    summary = "first Fn blocks every step; reuse the middle blocks' residual while the first blocks' residual holds"

    def reset(self, run: RunInfo) -> None:
        super().reset(run)
        c = self.config
        blocks = sum(run.blocks_per_stream.values())
        self.front = c.front if c.front is not None else (DBCACHE_FRONT if blocks > DBCACHE_FRONT else 1)
        if self.front + c.back >= blocks:
            raise ValueError(
                f"fbcache: front + back = {self.front + c.back} must be below the model's {blocks} blocks "
                "(some middle block must be cached)"
            )
        self.residual_spans = ((self.front, c.back),)
        self._previous: dict = {}  # per branch: the first blocks' residual at the last computed step
        self._consecutive: dict[str, int] = {}

    def resolved_config(self) -> dict:
        return {**self.config.model_dump(), "front": self.front}

    def begin_step(self, i: int) -> Directive:
        return probe(self.front, self.config.back)

    def decide(self, i: int, layer: Layer) -> Decision:
        return FULL

    def reuse_after_probe(self, i: int, signal, branch: str) -> bool:
        c = self.config
        previous = self._previous.get(branch)
        consecutive = self._consecutive.get(branch, 0)
        if (
            previous is not None
            and i >= c.warmup
            and (c.max_consecutive is None or consecutive < c.max_consecutive)
            and relative_l1(signal, previous) < c.threshold
        ):
            self._consecutive[branch] = consecutive + 1
            return True
        self._previous[branch] = signal  # compared with the last computed step's, as cache-dit does
        self._consecutive[branch] = 0
        return False
