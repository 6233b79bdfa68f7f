"""One adapter per diffusers block family; ``adapter_for`` picks it by transformer class."""

from __future__ import annotations

import torch

from dsbench.adapters.base import Adapter
from dsbench.adapters.basic import BasicBlockAdapter
from dsbench.adapters.flux import FluxAdapter
from dsbench.adapters.wan import WanAdapter

SUPPORTED = ("DiTTransformer2DModel", "PixArtTransformer2DModel", "FluxTransformer2DModel", "WanTransformer3DModel")


def adapter_for(transformer: torch.nn.Module) -> Adapter:
    """The adapter for this transformer instance; TypeError naming the supported classes otherwise."""
    import diffusers

    if isinstance(transformer, (diffusers.DiTTransformer2DModel, diffusers.PixArtTransformer2DModel)):
        return BasicBlockAdapter(transformer)
    if isinstance(transformer, diffusers.FluxTransformer2DModel):
        return FluxAdapter(transformer)
    if isinstance(transformer, diffusers.WanTransformer3DModel):
        return WanAdapter(transformer)
    raise TypeError(f"unsupported transformer class {type(transformer).__name__}; supported: {', '.join(SUPPORTED)}")
