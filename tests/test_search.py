"""Search baselines over the DiffSparse level space (docs/methods/search.md): repair, GA, random, NSGA-II, resume."""

from __future__ import annotations

import json

import numpy as np
import optuna
import pytest
import torch
from conftest import dit_pipeline, run_dit

from dsbench.macs import level_space_of
from dsbench.training.search import genetic_search, nsga2_search, random_search, repair, teacher_lpips_fitness

optuna.logging.set_verbosity(optuna.logging.WARNING)
RATIO = 0.4


@pytest.fixture(scope="module")
def space():
    return level_space_of(dit_pipeline(), 4)  # 3 steps × 4 cell layers = 12 cells


def target_fitness(space):
    """A fitness with a known optimum: distance to a fixed feasible genome."""
    rng = np.random.default_rng(7)
    B = space.budget(RATIO)
    goal = repair(rng.integers(0, space.K + 1, space.n_cells), space.weights, B, space.window(B), rng)
    calls = []

    def fitness(levels):
        calls.append(levels.copy())
        return float(np.abs(levels - goal).sum())

    return fitness, goal, calls


def feasible(space, levels):
    B = space.budget(RATIO)
    total = space.weights[np.arange(space.n_cells), levels].sum()
    return B - space.window(B) <= total <= B


def test_repair_reaches_the_window(space):
    B = space.budget(RATIO)
    rng = np.random.default_rng(0)
    for start in (
        np.full(space.n_cells, space.K),
        np.zeros(space.n_cells, dtype=int),
        rng.integers(0, space.K + 1, space.n_cells),
    ):
        assert feasible(space, repair(start, space.weights, B, space.window(B), rng))


def test_ga_improves_on_random_and_counts_evaluations(space):
    fitness, goal, calls = target_fitness(space)
    ga = genetic_search(space, fitness, RATIO, evaluations=300, population=20, elites=4, parents=10, mutation=0.05)
    assert len(calls) == 300 and ga.evaluations == 300
    assert feasible(space, ga.levels) and ga.macs == pytest.approx(space.macs(ga.levels))
    fitness_r, _, calls_r = target_fitness(space)
    rand = random_search(space, fitness_r, RATIO, evaluations=300)
    assert len(calls_r) == 300 and feasible(space, rand.levels)
    assert all(feasible(space, c) for c in calls + calls_r)
    assert ga.fitness < rand.fitness


def test_ga_resumes_from_sqlite(space, tmp_path):
    storage = f"sqlite:///{tmp_path / 'search.db'}"
    fitness, _, _ = target_fitness(space)
    whole = genetic_search(space, fitness, RATIO, evaluations=50, population=10, elites=2, parents=5, seed=3)

    fitness, _, calls = target_fitness(space)
    genetic_search(
        space,
        fitness,
        RATIO,
        evaluations=25,
        population=10,
        elites=2,
        parents=5,
        seed=3,
        storage=storage,
        study_name="ga",
    )  # stops inside the third generation
    assert len(calls) == 25
    resumed = genetic_search(
        space,
        fitness,
        RATIO,
        evaluations=50,
        population=10,
        elites=2,
        parents=5,
        seed=3,
        storage=storage,
        study_name="ga",
    )
    assert len(calls) == 50  # only the 25 missing genomes were evaluated
    assert resumed.evaluations == 50 and resumed.fitness == whole.fitness
    assert np.array_equal(resumed.levels, whole.levels)
    with pytest.raises(ValueError, match="holds a different search"):
        genetic_search(space, fitness, RATIO, evaluations=50, population=30, storage=storage, study_name="ga")


def test_random_search_resumes(space, tmp_path):
    storage = f"sqlite:///{tmp_path / 'r.db'}"
    fitness, _, calls = target_fitness(space)
    random_search(space, fitness, RATIO, evaluations=10, storage=storage, study_name="r")
    result = random_search(space, fitness, RATIO, evaluations=25, storage=storage, study_name="r")
    assert len(calls) == 25 and result.evaluations == 25


