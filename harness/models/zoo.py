"""The model zoo: ``available()`` and ``load(name)`` returning a :class:`ModelBundle`.

A bundle is everything a run needs about one model: the diffusers pipeline, its sampler
settings, the evaluation conditions, how to sample images from conditions, the real
reference images and the domain's metrics hooks. Every model is listed once, in ``_ENTRIES``:
the embedded ones (trained here, weights in the repo) and the hub entries, which load the real checkpoints
with ``from_pretrained`` and fail fast, naming the checkpoint, when it cannot be had.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from dsbench.models import hub
from dsbench.models.bundle import ModelBundle, Sampler
from dsbench.models.embedded import mnist_dit, shapes_pixart

__all__ = ["ModelBundle", "Sampler", "available", "kind_of", "load"]


# every model, in one place: name → (kind, loader(device, dtype) → ModelBundle)
_ENTRIES: dict[str, tuple[str, Callable[..., ModelBundle]]] = {
    mnist_dit.NAME: ("embedded", mnist_dit.load),
    shapes_pixart.NAME: ("embedded", shapes_pixart.load),
    shapes_pixart.TRANSFER_NAME: ("embedded", shapes_pixart.load_transfer),
    **{name: ("hub", hub.loader(name)) for name in hub.HUB_MODELS},
}


def available(kind: str | None = None) -> list[str]:
    """Registered model names (optionally only "embedded" or "hub")."""
    return sorted(n for n, (k, _) in _ENTRIES.items() if kind is None or k == kind)


def kind_of(name: str) -> str:
    return _ENTRIES[name][0]


def load(name: str, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> ModelBundle:
    """The bundle of ``name``; ValueError listing the available names when unknown."""
    if name not in _ENTRIES:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(available())}")
    return _ENTRIES[name][1](device=device, dtype=dtype)
