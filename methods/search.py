"""``ga`` and ``random``: the search baselines over the DiffSparse level space as leaderboard arms
(docs/methods/search.md).

Each runs the schedule a search found under the run's MAC budget, with the DiffSparse selector. The search
itself is training: the runner runs it before sampling (``dsbench.training.search.search_schedule``, an Optuna
study in the store's storage) and hands the schedule over as ``schedule``; this module only decides.
"""

from __future__ import annotations

import pydantic

from dsbench.core import Method, RunInfo
from dsbench.methods.base import register
from dsbench.methods.diffsparse.method import DiffSparse, DiffSparseConfig
from dsbench.methods.diffsparse.schedule import load_schedule
from dsbench.methods.diffsparse.space import level_count

SEED_MAX = 2**32 - 1  # numpy and torch take every seed in [0, 2³² − 1]


class SearchConfig(DiffSparseConfig):
    schedule: str | None = pydantic.Field(
        None, description="the searched schedule: the runner sets it after the search; leave it unset"
    )
    evaluations: int = pydantic.Field(
        8, ge=1, le=100_000, description="fitness evaluations of the search, in [1, 100000]"
    )
    minutes: float | None = pydantic.Field(
        None, gt=0.0, description="also stop after this many minutes of evaluations (> 0), or null: no time limit"
    )
    fitness_n: int = pydantic.Field(
        2, ge=1, le=1024, description="conditions of the fitness set (LPIPS to the uncached model), in [1, 1024]"
    )
    fitness_seed: int = pydantic.Field(
        1000,
        ge=0,
        le=SEED_MAX,
        description=f"seed of the fitness set's conditions and noise, in [0, {SEED_MAX}], not one of the "
        "experiment's seeds or its eval.seed",
    )
    search_seed: int = pydantic.Field(0, ge=0, le=SEED_MAX, description=f"seed of the search, in [0, {SEED_MAX}]")
    level_interval: float = pydantic.Field(
        0.25,
        gt=0.0,
        le=0.5,
        description="level interval 1/K of the DiffSparse level space, in (0, 0.5] (0.25: 5 levels)",
    )

    @pydantic.field_validator("level_interval")
    @classmethod
    def _whole_levels(cls, interval: float) -> float:
        level_count(interval)  # 1/interval must be a whole number of levels
        return interval


class GAConfig(SearchConfig):
    population: int = pydantic.Field(4, ge=2, le=10_000, description="genomes per generation, in [2, 10000]")
    elites: int = pydantic.Field(1, ge=0, description="best genomes kept per generation, in [0, population)")
    parents: int = pydantic.Field(3, ge=2, description="best genomes children are bred from, in [2, population]")
    mutation: float = pydantic.Field(0.1, ge=0.0, le=1.0, description="per-gene mutation probability, in [0, 1]")

    @pydantic.field_validator("elites")
    @classmethod
    def _elites_fit(cls, elites: int, info: pydantic.ValidationInfo) -> int:
        population = info.data.get("population", 4)
        if elites >= population:
            raise ValueError(f"elites must be in [0, population) = [0, {population}) for population {population}")
        return elites

    @pydantic.field_validator("parents")
    @classmethod
    def _parents_fit(cls, parents: int, info: pydantic.ValidationInfo) -> int:
        population = info.data.get("population", 4)
        if parents > population:
            raise ValueError(f"parents must be in [2, population] = [2, {population}] for population {population}")
        return parents


class _Searched(DiffSparse):
    """DiffSparse inference of a searched schedule; ``searches`` tells the runner to search it first."""

    Config = SearchConfig
    searches = ""
    budget_field = None  # the search spends the run's budget itself
    families = ("dit", "pixart")  # the searches' fitness and level space are those of the DiT/PixArt trainer

    def __init__(self, config: SearchConfig):
        Method.__init__(self, config)
        self.learned = None if config.schedule is None else load_schedule(config.schedule)

    def reset(self, run: RunInfo) -> None:
        if self.learned is None:
            raise ValueError(
                f"{self.name} runs the schedule its search finds under a MAC budget: run it from an experiment "
                "with a budget (dsbench run FILE), which searches first, or give schedule: PATH"
            )
        super().reset(run)

    def resolved_config(self) -> dict:
        if self.learned is None:
            return self.config.model_dump()
        return {**self.config.model_dump(), **super().resolved_config()}


@register
class GeneticSearch(_Searched):
    name = "ga"
    Config = GAConfig
    searches = "ga"
    summary = (
        "genetic-algorithm search over the DiffSparse level space under the run's MAC budget, then its best schedule"
    )


@register
class RandomSearch(_Searched):
    name = "random"
    searches = "random"
    summary = "random search over the DiffSparse level space under the run's MAC budget, then its best schedule"
