"""``toca``: token-wise caching with hand-set schedules (docs/methods/toca.md).

Periodic full steps; in between, each module recomputes the top-scored fraction r of its
tokens, r = R × step factor × layer factor × module factor (clamped to [0, 1]), and reuses
the cache for the rest. The full-step rule, factors, scores and CFG selection follow the
reference code of each model family.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pydantic

from dsbench.core import FULL, REUSE, Decision, Layer, Method, MethodConfig, RunInfo, ratio_to_count, topk
from dsbench.methods.base import register
from dsbench.scores import ScoreSpec


def refresh_interval(family: str, interval: int, num_steps: int, counter: int, ratio: float = 1.0) -> int:
    """θ, the number of steps until the next full step, set at a full step: N where R = 0 (the reference's
    ``force_scheduler`` turns into FORA: no step weight, no forced window), else round(N / step factor), the factor
    linear in the counter s (DiT: 1.4 − 0.8·s/T, counting down, θ = 2 for s in [0.2 T, 0.4 T); PixArt and the
    others: 0.8 + 0.4·s/T; FLUX: N). As in the authors' code the factor is computed in float64 and converted
    to float32 once, the division is float32 and rounds half to even: on exact .5 ties (DiT, N = 2, T = 20,
    s = 15) a factor computed in float32 throughout would round the other way."""
    if family == "flux" or ratio == 0:
        return interval
    if family == "dit":
        if int(0.2 * num_steps) <= counter < int(0.4 * num_steps):
            return 2
        factor = 1 + 0.4 - 2 * 0.4 * counter / num_steps
    else:
        factor = 1 - 0.2 + 2 * 0.2 * counter / num_steps
    return max(1, int(np.round(np.float32(interval) / np.float32(factor))))


class TocaConfig(MethodConfig):
    ratio: float | None = pydantic.Field(
        None,
        ge=0.0,
        le=1.0,
        description="base fresh ratio R in [0, 1] (default per model: DiT 0.07, "
        "PixArt 0.30, FLUX-dev 0.1, FLUX-schnell 0.51)",
    )
    interval: int | None = pydantic.Field(None, ge=1, description="full-step interval N >= 1 (default 3; FLUX 4)")
    threshold_rule: Literal["per_layer", "per_step"] | None = pydantic.Field(
        None, description="where θ updates take effect: per_layer (DiT default) or per_step (PixArt default)"
    )
    ratio_schedule: Literal["ddim50", "ddpm250"] = pydantic.Field(
        "ddim50", description="DiT step/layer factors: ddim50 or ddpm250"
    )
    warmup: int | None = pydantic.Field(
        None, ge=1, description="FLUX: leading full calls >= 1 (dev 3, schnell 1; 1 when ratio is 0)"
    )
    importance: Literal["attention", "similarity", "norm", "vnorm", "random"] = pydantic.Field(
        "attention", description="token importance: attention (model default score), similarity, norm, vnorm, random"
    )
    cfg_selection: Literal["shared", "per_half"] | None = pydantic.Field(
        None, description="shared (PixArt/FLUX/Wan default) or per_half (DiT default) token selection"
    )
    bonus: float | None = pydantic.Field(None, ge=0.0, description="spatial bonus λ4 >= 0 (DiT 0.6, PixArt 0.4)")
    bonus_grid: int | None = pydantic.Field(None, ge=1, description="bonus tile size k >= 1 (DiT 2, PixArt 4)")


# Module factors of the partial steps; a module absent from the dict is REUSEd (docs/methods/toca.md).
MODULE_FACTOR = {
    "dit": {"mlp": 1 + 0.6 * 2.5},  # sa: 1 − 0.4·2.5 = 0, never partial
    "pixart": {"ca": 0.6, "mlp": 1.6},
    "wan": {"ca": 0.6, "mlp": 1.6},  # [PD] not evaluated by ToCa: PixArt's factors
    "flux": {"img_mlp": 0.4, "txt_mlp": 0.4, "mlp": 1.6},
}


@register
class Toca(Method):
    name = "toca"
    Config = TocaConfig
    budget_field = "ratio"
    summary = "token-wise caching: periodic full steps, top-scored tokens recomputed in between"

    def reset(self, run: RunInfo) -> None:
        super().reset(run)
        c, fam = self.config, run.family
        schnell = fam == "flux" and run.variant == "schnell"
        self.ratio = (
            c.ratio
            if c.ratio is not None
            else {"dit": 0.07, "pixart": 0.30, "wan": 0.30, "flux": 0.51 if schnell else 0.1}[fam]
        )
        self.interval = c.interval or (4 if fam == "flux" else 3)
        self.rule = c.threshold_rule or ("per_layer" if fam == "dit" else "per_step")
        self.warmup = c.warmup or (1 if schnell or self.ratio == 0 else 3)  # R = 0: the reference's FORA mode
        bonus, grid = {"dit": (0.6, 2), "pixart": (0.4, 4)}.get(fam, (0.0, 1))
        self.score = ScoreSpec(
            attention_received=1.0 if fam in ("dit", "flux") else 0.0,
            cross_entropy=1.0 if fam == "pixart" else 0.0,
            staleness=0.25 / self.interval,
            bonus=c.bonus if c.bonus is not None else bonus,
            bonus_grid=c.bonus_grid or grid,
            importance="vnorm" if fam == "wan" and c.importance == "attention" else c.importance,
            cfg_selection=c.cfg_selection or ("per_half" if fam == "dit" else "shared"),
        )
        self.theta = self.interval
        self._block = -1
        self._block_full = False
        self._step_full = False

    def resolved_config(self) -> dict:
        return {
            "ratio": self.ratio,
            "interval": self.interval,
            "threshold_rule": self.rule,
            "ratio_schedule": self.config.ratio_schedule,
            "importance": self.score.importance,
            "cfg_selection": self.score.cfg_selection,
            "bonus": self.score.bonus,
            "bonus_grid": self.score.bonus_grid,
            "warmup": self.warmup if self.run.family == "flux" else None,
        }

    # -- full-step rule ----------------------------------------------------------------------
    def counter(self, i: int) -> int:
        """Reference counter s: DiT counts down (s = T−1−i), the others count up (docs/concepts.md#step-index)."""
        return self.run.num_steps - 1 - i if self.run.family == "dit" else i

    def _is_full(self, i: int) -> bool:
        if self.run.family == "flux":  # warm-up calls, then every N-th call (counter form)
            return i < self.warmup or (i - (self.warmup - 1)) % self.interval == 0
        return i == 0 or self.counter(i) % self.theta == 0

    def _update_theta(self, i: int) -> None:
        self.theta = refresh_interval(self.run.family, self.interval, self.run.num_steps, self.counter(i), self.ratio)

    def begin_step(self, i: int):
        self._block = -1
        if self.rule == "per_step":
            self._step_full = self._is_full(i)
            if self._step_full:
                self._update_theta(i)
        return super().begin_step(i)

    def _block_is_full(self, i: int, block: int) -> bool:
        if self.rule == "per_step":
            return self._step_full
        if block != self._block:  # evaluated in every block; θ updates at block 0 (per-layer rule)
            self._block = block
            self._block_full = self._is_full(i)
            if self._block_full and block == 0:
                self._update_theta(i)
        return self._block_full

    # -- partial steps ---------------------------------------------------------------------------
    def fresh_ratio(self, i: int, layer: Layer) -> float:
        fam, T = self.run.family, self.run.num_steps
        module = MODULE_FACTOR[fam].get(layer.module)
        if module is None:
            return 0.0
        b, D = layer.stream_block, self.run.depth_divisor(layer)
        if fam == "dit":
            s = self.counter(i)
            if self.config.ratio_schedule == "ddim50":
                step, depth = 3 - 4 * s / T, 0.8 + 0.4 * b / D
            else:
                step, depth = 1.4 - 0.8 * s / T, 1.8 - 1.6 * b / D
        elif fam == "flux":
            step, depth = 1.0, 1.5 - 1.0 * b / D
        else:
            step, depth = 1.9 - 1.8 * i / T, 1.6 - 1.2 * b / D
        return self.ratio * step * depth * module

    def may_topk(self, layer: Layer) -> bool:
        return layer.supports_topk and layer.module in MODULE_FACTOR[self.run.family]

    def decide(self, i: int, layer: Layer) -> Decision:
        if self._block_is_full(i, layer.block):
            return FULL
        k = ratio_to_count(self.fresh_ratio(i, layer), self.run.n_tokens(layer))
        return topk(k) if k > 0 else REUSE

    @classmethod
    def explain_schedule(cls, run: dict) -> str | None:
        """A human-readable note on where this run's full steps are and why, for the report (None where the
        schedule is the plain every-N-th step). ``run``: a stored row — ``family``, ``steps`` and the resolved
        ``config`` (interval, threshold_rule, warmup) the runner records."""
        config = run.get("config") if isinstance(run.get("config"), dict) else {}
        family, steps = run.get("family"), run.get("steps")
        if cls is not Toca or not family or not steps or not config.get("interval"):
            return None  # DuCa and other subclasses have their own step types
        rule = config.get("threshold_rule") or ("per_layer" if family == "dit" else "per_step")
        ratio = config.get("ratio")
        return schedule_note(
            family,
            int(config["interval"]),
            int(steps),
            rule,
            int(config.get("warmup") or 3),
            1.0 if ratio is None else ratio,
        )


# -- human-readable explanation of the full-step rule (read by dsbench.report's leaderboard notes) -------------
def full_steps(
    family: str, interval: int, num_steps: int, rule: str = "per_layer", warmup: int = 3, ratio: float = 1.0
) -> tuple[list[int], list[int]]:
    """The steps the full-step rule makes full, without running a model: (full steps, steps full at layer 0 only
    — the per-layer θ update of the reference code changes θ inside block 0, so the later blocks of such a step
    read the new θ and are partial)."""
    if family == "flux":
        return [i for i in range(num_steps) if i < warmup or (i - (warmup - 1)) % interval == 0], []
    theta, full, layer0 = interval, [], []
    for i in range(num_steps):
        s = num_steps - 1 - i if family == "dit" else i
        if not (i == 0 or s % theta == 0):
            continue
        theta = refresh_interval(family, interval, num_steps, s, ratio)
        if rule == "per_layer" and i != 0 and s % theta != 0:
            layer0.append(i)  # full at block 0 (old θ), partial from block 1 on (new θ)
        else:
            full.append(i)
    return full, layer0


def schedule_note(
    family: str, interval: int, num_steps: int, rule: str = "per_layer", warmup: int = 3, ratio: float = 1.0
) -> str | None:
    """Why ToCa's full steps are where they are, in words, where they differ from the naive every-N-th step
    (0, N, 2N, ...); None where they do not (FLUX's counter) — the leaderboard prints it under the table."""
    full, layer0 = full_steps(family, interval, num_steps, rule, warmup, ratio)
    if full == list(range(0, num_steps, interval)) and not layer0:
        return None
    if family == "dit":
        weight = (
            "the step weight 1.4 − 0.8·s/T rises from 0.6 to 1.4 as the counter s = T−1−i counts down "
            "(θ = 2 for s in [0.2T, 0.4T))"
        )
    elif family == "flux":
        weight = f"a warm-up: the first {warmup} calls are full, then every N-th call"
    else:
        weight = "the step weight 0.8 + 0.4·i/T rises from 0.8 to 1.2 over the steps"
    rule_text = (
        f"the authors' step-weighted interval: at each full step the gap to the next is θ = round(N / weight), and "
        f"{weight}, so full steps are sparse early and dense toward the end"
        if family != "flux"
        else weight
    )
    only = (
        f"; θ changes inside block 0 (the reference's per-layer update), so step(s) {', '.join(map(str, layer0))} "
        "are full at layer 0 only"
        if layer0
        else ""
    )
    return (
        f"full steps follow {rule_text}: interval={interval} over {num_steps} steps gives "
        f"[{', '.join(map(str, full))}] rather than {', '.join(map(str, range(0, 3 * interval, interval)))}, …{only} "
        "(docs/methods/toca.md)"
    )
