"""What the model zoo hands a run: a :class:`ModelBundle` (pipeline, sampler settings, conditions, references,
the domain's metric hooks) and the :class:`Sampler` settings of a model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class Sampler:
    """Sampler settings of a model (docs/concepts.md#models-layers-and-tokens for the real ones)."""

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
