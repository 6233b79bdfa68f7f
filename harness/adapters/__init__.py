"""One adapter per diffusers block family; ``adapter_for`` picks it by transformer class."""

from __future__ import annotations

import torch

from harness.adapters.base import Adapter

SUPPORTED = ("DiTTransformer2DModel", "PixArtTransformer2DModel", "FluxTransformer2DModel",
             "WanTransformer3DModel")


def adapter_for(transformer: torch.nn.Module) -> Adapter:
    """The adapter for this transformer instance; TypeError naming the supported classes otherwise."""
    import diffusers

    if isinstance(transformer, (diffusers.DiTTransformer2DModel, diffusers.PixArtTransformer2DModel)):
        from harness.adapters.basic import BasicBlockAdapter

        return BasicBlockAdapter(transformer)
    if isinstance(transformer, diffusers.FluxTransformer2DModel):
        from harness.adapters.flux import FluxAdapter

        return FluxAdapter(transformer)
    if isinstance(transformer, diffusers.WanTransformer3DModel):
        from harness.adapters.wan import WanAdapter

        return WanAdapter(transformer)
    raise TypeError(f"unsupported transformer class {type(transformer).__name__}; supported: {', '.join(SUPPORTED)}")
