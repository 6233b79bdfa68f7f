"""``duca``: dual caching (docs/methods/duca.md), ToCa's partial steps alternated with whole-network reuse.

Between full steps, odd offsets in the refresh interval are ToCa partial steps ("conservative":
each module recomputes its top-scored tokens) and even offsets reuse the previous step's final
hidden state ("aggressive": every block skipped, the final layer recomputed with the current
timestep — the reference code's behaviour, stronger than the paper's "all but the last layer").
With R = 0 the reference's θ stays N (its ``force_scheduler`` turns into FORA's).
With the reference counter s (DiT s = T−1−i, others s = i) and interval θ:

    FULL if i = 0 or s mod θ = 0;  PARTIAL if s mod θ is odd;  REUSE_OUTPUT otherwise.

The partial steps are ToCa's (fresh-ratio factors, scores, staleness, bonus: ``dsbench.methods.toca``).
DiT adapts θ exactly as ToCa-DiT does, including its per-layer quirk; PixArt keeps θ = N, and so
do FLUX and Wan [PD].
"""

from __future__ import annotations

from typing import Literal

import pydantic

from dsbench.core import (
    FULL,
    NORMAL,
    REUSE,
    REUSE_OUTPUT,
    Decision,
    Directive,
    Layer,
    Method,
    MethodConfig,
    RunInfo,
    ratio_to_count,
    reuse_output,
    topk,
)
from dsbench.methods.base import register
from dsbench.methods.toca import Toca
from dsbench.scores import ScoreSpec

# Public per-model ratios (docs/methods/duca.md). [PD] FLUX: ToCa-FLUX-dev's R; Wan: DuCa-OpenSora's R.
# The public R give 4.642 T (DiT DDIM-50, CFG counted) and 1.541 T (PixArt-α 256), not the
# DiffSparse tables' 4.94 / 1.63 T (docs/accounting.md); tuned to those: R = 0.08 → 4.940 T (DiT),
# R = 1.33 → 1.629 T (PixArt: above 1, since the clamped per-module ratios saturate).
DEFAULT_RATIO = {"dit": 0.05, "pixart": 0.75, "flux": 0.1, "wan": 0.1}

FULL_STEP, PARTIAL, AGGRESSIVE = "full", "partial", "aggressive"


class DucaConfig(MethodConfig):
    ratio: float | None = pydantic.Field(
        None,
        ge=0.0,
        le=4.0,
        description="base fresh ratio R of the partial steps in [0, 4]; each module's "
        "R × step × layer × module factor is clamped to [0, 1], so R > 1 still adds tokens (default per "
        "model: DiT 0.05, PixArt 0.75, FLUX 0.1, Wan 0.1)",
    )
    interval: int | None = pydantic.Field(None, ge=1, description="refresh interval N >= 1 (default 3)")
    threshold_rule: Literal["per_layer", "per_step"] | None = pydantic.Field(
        None, description="DiT only, where ToCa's θ updates take effect: per_layer (default) or per_step"
    )
    ratio_schedule: Literal["ddim50", "ddpm250"] = pydantic.Field(
        "ddim50", description="DiT step/layer factors: ddim50 or ddpm250"
    )
    importance: Literal["attention", "vnorm"] | None = pydantic.Field(
        None,
        description="token score: attention (DiT s1, PixArt/Wan s2, FLUX s1; needs attention probabilities) "
        "or vnorm (value norms, works with fused attention; Wan default)",
    )
    cfg_selection: Literal["shared", "per_half"] | None = pydantic.Field(
        None, description="shared (PixArt/FLUX/Wan default) or per_half (DiT default) token selection"
    )
    bonus: float | None = pydantic.Field(
        None, ge=0.0, description="spatial bonus λ4 >= 0 (DiT 0.8, PixArt 0.4, else 0)"
    )
    bonus_grid: int | None = pydantic.Field(None, ge=1, description="bonus tile size k >= 1 (DiT 2, PixArt 4)")


@register
class Duca(Toca):
    name = "duca"
    Config = DucaConfig
    budget_field = "ratio"
    summary = "dual caching: full steps, then ToCa partial steps alternating with whole-network reuse"

    def reset(self, run: RunInfo) -> None:
        Method.reset(self, run)  # ToCa's own reset resolves ToCa's defaults
        c, fam = self.config, run.family
        self.ratio = c.ratio if c.ratio is not None else DEFAULT_RATIO[fam]
        self.interval = c.interval or 3
        self.rule = c.threshold_rule or "per_layer"
        importance = c.importance or ("vnorm" if fam == "wan" else "attention")
        bonus, grid = {"dit": (0.8, 2), "pixart": (0.4, 4)}.get(fam, (0.0, 1))
        self.score = ScoreSpec(
            attention_received=1.0 if fam in ("dit", "flux") else 0.0,
            cross_entropy=1.0 if fam in ("pixart", "wan") else 0.0,  # [PD] Wan: s2, as PixArt
            staleness=0.25 / self.interval,
            bonus=c.bonus if c.bonus is not None else bonus,
            bonus_grid=c.bonus_grid or grid,
            importance=importance,
            cfg_selection=c.cfg_selection or ("per_half" if fam == "dit" else "shared"),
        )
        self.theta = self.interval
        self._types = (FULL_STEP, FULL_STEP)  # (block 0, later blocks) of the current step

    def resolved_config(self) -> dict:
        dit = self.run.family == "dit"
        return {
            "ratio": self.ratio,
            "interval": self.interval,
            "threshold_rule": self.rule if dit else None,
            "ratio_schedule": self.config.ratio_schedule if dit else None,
            "importance": self.score.importance,
            "cfg_selection": self.score.cfg_selection,
            "bonus": self.score.bonus,
            "bonus_grid": self.score.bonus_grid,
        }

    # -- step rule ------------------------------------------------------------------------------
    def _type(self, i: int) -> str:
        offset = self.counter(i) % self.theta
        if i == 0 or offset == 0:
            return FULL_STEP
        return PARTIAL if offset % 2 == 1 else AGGRESSIVE

    def begin_step(self, i: int) -> Directive:
        """Types of block 0 and of the later blocks, fixed before the step runs.

        DuCa-DiT evaluates the type in every block and updates θ at block 0 of a full step, so the
        later blocks of that step may see another type (the per-layer quirk of docs/methods/toca.md). [PD]
        Where they turn aggressive, the reference skips them and its last block returns the previous
        step's final hidden state: block 0's caches update, its output is discarded (REUSE_OUTPUT(1)).
        """
        first = self._type(i)
        if first == FULL_STEP and self.run.family == "dit":
            self._update_theta(i)
        per_layer = self.run.family == "dit" and self.rule == "per_layer"
        self._types = (first, self._type(i) if per_layer else first)
        if first == AGGRESSIVE:
            return REUSE_OUTPUT
        return reuse_output(1) if self._types[1] == AGGRESSIVE else NORMAL

    def decide(self, i: int, layer: Layer) -> Decision:
        block_type = self._types[min(layer.block, 1)]
        if block_type == FULL_STEP:
            return FULL
        k = ratio_to_count(self.fresh_ratio(i, layer), self.run.n_tokens(layer))
        return topk(k) if k > 0 else REUSE  # k = 0: the module (PixArt ca: its text K/V too) is skipped
