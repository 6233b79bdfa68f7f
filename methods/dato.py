"""``dato``: dynamics-aware token pruning with step-wise caching, ported to DiT (docs/methods/dato.md).

Every step has a cache depth d and a prune ratio r. d = 0 reuses the last block's output
(REUSE_OUTPUT), d = 1 computes the first and the last block around the cached residual of the
others (BLOCK_RESIDUAL(1, 1)), "full" computes every block. Inside every computed block's
self-attention, one base token per s×s patch (the largest change of the predicted noise over
the two previous calls, the same positions for both CFG halves) is kept, and the ⌊r·N⌋ other
tokens most similar to a base token are pruned: self-attention runs on the kept tokens only
and each pruned token copies the output of its most similar kept token. Cross-attention and
MLP stay dense. The per-step (d, r) pairs come from ``search_schedule`` (NSGA-II).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

import pydantic
import torch

from dsbench.core import (
    FULL,
    NORMAL,
    REUSE_OUTPUT,
    Decision,
    Layer,
    Method,
    MethodConfig,
    NotApplicable,
    RunInfo,
    Selection,
    block_residual,
    ratio_to_count,
    topk,
)
from dsbench.methods.base import register
from dsbench.methods.pruning import both_halves, noise_tokens

DEPTHS = (0, 1, "full")
SEARCH_RATIOS = (0.3, 0.4, 0.5, 0.6, 0.7)  # the paper's search space for r
DEFAULT_RATIO = 0.3  # [PD] the most conservative r of the search space
DEFAULT_FULL_EVERY = 3  # [PD] default schedule: full steps at i % 3 == 0, d = 1 in between

Depth = Literal[0, 1, "full"]


def max_ratio(patch: int) -> float:
    """r ≤ 1 − 1/s²: only the non-base tokens can be pruned."""
    return 1.0 - 1.0 / patch**2


class DatoConfig(MethodConfig):
    patch: int = pydantic.Field(2, ge=1, description="base-token patch size s >= 1: one base token per s×s patch")
    schedule: list[tuple[Depth, float]] | None = pydantic.Field(
        None,
        description="per-step [d, r] pairs, one per denoiser call: d in {0, 1, 'full'}, r in [0, 1 − 1/s²] "
        "(0.75 at s = 2); step 0 must be ['full', 0]. Default: full every 3rd step, d = 1 in between, r = ratio",
    )
    ratio: float | None = pydantic.Field(
        None, ge=0.0, le=1.0, description="prune ratio r of the default schedule, in [0, 1 − 1/s²] (default 0.3)"
    )
    recover_from: Literal["kept", "base"] = pydantic.Field(
        "kept", description="pruned tokens copy their most similar kept token (code) or base token (paper)"
    )
    seed: int = pydantic.Field(
        0, ge=0, le=2**32 - 1, description="seed of the random base-token score of the first steps, in [0, 2³² − 1]"
    )

    @pydantic.field_validator("schedule")
    @classmethod
    def _check_schedule(cls, schedule, info):
        if schedule is None:
            return schedule
        if not schedule or schedule[0][0] != "full" or schedule[0][1] != 0:
            raise ValueError("step 0 must be ['full', 0] (every token is computed where the caches are created)")
        limit = max_ratio(info.data.get("patch", 2))
        for i, (_, r) in enumerate(schedule):
            if not 0.0 <= r <= limit:
                raise ValueError(f"step {i}: prune ratio {r} is outside [0, {limit:g}]")
        return schedule

    @pydantic.field_validator("ratio")
    @classmethod
    def _check_ratio(cls, ratio, info):
        if ratio is None:
            return ratio
        if info.data.get("schedule") is not None:
            raise ValueError("give either ratio (the r of the default schedule) or schedule, not both")
        limit = max_ratio(info.data.get("patch", 2))
        if ratio > limit:
            raise ValueError(f"prune ratio must be in [0, {limit:g}] for patch {info.data.get('patch', 2)}")
        return ratio


def default_schedule(num_steps: int, ratio: float) -> list[tuple[Depth, float]]:
    """[PD] Full every 3rd step (i % 3 == 0) and DaTo's shallowest cache branch (d = 1) in between,
    r on every step but the first; d = 0 steps are left to the search."""
    return [("full", 0.0)] + [("full" if i % DEFAULT_FULL_EVERY == 0 else 1, ratio) for i in range(1, num_steps)]


@register
class Dato(Method):
    name = "dato"
    Config = DatoConfig
    budget_field = "ratio"
    summary = "dynamics-aware token pruning in self-attention plus per-step cache depth (searched schedule)"
    residual_spans = ((1, 1),)  # d = 1

    def reset(self, run: RunInfo) -> None:
        if run.family not in ("dit", "pixart"):
            raise NotApplicable(f"dato runs on DiT and PixArt (BasicTransformerBlock) models, not {run.family}")
        super().reset(run)
        c = self.config
        if c.schedule is not None and len(c.schedule) != run.num_steps:
            raise ValueError(
                f"dato: parameter 'schedule' has {len(c.schedule)} steps; this run makes {run.num_steps} denoiser calls"
            )
        self.steps = (
            list(c.schedule)
            if c.schedule is not None
            else default_schedule(run.num_steps, DEFAULT_RATIO if c.ratio is None else c.ratio)
        )
        self.outputs: list[torch.Tensor] = []  # ε of the last two calls
        self.generator = torch.Generator().manual_seed(c.seed)
        self.base = None  # B×N mask of this step's base tokens
        self.n_prune = 0

    def resolved_config(self) -> dict:
        return {**self.config.model_dump(), "schedule": [list(step) for step in self.steps]}

    # -- per step ---------------------------------------------------------------------------------
    def begin_step(self, i: int):
        depth, ratio = self.steps[i]
        run = self.run
        self.n_prune = 0
        if depth != 0 and ratio > 0:
            self.base = self._base_tokens()
            self.n_prune = min(ratio_to_count(ratio, run.n_image), run.n_image - self.n_base)
        return {0: REUSE_OUTPUT, 1: block_residual(1, 1), "full": NORMAL}[depth]

    def decide(self, i: int, layer: Layer) -> Decision:
        if layer.module == "sa" and self.n_prune > 0:
            return topk(self.run.n_image - self.n_prune, kv="selected", fill="copy")
        return FULL

    @property
    def n_base(self) -> int:
        s, (h, w) = self.config.patch, self.run.grid
        return -(-h // s) * -(-w // s)

    def end_step(self, i: int, output) -> None:
        self.outputs = (self.outputs + [noise_tokens(output, self.run).float()])[-2:]

    def diff_score(self) -> torch.Tensor:
        """DiffScore (B×N): channel mean of |ε_{i−1} − ε_{i−2}|; random before two calls [C]."""
        if len(self.outputs) < 2:
            rows = self.run.batch
            return torch.rand(rows, self.run.n_image, generator=self.generator).to(self.outputs[-1].device)
        return (self.outputs[-1] - self.outputs[-2]).abs().mean(dim=-1)

    def _base_tokens(self) -> torch.Tensor:
        """B×N mask: the DiffScore argmax of every s×s patch (grid padded to whole patches [PD]),
        the first CFG half's positions copied to the second (Eq. 8)."""
        score = self.diff_score()
        if self.run.cfg_batched:
            score = score[: score.shape[0] // 2]
        return both_halves(patch_argmax_mask(score, self.run.grid, self.config.patch), self.run)

    # -- pruning inside a computed self-attention -----------------------------------------------------
    def select(self, i, layer, k, ctx):
        """Keep the base tokens and the non-base tokens least similar to any base token; every
        pruned token copies its most similar kept (or base) token."""
        x = ctx.hidden_states if ctx.hidden_states is not None else ctx.layer_input
        x = torch.nn.functional.normalize(x.float(), dim=-1)
        base = self.base.to(x.device)
        base_index = torch.argsort((~base).to(torch.int8), dim=-1, stable=True)[:, : self.n_base]
        to_base = x @ rows_of(x, base_index).transpose(1, 2)  # B×N×|base| cosine similarity
        closest_sim, closest = to_base.max(dim=-1)
        candidate = closest_sim.masked_fill(base, float("-inf"))
        pruned_index = torch.topk(candidate, self.n_prune, dim=-1).indices
        pruned = torch.zeros_like(base).scatter_(1, pruned_index, True)
        index = torch.argsort(pruned.to(torch.int8), dim=-1, stable=True)[:, :k]  # kept tokens, ascending
        n, c = x.shape[1], x.shape[2]
        macs = n * self.n_base * c
        if self.config.recover_from == "base":
            nearest = torch.gather(base_index, 1, torch.gather(closest, 1, pruned_index))
        else:
            to_kept = rows_of(x, pruned_index) @ rows_of(x, index).transpose(1, 2)  # B×pruned×kept
            nearest = torch.gather(index, 1, to_kept.argmax(dim=-1))
            macs += self.n_prune * k * c
        source = torch.arange(n, device=x.device).repeat(x.shape[0], 1).scatter_(1, pruned_index, nearest)
        self.selection_macs += macs * (2 if self.run.cfg_batched else 1)  # both CFG halves, per image
        return Selection(index, source)


def rows_of(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows ``index`` (B×k) of x (B×N×C)."""
    return torch.gather(x, 1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def patch_argmax_mask(score: torch.Tensor, grid: tuple[int, int], s: int) -> torch.Tensor:
    """B×N mask with the highest-scoring token of every s×s patch of the token grid."""
    b, n = score.shape
    h, w = grid
    ph, pw = (-h) % s, (-w) % s
    padded = torch.nn.functional.pad(score.view(b, h, w), (0, pw, 0, ph), value=float("-inf"))
    hh, ww = padded.shape[1] // s, padded.shape[2] // s
    tiles = padded.view(b, hh, s, ww, s).permute(0, 1, 3, 2, 4).reshape(b, hh, ww, s * s)
    local = tiles.argmax(dim=-1)
    rows = torch.arange(hh, device=score.device)[:, None] * s + local // s
    cols = torch.arange(ww, device=score.device)[None, :] * s + local % s
    mask = torch.zeros(b, n, dtype=torch.bool, device=score.device)
    return mask.scatter_(1, (rows * w + cols).reshape(b, -1), True)


# -- schedule search (docs/methods/dato.md; NSGA-II template of docs/methods/search.md) -------------------
def search_schedule(
    evaluate: Callable[[list], tuple[float, float]],
    num_steps: int,
    *,
    trials: int = 100,
    population: int = 20,
    storage: str | Path | None = None,
    study_name: str = "dato-schedule",
    seed: int = 0,
):
    """NSGA-II (optuna's NSGAIISampler) over the per-step genes (d, r) of steps 1…T−1.

    evaluate(schedule) -> (fitness, macs), both minimised: e.g. LPIPS to the teacher and the same
    run's M_lin (``handle.report()["macs_cfg_counted"]``). storage: an Optuna storage URL, or a
    SQLite file path; None keeps the study in memory. An existing study of that name is resumed:
    only the trials still missing from ``trials`` completed ones are run. Returns the study; pick
    a schedule with ``best_schedule``.
    """
    import optuna

    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if trials < 1 or population < 2:
        raise ValueError(f"need trials >= 1 and population >= 2, got trials={trials}, population={population}")
    if storage is not None and "://" not in str(storage):
        storage = f"sqlite:///{Path(storage).resolve()}"
    study = optuna.create_study(
        study_name=study_name,
        storage=storage,
        directions=["minimize", "minimize"],
        load_if_exists=True,
        sampler=optuna.samplers.NSGAIISampler(population_size=population, seed=seed),
    )

    def objective(trial) -> tuple[float, float]:
        schedule = [["full", 0.0]]
        for i in range(1, num_steps):
            depth = trial.suggest_categorical(f"d{i}", [str(d) for d in DEPTHS])
            schedule.append(
                [depth if depth == "full" else int(depth), trial.suggest_categorical(f"r{i}", SEARCH_RATIOS)]
            )
        trial.set_user_attr("schedule", schedule)
        fitness, macs = evaluate(schedule)
        return float(fitness), float(macs)

    done = sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    if done < trials:
        study.optimize(objective, n_trials=trials - done)
    return study


def best_schedule(study, budget: float | None = None) -> list:
    """The schedule of the fittest completed trial whose M_lin is within ``budget`` (docs/methods/search.md)."""
    import optuna

    trials = [
        t
        for t in study.trials
        if t.state == optuna.trial.TrialState.COMPLETE and (budget is None or t.values[1] <= budget)
    ]
    if not trials:
        raise ValueError(f"no completed trial within the MAC budget {budget}")
    return min(trials, key=lambda t: (t.values[0], t.values[1])).user_attrs["schedule"]
