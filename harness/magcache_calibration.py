"""MagCache's calibration run (``dsbench calibrate magcache --model MODEL``, docs/methods/magcache.md).

One plain sampling run of one evaluation condition; at every step the residual of the whole block stack
(last block output minus first block input, image tokens) is compared with the previous step's: the
stored ratio is the mean over rows and tokens of ‖r_i‖ / ‖r_{i−1}‖ (norms over channels), as MagCache's
calibration does. The run goes through the engine with every layer FULL, so the images are the plain
pipeline's, and the residual is the one ``magcache`` reuses.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

import dsbench
from dsbench import machine
from dsbench.core import Method, MethodConfig
from dsbench.engine import Engine
from dsbench.models import zoo


class _Recorder(Method):
    """Unregistered: every layer FULL, keeps the block stack's residual; records its per-token norms."""

    name = "magcache-calibration"
    residual_spans = ((0, 0),)

    def __init__(self):
        super().__init__(MethodConfig())
        self.engine: Engine | None = None
        self.norms: dict[str, list[torch.Tensor]] = {}  # per branch: B×N residual norms of each step

    def end_step(self, i: int, output) -> None:
        engine = self.engine
        assert engine is not None
        residual = engine.branches[engine.branch].residual[(0, 0)][-1]  # the image stream
        self.norms.setdefault(engine.branch, []).append(residual.float().norm(dim=-1))


def magnitude_ratios(pipeline, sample: Callable[[], object]) -> tuple[list[float], list[float]]:
    """Per-step mean and std of ‖r_i‖ / ‖r_{i−1}‖ over rows and tokens while ``sample()`` runs ``pipeline`` once
    (ratios[0] = 1: step 0 has no predecessor), rounded to 5 digits as MagCache stores them."""
    recorder = _Recorder()
    with torch.no_grad(), dsbench.attach(pipeline, recorder) as handle:
        recorder.engine = handle.engine
        sample()
        steps = handle.engine.latest()[0].num_steps
    norms = next(iter(recorder.norms.values()))  # the first branch (cond, with separate CFG passes)
    if len(norms) != steps:
        raise RuntimeError(f"magcache calibration: one run of {steps} steps expected, saw {len(norms)} calls")
    ratios, spread = [1.0], [0.0]
    for previous, current in zip(norms, norms[1:]):
        ratio = current / previous
        ratios.append(round(float(ratio.mean()), 5))
        spread.append(round(float(ratio.std()), 5))
    return ratios, spread


def calibrate(model: str, steps: int | None = None, seed: int = 0) -> dict:
    """The calibration record of zoo model ``model``: one plain run of its first evaluation condition."""
    bundle = zoo.load(model)
    steps = steps or bundle.sampler.steps
    ratios, spread = magnitude_ratios(
        bundle.pipeline, lambda: bundle.sample(bundle.conditions(1, seed), seed, steps=steps)
    )
    return {
        "model": model,
        "family": bundle.family,
        "steps": steps,
        "seed": seed,
        "ratios": ratios,
        "std": spread,
        "machine": machine.describe(),
        "command": f"dsbench calibrate magcache --model {model} --steps {steps} --seed {seed}",
    }


def default_path(model: str) -> Path:
    return Path("results") / "magcache" / model / "ratios.json"


def write(record: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
    return path
