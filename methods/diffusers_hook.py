"""``diffusers_hook``: one of diffusers' own cache hooks (docs/methods/diffusers_hook.md) as an arm.

The hook is applied to the transformer with diffusers' ``apply_*`` function and its config class; dsbench's
engine runs beside it with every layer FULL, so the MACs it counts are those of what the hook let run. DiT and
PixArt pipelines never enter a ``cache_context`` (their transformers have none): there dsbench provides one
("cond", the CFG halves being one batch) and resets the hooks' state at each pipeline call.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Literal

import pydantic

from dsbench.core import Method, MethodConfig, NotApplicable, RunInfo
from dsbench.methods.base import register
from dsbench.methods.external import restore_instances, snapshot_instances

# hook name → (diffusers.hooks config class, apply function, its threshold field), diffusers 0.42. Not offered
# (measured, docs/methods/diffusers_hook.md): taylorseer_cache, pyramid_attention_broadcast and faster_cache hook
# the attention modules' forward, which dsbench's block forwards never call (they run their own attention
# kernel to count it); mag_cache needs per-model calibrated ratios.
HOOKS = {
    "first_block_cache": ("FirstBlockCacheConfig", "apply_first_block_cache", "threshold"),
    "sea_cache": ("SeaCacheConfig", "apply_sea_cache", "threshold"),
}
NOT_OFFERED = "taylorseer_cache, pyramid_attention_broadcast, faster_cache (attention-module hooks), mag_cache"
# (hook, transformer class) where the hook measurably changes nothing, without dsbench too
NO_EFFECT = {
    ("sea_cache", "DiTTransformer2DModel"),
    ("sea_cache", "PixArtTransformer2DModel"),
}


def hook_api(name: str) -> tuple[type, Callable]:
    """The config class and apply function of hook ``name`` in the installed diffusers."""
    import diffusers.hooks

    config_name, apply_name, _ = HOOKS[name]
    if not hasattr(diffusers.hooks, config_name):
        raise ValueError(
            f"diffusers_hook: {name} is not in the installed diffusers; pip install 'diffusers>=0.42,<0.43'"
        )
    return getattr(diffusers.hooks, config_name), getattr(diffusers.hooks, apply_name)


class DiffusersHookConfig(MethodConfig):
    hook: Literal[tuple(HOOKS)] = pydantic.Field(  # type: ignore[valid-type]
        "first_block_cache",
        description=f"the diffusers hook: one of {', '.join(HOOKS)} (not offered: {NOT_OFFERED})",
    )
    threshold: float | None = pydantic.Field(
        None,
        ge=0.0,
        le=1.0,
        description="the hook's threshold, in [0, 1] (default the hook's own; 0 never reuses)",
    )
    options: dict[str, Any] = pydantic.Field(
        default_factory=dict, description="other keyword arguments of the hook's diffusers config class"
    )

    @pydantic.model_validator(mode="after")
    def _fits_the_hook(self):
        config_cls, _ = hook_api(self.hook)
        accepted = set(inspect.signature(config_cls).parameters)
        threshold_field = HOOKS[self.hook][2]
        unknown = sorted(set(self.options) - accepted)
        if threshold_field in self.options:
            unknown.append(f"{threshold_field} (give it as `threshold`)")
        if unknown:
            raise ValueError(
                f"options {unknown} are not fields of {config_cls.__name__}; allowed: {', '.join(sorted(accepted))}"
            )
        return self


@register
class DiffusersHook(Method):
    name = "diffusers_hook"
    Config = DiffusersHookConfig
    budget_field = "threshold"
    summary = "one of diffusers' cache hooks (first_block_cache, sea_cache), counted by dsbench"

    def __init__(self, config: DiffusersHookConfig):
        super().__init__(config)
        self._provide_context: Callable[[], None] | None = None

    def install(self, pipeline, transformer) -> Callable[[], None]:
        if (self.config.hook, type(transformer).__name__) in NO_EFFECT:
            raise NotApplicable(
                f"diffusers_hook: {self.config.hook} changes nothing on {type(transformer).__name__} "
                "(measured: bit-identical images and full MACs, without dsbench too)"
            )
        config_cls, apply = hook_api(self.config.hook)
        kwargs = dict(self.config.options)
        if self.config.threshold is not None:
            kwargs[HOOKS[self.config.hook][2]] = self.config.threshold
        saved = snapshot_instances(transformer)
        apply(transformer, config_cls(**kwargs))
        if not hasattr(transformer, "cache_context"):  # DiT / PixArt: no pipeline call enters a context
            from diffusers.hooks import HookRegistry
            from diffusers.hooks.hooks import CacheContext, _set_cache_context

            def provide() -> None:
                HookRegistry.check_if_exists_or_initialize(transformer).reset_stateful_hooks()
                _set_cache_context(transformer, CacheContext("cond"))

            self._provide_context = provide

        def remove() -> None:
            self._provide_context = None
            restore_instances(saved)  # the hooks' registries and forward overrides: what was there before

        return remove

    def reset(self, run: RunInfo) -> None:
        """A pipeline call starts: fresh hook state, and the context DiT / PixArt pipelines never enter."""
        super().reset(run)
        if self._provide_context is not None:
            self._provide_context()

    def resolved_config(self) -> dict:
        return self.config.model_dump()
