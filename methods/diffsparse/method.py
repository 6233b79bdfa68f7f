"""``diffsparse``: inference with a learned static schedule (docs/methods/diffsparse.md, inference paragraph).

Step 0 is FULL; every later (step, layer) runs at its learned level ρ: REUSE (ρ = 0), FULL
(ρ = 1) or TOPK(⌊ρN⌋) with the DiffSparse selector, ranking tokens as in training (the schedule
records its importance metric, dropped terms and PixArt λ1; the config may override them). The DP
is not run at inference. Levels are fractions, so a schedule trained at one resolution runs at any
other of the same (T, L).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pydantic

from dsbench.core import Decision, Layer, Method, MethodConfig, RunInfo
from dsbench.methods.base import register
from dsbench.methods.diffsparse.schedule import load_schedule
from dsbench.methods.diffsparse.selector import selector_spec

ROOT = Path(__file__).resolve().parents[2]
TRAIN_HINT = (
    "train one with `dsbench train diffsparse FILE` (training files: experiments/train_*.yaml) "
    "or `python -m dsbench.training.diffsparse --model MODEL --out FOLDER`"
)


def committed_schedules() -> list[str]:
    """The schedules shipped in the repository (results/diffsparse/<model>/schedule.json), relative paths."""
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "results" / "diffsparse").glob("*/schedule.json"))


class DiffSparseConfig(MethodConfig):
    schedule: str = pydantic.Field(
        ...,
        description="path of a schedule JSON written by dsbench.methods.diffsparse.schedule.export_schedule; "
        + TRAIN_HINT,
    )
    importance: Literal["attention", "similarity", "norm"] | None = pydantic.Field(
        None,
        description="token importance: attention (model default score), similarity or norm; "
        "default: what the schedule was trained with",
    )
    drop: tuple[Literal["s1", "s2", "s3", "B"], ...] | None = pydantic.Field(
        None, description="score terms removed (ablation): any of s1, s2, s3, B; default: the schedule's"
    )
    cfg_selection: Literal["shared", "per_half"] | None = pydantic.Field(
        None, description="shared (PixArt/FLUX/Wan default) or per_half (DiT default) token selection"
    )
    pixart_lambda1: float | None = pydantic.Field(
        None, ge=0.0, description="PixArt λ1 (s1 weight) >= 0; default: the schedule's, else 0 as in the paper's A.5.1"
    )

    @classmethod
    def required_hint(cls, field_name: str) -> str:
        if field_name != "schedule":
            return super().required_hint(field_name)
        shipped = committed_schedules()
        return (
            "the path of a learned schedule JSON, e.g. schedule: results/diffsparse/<model>/schedule.json "
            f"(committed: {', '.join(shipped) if shipped else 'none in this checkout'}); {TRAIN_HINT}"
        )


@register
class DiffSparse(Method):
    name = "diffsparse"
    Config = DiffSparseConfig
    # A schedule is trained for one budget R: there is no field to tune at run time; retrain
    # (python -m dsbench.training.diffsparse) for another budget.
    budget_field = None
    summary = "learned per-(step, layer) token sparsity: a static schedule trained under a MAC budget"

    def __init__(self, config: DiffSparseConfig):
        super().__init__(config)
        self.learned = load_schedule(config.schedule)  # a bad path fails at build time, before any work

    def reset(self, run: RunInfo) -> None:
        super().reset(run)
        self.learned.check_run(run.num_steps, [layer.name for layer in run.layers], run.family)
        c, trained = self.config, self.learned.meta.get("config") or {}
        self.drop = tuple(trained.get("drop") or ()) if c.drop is None else c.drop
        importance = c.importance or trained.get("importance") or "attention"
        lambda1 = trained.get("pixart_lambda1") if c.pixart_lambda1 is None else c.pixart_lambda1
        self.score = selector_spec(
            run.family, importance=importance, drop=self.drop, cfg_selection=c.cfg_selection, pixart_lambda1=lambda1
        )

    def decide(self, i: int, layer: Layer) -> Decision:
        return self.learned.decision(i, layer.index, self.run.n_tokens(layer))

    def resolved_config(self) -> dict:
        s, meta = self.score, self.learned.meta
        return {
            "schedule": str(self.learned.path),
            "config_hash": meta.get("config_hash"),
            "budget_ratio": meta.get("budget_ratio"),
            "K": self.learned.K,
            "levels": (self.learned.levels / self.learned.K).tolist(),
            "importance": s.importance,
            "drop": list(self.drop),
            "cfg_selection": s.cfg_selection,
            "lambda1": s.attention_received,
            "lambda2": s.cross_entropy,
            "lambda3": s.staleness,
            "bonus": s.bonus,
            "bonus_grid": s.bonus_grid,
        }
