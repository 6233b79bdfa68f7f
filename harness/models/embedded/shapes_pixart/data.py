"""``shapes-pixart``'s data: the data seeds of the phases, the held-out evaluation captions and the real
reference scenes (the scenes themselves come from :mod:`dsbench.data.shapes`)."""

from __future__ import annotations

import torch

from dsbench.data import shapes as S

RESOLUTION = 32

TRAIN_SEED, CLASSIFIER_SEED, EVAL_SEED, REFERENCE_SEED = 1, 2, 3, 4  # data seeds of the phases


def conditions(n: int, seed: int) -> list[str]:
    """``n`` held-out evaluation captions (scenes never used in training), seeded."""
    return [S.caption(s) for s in S.sample_descriptions(n, seed, split="heldout")]


def references(n: int, seed: int = 0) -> torch.Tensor:
    """``n`` real scenes (held-out split, like the evaluation captions), uint8 N×3×32×32."""
    return S.sample_scenes(n, REFERENCE_SEED + 1000 * seed, split="heldout", resolution=RESOLUTION).images
