"""``cachedit``: cache-dit's DBCache (docs/methods/cachedit.md) as an arm of the leaderboard.

cache-dit (the optional extra ``external``: ``pip install -e ".[external]"``) installs its own hooks on the
pipeline; dsbench's engine runs beside it with every layer FULL, so the MACs it counts are those of the blocks
cache-dit actually ran. The config holds the ``DBCacheConfig`` fields passed to ``cache_dit.enable_cache``
(cache-dit 1.5.3), and ``taylorseer`` adds its TaylorSeer calibrator.
"""

from __future__ import annotations

from collections.abc import Callable

import pydantic

from dsbench.core import Method, MethodConfig
from dsbench.methods.base import register
from dsbench.methods.external import restore_instances, snapshot_instances

PIP = 'pip install -e ".[external]" (or pip install "cache-dit==1.5.3")'


class CacheDitConfig(MethodConfig):
    Fn_compute_blocks: int = pydantic.Field(
        1,
        ge=1,
        description="first blocks always computed, whose residual decides (>= 1; cache-dit's own 8 needs > 8 blocks)",
    )
    Bn_compute_blocks: int = pydantic.Field(0, ge=0, description="last blocks always computed (>= 0)")
    residual_diff_threshold: float = pydantic.Field(
        0.08,
        ge=0.0,
        le=1.0,
        description="relative L1 change of the first blocks' residual under which the rest is reused, [0, 1]; 0: never",
    )
    max_warmup_steps: int = pydantic.Field(8, ge=0, description="steps computed in full before any reuse (>= 0)")
    warmup_interval: int = pydantic.Field(1, ge=1, description="during warm-up, reuse allowed every N-th step (>= 1)")
    max_cached_steps: int = pydantic.Field(-1, ge=-1, description="reused steps at most per run (-1: no limit)")
    max_continuous_cached_steps: int = pydantic.Field(
        -1, ge=-1, description="consecutive reused steps at most (-1: no limit)"
    )
    taylorseer: bool = pydantic.Field(
        False, description="forecast the reused residual with cache-dit's TaylorSeer calibrator"
    )
    taylorseer_order: int = pydantic.Field(1, ge=1, le=4, description="Taylor order of the calibrator, 1..4")


@register
class CacheDit(Method):
    name = "cachedit"
    Config = CacheDitConfig
    budget_field = "residual_diff_threshold"
    requires = ("cache_dit", PIP)
    summary = "cache-dit's DBCache (Fn/Bn blocks, residual threshold, optional TaylorSeer), counted by dsbench"

    def install(self, pipeline, transformer) -> Callable[[], None]:
        """cache-dit on the pipeline (it resets its state per pipeline call); removed by its own
        ``disable_cache``, then every instance attribute it left behind is put back."""
        if pipeline is None:
            raise ValueError(
                "cachedit: attach to the pipeline, not its transformer (cache-dit resets its cache per pipeline call)"
            )
        import cache_dit

        c = self.config
        fields = c.model_dump(exclude={"taylorseer", "taylorseer_order"})
        calibrator = cache_dit.TaylorSeerCalibratorConfig(taylorseer_order=c.taylorseer_order) if c.taylorseer else None
        saved = snapshot_instances(transformer)
        cache_dit.enable_cache(pipeline, cache_config=cache_dit.DBCacheConfig(**fields), calibrator_config=calibrator)

        def remove() -> None:
            cache_dit.disable_cache(pipeline)
            restore_instances(saved)

        return remove
