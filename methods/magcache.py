"""``magcache``: Magnitude-aware Cache (docs/methods/magcache.md).

MagCache models the error of reusing the block stack's residual from the ratio of residual magnitudes
between consecutive steps, which it finds nearly the same for every prompt: one calibration run per model
(``dsbench calibrate magcache --model MODEL``) stores the mean per-token norm ratio ‖r_i‖ / ‖r_{i−1}‖ of
the residuals r_i (last block output minus first block input) at each step. At run time the steps after
the first ``retention`` fraction accumulate the product of the ratios since the last computed step and
the error Σ |1 − product|; a step reuses the last computed residual (BLOCK_RESIDUAL(0, 0)) while the error
stays below the threshold and at most K steps in a row were reused, else it computes and resets. The
decisions depend on the calibration alone, so they are planned before the run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydantic

from dsbench.core import FULL, NORMAL, Decision, Directive, Layer, Method, MethodConfig, RunInfo, block_residual
from dsbench.methods.base import register

CALIBRATE = "dsbench calibrate magcache --model MODEL (writes results/magcache/MODEL/ratios.json)"
# (threshold, K = max_skips, retention) per family from MagCache's reference scripts: FLUX.1-dev 0.24 / 5 / 0.1
# (MagCache4FLUX), Wan2.1 t2v 1.3B 0.12 / 4 / 0.2 (MagCache4Wan2.1 README). DiT and PixArt have none
# published: they take the FLUX (image model) setting.
DEFAULTS = {"flux": (0.24, 5, 0.1), "wan": (0.12, 4, 0.2), "dit": (0.24, 5, 0.1), "pixart": (0.24, 5, 0.1)}


class MagCacheConfig(MethodConfig):
    ratios: str = pydantic.Field(
        ...,
        description="path of the model's calibration JSON (per-step residual magnitude ratios), made by " + CALIBRATE,
    )
    threshold: float | None = pydantic.Field(
        None,
        ge=0.0,
        le=2.0,
        description="accumulated error bound in [0, 2]: reuse while Σ|1 − ratio product| stays below it; 0 never "
        "reuses (default per model: FLUX 0.24, Wan 0.12, DiT / PixArt 0.24)",
    )
    max_skips: int | None = pydantic.Field(
        None,
        ge=1,
        description="K, most consecutive reused steps, >= 1 (default per model: FLUX 5, Wan 4, DiT / PixArt 5)",
    )
    retention: float | None = pydantic.Field(
        None,
        ge=0.0,
        le=1.0,
        description="fraction of the first steps always computed, in [0, 1] (default per model: FLUX 0.1, Wan 0.2, "
        "DiT / PixArt 0.1)",
    )


def load_calibration(path: str) -> dict:
    """The calibration JSON (``dsbench.magcache_calibration``), or a one-line ValueError naming the command."""
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"magcache: no calibration file {path!r}; make it with {CALIBRATE}")
    try:
        data = json.loads(file.read_text())
        ratios = [float(r) for r in data["ratios"]]
        family = str(data["family"])
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"magcache: {path!r} is not a calibration file ({err!r}); remake it with {CALIBRATE}"
        ) from None
    if not ratios or not all(np.isfinite(ratios)) or min(ratios) <= 0:
        raise ValueError(f"magcache: {path!r} holds no positive finite ratios; remake it with {CALIBRATE}")
    return {**data, "ratios": ratios, "family": family}


def nearest_ratios(ratios: list[float], steps: int) -> list[float]:
    """The calibrated ratios stretched to ``steps`` steps by nearest index (MagCache's nearest_interp)."""
    if steps == len(ratios):
        return list(ratios)
    if steps == 1:
        return [ratios[-1]]
    scale = (len(ratios) - 1) / (steps - 1)
    return [ratios[int(np.round(i * scale))] for i in range(steps)]


def reused_steps(ratios: list[float], threshold: float, max_skips: int, retention: float) -> list[int]:
    """The steps MagCache reuses, given the per-step magnitude ratios (ratios[0] is unused: step 0 computes)."""
    steps = len(ratios)
    first = max(1, int(retention * steps + 0.5))
    product, count, error, reused = 1.0, 0, 0.0, []
    for i in range(first, steps):
        product *= ratios[i]
        count += 1
        error += abs(1.0 - product)
        if error < threshold and count <= max_skips:
            reused.append(i)
        else:
            product, count, error = 1.0, 0, 0.0
    return reused


@register
class MagCache(Method):
    name = "magcache"
    Config = MagCacheConfig
    budget_field = "threshold"
    summary = "reuse the block stack's residual while a calibrated magnitude-ratio error model stays below a bound"
    residual_spans = ((0, 0),)

    def __init__(self, config: MagCacheConfig):
        super().__init__(config)
        self.calibration = load_calibration(config.ratios)  # a bad path fails at build time, before any work

    def reset(self, run: RunInfo) -> None:
        super().reset(run)
        if self.calibration["family"] != run.family:
            raise ValueError(
                f"magcache: {self.config.ratios!r} calibrates a {self.calibration['family']} model, not this "
                f"{run.family} model; make its own with {CALIBRATE}"
            )
        c = self.config
        threshold, max_skips, retention = DEFAULTS[run.family]
        self.threshold = threshold if c.threshold is None else c.threshold
        self.max_skips = max_skips if c.max_skips is None else c.max_skips
        self.retention = retention if c.retention is None else c.retention
        self.ratios = nearest_ratios(self.calibration["ratios"], run.num_steps)
        self.reused = set(reused_steps(self.ratios, self.threshold, self.max_skips, self.retention))

    def resolved_config(self) -> dict:
        return {
            "ratios": self.config.ratios,
            "threshold": self.threshold,
            "max_skips": self.max_skips,
            "retention": self.retention,
            "reused_steps": sorted(self.reused),
        }

    def begin_step(self, i: int) -> Directive:
        return block_residual(0, 0) if i in self.reused else NORMAL

    def decide(self, i: int, layer: Layer) -> Decision:
        return FULL
