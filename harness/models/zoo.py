"""The model zoo: ``available()`` and ``load(name)`` returning a :class:`ModelBundle`.

A bundle is everything a run needs about one model: the diffusers pipeline, its sampler
settings, the evaluation conditions, how to sample images from conditions, the real
reference images and the domain's metrics hooks. Embedded models (trained here, weights in
the repo) register themselves from their modules; hub entries load the real checkpoints
with ``from_pretrained`` and fail fast, naming the checkpoint, when it cannot be had.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable

import torch


@dataclass(frozen=True)
class Sampler:
    """Sampler settings of a model (METHODS §0.1 for the real ones)."""

    scheduler: str  # e.g. "ddim-linspace", "dpm-solver++", "flow-euler", "unipc-flow"
    steps: int
    guidance_scale: float
    resolution: int  # image side in pixels
    extra: dict[str, Any] = field(default_factory=dict)  # pipeline call options (e.g. max_sequence_length)


@dataclass
class ModelBundle:
    name: str
    family: str  # "dit", "pixart", "flux", "wan"
    kind: str  # "embedded" or "hub"
    pipeline: Any  # a diffusers pipeline, ready to call
    sampler: Sampler
    # (n, seed) → n evaluation conditions: class ids (class-conditional) or captions (text-to-image)
    conditions: Callable[[int, int], list]
    # (conditions, seed, steps) → uint8 images N×3×H×W (videos N×T×3×H×W), by the pipeline and sampler
    sample: Callable[..., torch.Tensor]
    # n → n real images, uint8 N×3×H×W (None where no reference set is available here)
    references: Callable[[int], torch.Tensor] | None = None
    # torch-fidelity feature extractor for FID/KID/PR on this domain ("inception-v3-compat" for real models)
    feature_extractor: str = "inception-v3-compat"
    # the domain classifier of an embedded model: an nn.Module with features(uint8 N×3×H×W) → float N×D
    # and logits(uint8 N×3×H×W) → float N×K; registered with torch-fidelity as ``feature_extractor``
    classifier: torch.nn.Module | None = None
    # (images, conditions, per_image=False) → alignment metrics, e.g. {"class_accuracy": 0.97}; with per_image
    # also "per_image": {metric: {"values": [...], "weights": [...] (where a metric pools counts)}}
    alignment: Callable[..., dict] | None = None
    # the metrics a leaderboard shows for this model, primary first (fidelity to the teacher), then at most
    # three secondary ones; every other metric stays in the CSV
    report_metrics: tuple[str, ...] = ("lpips_alex", "psnr", "fid", "clip_score")
    info: dict[str, Any] = field(default_factory=dict)


_ENTRIES: dict[str, tuple[str, Callable[..., ModelBundle]]] = {}


def register(name: str, kind: str):
    """Register a bundle factory under ``name`` (kind: "embedded" or "hub")."""

    def wrap(factory: Callable[..., ModelBundle]) -> Callable[..., ModelBundle]:
        if name in _ENTRIES:
            raise ValueError(f"model {name!r} is registered twice")
        _ENTRIES[name] = (kind, factory)
        return factory

    return wrap


def _load_registrations() -> None:
    from harness.models import hub  # noqa: F401  (registers the hub entries)
    from harness.models import embedded  # noqa: F401  (registers the embedded models)


def available(kind: str | None = None) -> list[str]:
    """Registered model names (optionally only "embedded" or "hub")."""
    _load_registrations()
    return sorted(n for n, (k, _) in _ENTRIES.items() if kind is None or k == kind)


def kind_of(name: str) -> str:
    _load_registrations()
    return _ENTRIES[name][0]


def load(name: str, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> ModelBundle:
    """The bundle of ``name``; ValueError listing the available names when unknown."""
    _load_registrations()
    if name not in _ENTRIES:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(available())}")
    return _ENTRIES[name][1](device=device, dtype=dtype)


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
