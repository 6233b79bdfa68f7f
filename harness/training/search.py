"""Search baselines over the DiffSparse level space (docs/methods/search.md): GA, random search, NSGA-II.

Every search runs as an Optuna study (GA and random search add one finished trial per evaluated
genome; NSGA-II is optuna's own sampler), so it lives in the same storage as the rest of
the sweeps and resumes: each evaluated genome is one trial whose user attributes hold its
levels and its place in the search ((generation, child)); on resume the search replays its
deterministic generator (seeded per generation) and takes the stored fitness of every genome
already evaluated, so an interrupted search ends exactly where an uninterrupted one would.

``fitness(levels) -> float`` is lower-is-better (FID, or LPIPS to the teacher:
:func:`teacher_lpips_fitness`). Genomes are one level index per cell of a ``LevelSpace``.
``minutes`` bounds a search by time as well (equal-time baselines against training): the summed time of its
evaluations, stored ones included, so a resumed search counts the time it already spent.

The ``ga`` and ``random`` methods are these searches as leaderboard arms: the runner calls
:func:`search_schedule` before sampling, with the run's MAC budget, and evaluates the schedule it finds.

    python -m dsbench.training.search --model shapes-pixart --method ga --ratio 0.5 --minutes 10 --out DIR \
        [--storage sqlite:///DIR/search.db --study ga] [--fitness lpips|fid]

writes ``DIR/schedule.json`` (the trainer's export format; ``methods.build("diffsparse", schedule=...)``
runs it) and ``DIR/search.json``; with ``--storage`` a rerun resumes the study.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import torch

import dsbench
from dsbench import methods
from dsbench.macs import level_space_of
from dsbench.methods.diffsparse.schedule import export_schedule
from dsbench.methods.diffsparse.space import LevelSpace, level_count
from dsbench.metrics import compute
from dsbench.metrics.fidelity import lpips_distance
from dsbench.models import zoo

Fitness = Callable[[np.ndarray], float]
# after every evaluation: (its fitness, the best so far, whether it came from the study)
Callback = Callable[[float, float, bool], None]


@dataclass
class SearchResult:
    levels: np.ndarray  # best genome
    fitness: float
    macs: float  # M_lin per image of the best genome
    evaluations: int  # genomes evaluated in the whole study (resumed ones included)
    study: optuna.Study
    fresh: int = 0  # genomes this call evaluated (the others came from the study)
    seconds: float = 0.0  # evaluation time of the genomes of this search, stored ones included


def repair(levels: np.ndarray, weights: np.ndarray, budget: int, window: int, rng: np.random.Generator) -> np.ndarray:
    """Make a genome feasible (docs/methods/search.md, [PD]): decrement random cells with level > 0 while over
    the budget, then increment random cells whose increment keeps the cost ≤ budget while more
    than ``window`` under it, until no such cell exists."""
    levels = np.array(levels, dtype=np.int64)
    rows = np.arange(len(levels))
    top = weights.shape[1] - 1
    cost = int(weights[rows, levels].sum())
    while cost > budget:
        candidates = np.flatnonzero(levels > 0)
        if candidates.size == 0:
            break
        c = rng.choice(candidates)
        cost -= int(weights[c, levels[c]] - weights[c, levels[c] - 1])
        levels[c] -= 1
    while cost < budget - window:
        up = np.minimum(levels + 1, top)
        step = weights[rows, up] - weights[rows, levels]
        candidates = np.flatnonzero((levels < top) & (cost + step <= budget))
        if candidates.size == 0:
            break
        c = rng.choice(candidates)
        cost += int(step[c])
        levels[c] += 1
    return levels


class _Search:
    """Shared bookkeeping: the study, the feasible space and replay of stored evaluations."""

    def __init__(
        self,
        kind: str,
        space: LevelSpace,
        fitness: Fitness,
        ratio: float,
        evaluations: int,
        seed: int,
        storage: str | None,
        study_name: str | None,
        settings: dict,
        minutes: float | None = None,
        callback: Callback | None = None,
    ):
        if evaluations < 1:
            raise ValueError(f"evaluations must be >= 1, got {evaluations}")
        # the clock counts the seconds of the evaluations of this search: a stored one adds what it took when it
        # ran, so a resumed search stops where an uninterrupted one would, and a finished one adds nothing
        self.seconds_limit = None if minutes is None else 60 * _check_minutes(minutes)
        self.elapsed, self.clock = 0.0, time.monotonic()
        self.callback = callback
        self.best: tuple[float, np.ndarray] | None = None  # lowest fitness among the genomes of this search
        self.fresh = 0  # genomes evaluated by this call (not taken from the study)
        self.space, self.fitness, self.seed = space, fitness, seed
        self.weights = space.weights
        self.budget = space.budget(ratio)
        self.window = space.window(self.budget)
        self.limit = evaluations
        identity = {
            "search": kind,
            "seed": seed,
            "ratio": ratio,
            "cells": space.n_cells,
            "K": space.K,
            "mode": space.mode,
            "budget": self.budget,
            **settings,
        }
        self.study = optuna.create_study(
            storage=storage,
            study_name=study_name or f"diffsparse-{kind}-{seed}",
            direction="minimize",
            load_if_exists=True,
        )
        stored = self.study.user_attrs.get("search")
        if stored is None:
            self.study.set_user_attr("search", identity)
        elif stored != identity:
            raise ValueError(
                f"study {self.study.study_name!r} holds a different search ({stored}); "
                f"use another study_name for {identity}"
            )
        self.done = {
            (t.user_attrs["generation"], t.user_attrs["child"]): t
            for t in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        }
        self.count = 0

    def rng(self, generation: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, generation])

    def random_genome(self, rng: np.random.Generator) -> np.ndarray:
        return repair(
            rng.integers(0, self.space.K + 1, size=self.space.n_cells), self.weights, self.budget, self.window, rng
        )

    @property
    def finished(self) -> bool:
        if self.count >= self.limit:
            return True
        return self.seconds_limit is not None and self.elapsed + time.monotonic() - self.clock > self.seconds_limit

    def evaluate(self, generation: int, child: int, levels: np.ndarray) -> float:
        """Fitness of a genome: the stored one when this (generation, child) was evaluated before."""
        self.count += 1
        trial = self.done.get((generation, child))
        if trial is not None:
            if list(trial.user_attrs["levels"]) != levels.tolist():
                raise ValueError(
                    f"study {self.study.study_name!r}: stored genome ({generation}, {child}) differs "
                    "from the replayed one (the code or the space changed); start a new study"
                )
            value = float(trial.value)
            self.elapsed += float(trial.user_attrs.get("seconds", 0.0))
        else:
            value = float(self.fitness(levels))
            seconds = time.monotonic() - self.clock
            self.elapsed += seconds
            self.fresh += 1
            # one storage write per evaluation (ask + set_user_attr + tell would make six)
            self.study.add_trial(
                optuna.trial.create_trial(
                    value=value,
                    user_attrs={
                        "generation": generation,
                        "child": child,
                        "levels": levels.tolist(),
                        "macs": self.space.macs(levels),
                        "seconds": seconds,
                    },
                )
            )
        self.clock = time.monotonic()
        if self.best is None or value < self.best[0]:  # strict: the earlier genome wins ties
            self.best = (value, levels.copy())
        if self.callback is not None:
            self.callback(value, self.best[0], trial is not None)
        return value

    def result(self) -> SearchResult:
        """The best genome this search visited (a study run further before does not change it)."""
        value, levels = self.best
        return SearchResult(
            levels=np.asarray(levels, dtype=np.int64),
            fitness=value,
            macs=self.space.macs(levels),
            evaluations=len(self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))),
            study=self.study,
            fresh=self.fresh,
            seconds=self.elapsed,
        )


def _check_minutes(minutes: float) -> float:
    if not minutes > 0:
        raise ValueError(f"minutes (wall-clock budget) must be > 0, got {minutes}")
    return minutes


def random_search(
    space: LevelSpace,
    fitness: Fitness,
    ratio: float,
    *,
    evaluations: int = 1000,
    seed: int = 0,
    storage: str | None = None,
    study_name: str | None = None,
    minutes: float | None = None,
    callback: Callback | None = None,
) -> SearchResult:
    """``evaluations`` random feasible genomes (uniform levels, repaired); the best one wins [P].
    ``minutes``: stop earlier when the evaluation time is up (at least one genome is evaluated)."""
    search = _Search("random", space, fitness, ratio, evaluations, seed, storage, study_name, {}, minutes, callback)
    i = 0
    while i == 0 or not search.finished:
        search.evaluate(0, i, search.random_genome(search.rng(i)))
        i += 1
    return search.result()


def genetic_search(
    space: LevelSpace,
    fitness: Fitness,
    ratio: float,
    *,
    evaluations: int = 1000,
    population: int = 50,
    elites: int = 10,
    parents: int = 25,
    mutation: float = 0.01,
    seed: int = 0,
    storage: str | None = None,
    study_name: str | None = None,
    initial: np.ndarray | None = None,
    minutes: float | None = None,
    callback: Callback | None = None,
) -> SearchResult:
    """The GA of docs/methods/search.md: a population of random feasible genomes; each generation keeps the
    elites and breeds the rest by uniform crossover of two parents drawn from the best ``parents``,
    per-gene mutation to a random level, repair. Stops after ``evaluations`` fitness evaluations
    (elites carried over are not re-evaluated) or after ``minutes`` of evaluation time, stored
    evaluations included (at least one evaluation). ``initial``: one seed genome (e.g. ToCa's schedule)."""
    if population < 2 or not 0 <= elites < population or not 2 <= parents <= population:
        raise ValueError(
            f"need population >= 2, 0 <= elites < population and 2 <= parents <= population; got "
            f"population={population}, elites={elites}, parents={parents}"
        )
    if not 0.0 <= mutation <= 1.0:
        raise ValueError(f"mutation must be a probability in [0, 1], got {mutation}")
    settings = {
        "population": population,
        "elites": elites,
        "parents": parents,
        "mutation": mutation,
        "initial": None if initial is None else np.asarray(initial).tolist(),
    }
    search = _Search("ga", space, fitness, ratio, evaluations, seed, storage, study_name, settings, minutes, callback)
    K = space.K
    rng = search.rng(0)
    members = [search.random_genome(rng) for _ in range(population)]
    if initial is not None:
        members[0] = repair(np.asarray(initial), search.weights, search.budget, search.window, rng)
    scored = []
    for child, genome in enumerate(members):
        if child and search.finished:
            break
        scored.append((search.evaluate(0, child, genome), genome))
    generation = 0
    while not search.finished:
        generation += 1
        rng = search.rng(generation)
        ranked = sorted(scored, key=lambda pair: pair[0])  # stable: earlier members win ties
        pool = ranked[:parents]
        scored = ranked[:elites]
        for child in range(population - elites):
            if search.finished:
                break
            a, b = rng.choice(len(pool), size=2, replace=False)
            genome = np.where(rng.random(space.n_cells) < 0.5, pool[a][1], pool[b][1])
            mutate = rng.random(space.n_cells) < mutation
            genome = np.where(mutate, rng.integers(0, K + 1, size=space.n_cells), genome)
            genome = repair(genome, search.weights, search.budget, search.window, rng)
            scored.append((search.evaluate(generation, child, genome), genome))
    return search.result()


def nsga2_search(
    space: LevelSpace,
    fitness: Fitness,
    ratio: float,
    *,
    evaluations: int = 2000,
    population: int = 20,
    seed: int = 0,
    storage: str | None = None,
    study_name: str | None = None,
    minutes: float | None = None,
) -> SearchResult:
    """NSGA-II over (fitness, M_lin) with optuna's NSGAIISampler (docs/methods/search.md template): genomes are
    not repaired, so the front spans budgets; the result is the best fitness with M_lin within
    the budget B_MAC at ``ratio`` (a ValueError if no evaluated genome is within it). ``minutes``:
    optuna's ``timeout``."""
    if evaluations < 1:
        raise ValueError(f"evaluations must be >= 1, got {evaluations}")
    timeout = None if minutes is None else 60 * _check_minutes(minutes)
    limit = space.fixed_macs + space.budget_macs(ratio)
    sampler = optuna.samplers.NSGAIISampler(population_size=population, seed=seed)
    study = optuna.create_study(
        storage=storage,
        study_name=study_name or f"diffsparse-nsga2-{seed}",
        directions=["minimize", "minimize"],
        sampler=sampler,
        load_if_exists=True,
    )
    complete = (optuna.trial.TrialState.COMPLETE,)

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        levels = np.array([trial.suggest_int(f"c{j}", 0, space.K) for j in range(space.n_cells)])
        trial.set_user_attr("levels", levels.tolist())
        return float(fitness(levels)), space.macs(levels)

    remaining = evaluations - len(study.get_trials(deepcopy=False, states=complete))
    if remaining > 0:
        study.optimize(objective, n_trials=remaining, timeout=timeout)
    feasible = [t for t in study.get_trials(deepcopy=False, states=complete) if t.values[1] <= limit]
    if not feasible:
        raise ValueError(
            f"nsga2: no evaluated genome is within the budget at ratio {ratio} "
            f"({limit:.4g} MACs); raise evaluations or the ratio"
        )
    best = min(feasible, key=lambda t: (t.values[0], t.number))
    levels = np.asarray(best.user_attrs["levels"], dtype=np.int64)
    return SearchResult(
        levels=levels,
        fitness=best.values[0],
        macs=best.values[1],
        evaluations=len(study.get_trials(deepcopy=False, states=complete)),
        study=study,
    )


def teacher_lpips_fitness(
    pipeline_call: Callable[[], np.ndarray], pipeline, space: LevelSpace, net: str = "alex"
) -> Fitness:
    """Fitness = mean LPIPS between the uncached pipeline's images and the images of the genome's
    schedule, run by the real ``diffsparse`` method (docs/methods/search.md option; cheaper than FID).

    ``pipeline_call()`` draws the fixed evaluation set (fixed conditions and seeds) with ``pipeline``
    and returns uint8 images N×3×H×W.
    """
    teacher = torch.as_tensor(pipeline_call())
    workdir = Path(tempfile.mkdtemp(prefix="dsbench-search-"))

    def fitness(levels: np.ndarray) -> float:
        path = export_schedule(workdir / "candidate.json", space, levels)
        with dsbench.attach(pipeline, methods.build("diffsparse", schedule=str(path))):
            student = torch.as_tensor(pipeline_call())
        return lpips_distance(student, teacher, net=net)

    return fitness


# ------------------------------------------------------------------------------------ the `ga` and `random` arms


class UnreachableBudget(ValueError):
    """The run's MAC budget is outside what the level space's cells can reach."""


# a search arm's config fields that only bound its length: a study searched further serves them all
LIMIT_FIELDS = ("evaluations", "minutes", "schedule")


def search_schedule(
    kind: str,
    config,
    bundle,
    *,
    steps: int,
    macs_ratio: float,
    draw: Callable[[list, int, methods.Method | None], torch.Tensor],
    build: Callable[[str], methods.Method],
    storage: str | None,
    study: str,
    folder: Path,
    callback: Callback | None = None,
) -> tuple[Path, SearchResult, LevelSpace]:
    """The schedule of the ``ga`` or ``random`` arm (``kind``) on ``bundle`` at ``macs_ratio`` of the full
    model's MACs, written to ``folder/schedule.json``; the runner calls it before any evaluation sampling.

    ``config``: the arm's validated config. Fitness: mean LPIPS (AlexNet) between the uncached model's images
    and the candidate's on ``config.fitness_n`` conditions drawn with ``config.fitness_seed``, their noise seeded
    by it too, so none is an image the leaderboard scores (the runner checks the seed is not one of the
    experiment's). ``draw(conditions, seed, method)``: uint8 images as the run samples them (its sampler, steps,
    guidance); ``build(path)``: the arm with a candidate schedule. The teacher images are drawn at the first new
    evaluation, so a finished study is reused without sampling.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one summary line per search, not one per study call
    space = bundle_space(bundle, config.level_interval, "weighted", steps=steps)
    ratio = 1.0 - macs_ratio
    try:
        space.budget(ratio)  # an unreachable budget fails here, before any sampling
    except ValueError as err:
        raise UnreachableBudget(f"macs_ratio {macs_ratio:g}: {err}") from None
    conditions = bundle.conditions(config.fitness_n, config.fitness_seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    teacher: list[torch.Tensor] = []

    def fitness(levels: np.ndarray) -> float:
        if not teacher:
            teacher.append(draw(conditions, config.fitness_seed, None))
        path = export_schedule(folder / "candidate.json", space, levels)
        student = draw(conditions, config.fitness_seed, build(str(path)))
        return lpips_distance(student, teacher[0])

    common = dict(
        evaluations=config.evaluations,
        seed=config.search_seed,
        storage=storage,
        study_name=study,
        minutes=config.minutes,
        callback=callback,
    )
    if kind == "ga":
        genes = dict(population=config.population, elites=config.elites, parents=config.parents)
        result = genetic_search(space, fitness, ratio, mutation=config.mutation, **genes, **common)
    elif kind == "random":
        result = random_search(space, fitness, ratio, **common)
    else:
        raise ValueError(f"search must be one of ga, random, got {kind!r}")
    (folder / "candidate.json").unlink(missing_ok=True)
    settings = {k: v for k, v in config.model_dump().items() if k != "schedule"}
    path = export_schedule(
        folder / "schedule.json",
        space,
        result.levels,
        config={"search": kind, "study": study, "fitness": "lpips", **settings},
        budget_ratio=ratio,
    )
    return path, result, space


# ------------------------------------------------------------------------------------------------ CLI

METHODS = ("ga", "random", "nsga2")
FITNESSES = ("lpips", "fid")


def bundle_space(bundle, interval: float = 0.25, mode: str = "weighted", steps: int | None = None) -> LevelSpace:
    """The trainer's level space for a zoo model (same text length and MAC weights; ``steps``: the sampler's
    steps, default the model's)."""
    with dsbench.attach(bundle.pipeline, methods.build("full")) as handle:
        bundle.sample(bundle.conditions(1, 0), 0)
        run, _ = handle.engine.latest()
    steps = steps or bundle.sampler.steps
    return level_space_of(bundle.pipeline, steps, interval, mode, text_tokens=max(run.n_text, 1))


def bundle_fitness(bundle, space: LevelSpace, kind: str, n: int, seed: int) -> Fitness:
    """Fitness on ``n`` fixed conditions and noise (``seed``): LPIPS (AlexNet) to the uncached model's
    images, or FID (the bundle's domain features) against ``n`` real reference images."""
    if kind not in FITNESSES:
        raise ValueError(f"fitness must be one of {', '.join(FITNESSES)}, got {kind!r}")
    conds = bundle.conditions(n, seed)
    if kind == "lpips":
        return teacher_lpips_fitness(lambda: bundle.sample(conds, seed), bundle.pipeline, space)

    if bundle.references is None:
        raise ValueError(f"fitness fid needs reference images; {bundle.name} has none here (use --fitness lpips)")
    references = bundle.references(n)
    workdir = Path(tempfile.mkdtemp(prefix="dsbench-search-"))

    def fitness(levels: np.ndarray) -> float:
        path = export_schedule(workdir / "candidate.json", space, levels)
        with dsbench.attach(bundle.pipeline, methods.build("diffsparse", schedule=str(path))):
            student = bundle.sample(conds, seed)
        return compute(student, references=references, bundle=bundle, metrics=("fid",))["fid"]

    return fitness


def check_search_args(
    method: str, ratio: float, minutes: float, fitness: str, fitness_n: int, evaluations: int | None, interval: float
) -> None:
    """Bad settings fail here, before a model is loaded."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if fitness not in FITNESSES:
        raise ValueError(f"fitness must be one of {', '.join(FITNESSES)}, got {fitness!r}")
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"ratio (fractional MAC reduction) must be in (0, 1), got {ratio}")
    _check_minutes(minutes)
    if fitness_n < (2 if fitness == "fid" else 1):
        raise ValueError(f"fitness_n must be >= {2 if fitness == 'fid' else 1} for fitness {fitness}, got {fitness_n}")
    if evaluations is not None and evaluations < 1:
        raise ValueError(f"evaluations must be >= 1, got {evaluations}")
    level_count(interval)


def run_search(
    bundle,
    method: str,
    ratio: float,
    minutes: float,
    out: str | Path,
    *,
    fitness: str = "lpips",
    fitness_n: int = 16,
    fitness_seed: int = 1,
    evaluations: int | None = None,
    seed: int = 0,
    storage: str | None = None,
    study: str | None = None,
    interval: float = 0.25,
    mode: str = "weighted",
    space: LevelSpace | None = None,
    log=print,
) -> SearchResult:
    """One equal-wall-time search baseline: writes ``out/schedule.json`` (+ ``search.json``). The clock
    starts before the fitness set's teacher images, as the trainer's starts before its own."""
    check_search_args(method, ratio, minutes, fitness, fitness_n, evaluations, interval)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    space = space or bundle_space(bundle, interval, mode)
    space.budget(ratio)  # an unreachable ratio fails here, before any sampling
    started = time.monotonic()
    fit = bundle_fitness(bundle, space, fitness, fitness_n, fitness_seed)
    left = max(minutes - (time.monotonic() - started) / 60, 1e-9)
    name = study or f"diffsparse-{method}-{bundle.name}-{seed}"
    common = dict(seed=seed, storage=storage, study_name=name, minutes=left)
    limit = evaluations or 10**9
    if method == "ga":
        result = genetic_search(space, fit, ratio, evaluations=limit, **common)
    elif method == "random":
        result = random_search(space, fit, ratio, evaluations=limit, **common)
    else:
        result = nsga2_search(space, fit, ratio, evaluations=limit, **common)
    seconds = time.monotonic() - started
    config = {
        "task": bundle.name,
        "search": method,
        "ratio": ratio,
        "minutes": minutes,
        "fitness": fitness,
        "fitness_n": fitness_n,
        "fitness_seed": fitness_seed,
        "seed": seed,
        "interval": interval,
        "mode": mode,
    }
    export_schedule(out / "schedule.json", space, result.levels, config=config, budget_ratio=ratio)
    (out / "search.json").write_text(
        json.dumps(
            {
                **config,
                "study": name,
                "storage": storage,
                "evaluations": result.evaluations,
                "best_fitness": result.fitness,
                "macs_ratio": result.macs / space.base_macs,
                "seconds": seconds,
            },
            indent=1,
        )
    )
    log(
        f"{method}: {result.evaluations} evaluations in {seconds:.0f} s, best {fitness} {result.fitness:.5f}, "
        f"macs_ratio {result.macs / space.base_macs:.4f}; wrote {os.path.relpath(out / 'schedule.json')}"
    )
    return result


def main(argv: list[str] | None = None) -> int:
    """``python -m dsbench.training.search``: one search baseline under a wall-time budget."""
    parser = argparse.ArgumentParser(prog="python -m dsbench.training.search", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model zoo name with a dit or pixart pipeline")
    parser.add_argument("--method", required=True, choices=METHODS, help="search: ga, random or nsga2")
    parser.add_argument("--ratio", type=float, required=True, help="budget R: fractional M_lin reduction in (0, 1)")
    parser.add_argument("--minutes", type=float, required=True, help="wall-clock budget (> 0)")
    parser.add_argument("--out", required=True, help="output folder: schedule.json, search.json, command.txt")
    parser.add_argument(
        "--fitness",
        default="lpips",
        choices=FITNESSES,
        help="lpips (AlexNet, to the uncached model) or fid (domain features, to real images)",
    )
    parser.add_argument("--fitness-n", type=int, default=16, help="conditions of the fitness set")
    parser.add_argument("--fitness-seed", type=int, default=1, help="seed of the fitness set (evaluation uses 0)")
    parser.add_argument("--evaluations", type=int, default=None, help="also stop after this many evaluations")
    parser.add_argument("--storage", default=None, help="optuna storage URL (e.g. sqlite:///DIR/search.db): resumable")
    parser.add_argument("--study", default=None, help="study name (default diffsparse-METHOD-MODEL-SEED)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--interval", type=float, default=0.25, help="level interval 1/K (0.25: |S| = 5)")
    parser.add_argument("--mode", default="weighted", choices=("weighted", "paper"), help="budget weights")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    check_search_args(
        args.method, args.ratio, args.minutes, args.fitness, args.fitness_n, args.evaluations, args.interval
    )
    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    bundle = zoo.load(args.model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "command.txt").write_text(
        "python -m dsbench.training.search " + shlex.join(sys.argv[1:] if argv is None else argv) + "\n"
    )
    run_search(
        bundle,
        args.method,
        args.ratio,
        args.minutes,
        out,
        fitness=args.fitness,
        fitness_n=args.fitness_n,
        fitness_seed=args.fitness_seed,
        evaluations=args.evaluations,
        seed=args.seed,
        storage=args.storage,
        study=args.study,
        interval=args.interval,
        mode=args.mode,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