def test_nsga2_reports_best_within_budget(space):
    fitness, goal, calls = target_fitness(space)
    result = nsga2_search(space, fitness, RATIO, evaluations=40, population=10)
    assert len(calls) == 40 and result.evaluations == 40
    assert result.macs <= space.fixed_macs + space.budget_macs(RATIO)
    limit = space.fixed_macs + space.budget_macs(RATIO)
    within = [float(np.abs(c - goal).sum()) for c in calls if space.macs(c) <= limit]
    assert within and result.fitness == min(within)
    assert {len(t.values) for t in result.study.trials} == {2}  # (fitness, M_lin)


def test_bad_settings_fail_before_work(space):
    with pytest.raises(ValueError, match="elites < population"):
        genetic_search(space, lambda x: 0.0, RATIO, population=10, elites=10)
    with pytest.raises(ValueError, match="mutation must be"):
        genetic_search(space, lambda x: 0.0, RATIO, mutation=2.0)
    with pytest.raises(ValueError, match="R = 0.999 is outside"):
        random_search(space, lambda x: 0.0, 0.999)


def test_teacher_lpips_fitness_runs_the_real_method(space):
    pipe = dit_pipeline()

    def draw():  # the tiny pipeline's 8×8 images, enlarged to a size AlexNet-LPIPS accepts
        images = torch.from_numpy((run_dit(pipe, steps=4) * 255).round().astype(np.uint8)).permute(0, 3, 1, 2)
        return torch.nn.functional.interpolate(images.float(), size=64, mode="nearest").to(torch.uint8)

    fitness = teacher_lpips_fitness(draw, pipe, space)
    assert fitness(np.full(space.n_cells, space.K)) == pytest.approx(0.0, abs=1e-6)  # all FULL = the teacher
    assert fitness(np.zeros(space.n_cells, dtype=int)) > 0.0


def test_search_cli_writes_a_schedule_and_resumes(tmp_path):
    from dsbench.methods.diffsparse.schedule import load_schedule
    from dsbench.training.search import main

    out, storage = tmp_path / "ga", f"sqlite:///{tmp_path / 'ga.db'}"
    args = [
        "--model",
        "mnist-dit",
        "--method",
        "ga",
        "--ratio",
        "0.5",
        "--minutes",
        "5",
        "--fitness-n",
        "2",
        "--out",
        str(out),
        "--storage",
        storage,
        "--study",
        "ga",
    ]
    main(args + ["--evaluations", "2"])
    first = json.loads((out / "search.json").read_text())
    assert first["evaluations"] == 2 and first["macs_ratio"] == pytest.approx(0.5, abs=0.01)
    schedule = load_schedule(out / "schedule.json")
    assert schedule.meta["budget_ratio"] == 0.5 and schedule.meta["config"]["search"] == "ga"
    main(args + ["--evaluations", "3"])  # resumed: two stored, one new
    assert json.loads((out / "search.json").read_text())["evaluations"] == 3
    assert (out / "command.txt").read_text().startswith("python -m dsbench.training.search --model mnist-dit")


def test_search_cli_bad_settings_fail_before_loading():
    from dsbench.training.search import main

    base = ["--model", "mnist-dit", "--method", "random", "--out", "x"]
    with pytest.raises(ValueError, match="minutes .* must be > 0"):
        main(base + ["--ratio", "0.5", "--minutes", "0"])
    with pytest.raises(ValueError, match=r"ratio .* must be in \(0, 1\)"):
        main(base + ["--ratio", "1.5", "--minutes", "1"])
    with pytest.raises(ValueError, match="fitness_n must be >= 2 for fitness fid"):
        main(base + ["--ratio", "0.5", "--minutes", "1", "--fitness", "fid", "--fitness-n", "1"])
