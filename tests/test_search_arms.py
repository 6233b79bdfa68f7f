"""The ``ga`` and ``random`` arms (docs/methods/search.md): searched by the runner under the run's budget in the
store's Optuna storage, reused when finished, resumed when extended, evaluated like any method."""

import os
from pathlib import Path

import numpy as np
import optuna
import pytest
from conftest import run_quietly

from dsbench import experiment, methods
from dsbench.cli import main as cli_main
from dsbench.methods.diffsparse.schedule import load_schedule
from dsbench.store import Store
from dsbench.training.search import random_search

os.environ.setdefault("WANDB_MODE", "offline")
BASE = {
    "models": ["mnist-dit"],
    "steps": 6,
    "eval": {"size": 2},
    "metrics": ["lpips"],
    "latency": {"repeats": 1, "warmup": 0},
    "budget": {"macs_ratio": 0.5},
}
TINY = {"evaluations": 3, "fitness_n": 2}
SCHEDULE = Path(__file__).resolve().parents[1] / "results" / "diffsparse" / "mnist-dit" / "schedule.json"


def _exp(name, entries, **extra):
    return experiment.parse({"name": name, **BASE, "methods": entries, **extra}, f"{name}.yaml")


def _trials(store_path, study):
    storage = f"sqlite:///{store_path.with_name(store_path.stem + '-optuna.db')}"
    loaded = optuna.load_study(study_name=study, storage=storage)
    return loaded.get_trials(states=(optuna.trial.TrialState.COMPLETE,))


def _study(row):
    return load_schedule(row["tuned"]["schedule"]).meta["config"]["study"]


def test_arms_search_under_the_budget_reuse_and_resume(tmp_path, teachers):
    path = tmp_path / "r.db"
    store = Store(path)
    exp = _exp("arms", [{"name": "ga", "params": TINY}, {"name": "random", "params": TINY}])
    out = run_quietly(exp, store, tmp_path, teachers)
    rows = {row["method"]: row for row in out.stored}
    assert sorted(rows) == ["ga", "random"] and len(store) == 2
    studies = {}
    for name, row in rows.items():
        assert 0.45 < row["macs_ratio"] <= 0.5 and row["budget_note"] is None  # at, not above, the budget
        assert row["label"] == f"{name}_evaluations3_fitness_n2" and 0 < row["lpips_alex"] < 1
        schedule = load_schedule(row["tuned"]["schedule"])
        assert schedule.meta["config"]["search"] == name and schedule.meta["budget_ratio"] == pytest.approx(0.5)
        studies[name] = _study(row)
        trials = _trials(path, studies[name])
        assert len(trials) == 3  # the search's fitness evaluations, one trial each
    ga_levels = load_schedule(rows["ga"]["tuned"]["schedule"]).levels.copy()

    # a finished search is reused: the rows are recomputed (force), the studies gain no trial
    again = run_quietly(exp, store, tmp_path, teachers, force=True)
    assert len(again.stored) == 2
    assert {row["method"]: _study(row) for row in again.stored} == studies
    assert all(len(_trials(path, study)) == 3 for study in studies.values())

    # a longer limit resumes the same study: its 3 trials stay, 2 are added
    longer = {**TINY, "evaluations": 5}
    out = run_quietly(_exp("longer", [{"name": "ga", "params": longer}]), store, tmp_path, teachers)
    assert _study(out.stored[0]) == studies["ga"]
    trials = _trials(path, studies["ga"])
    places = [(t.user_attrs["generation"], t.user_attrs["child"]) for t in trials]
    assert places == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0)]  # population 4: then the first child of generation 1

    # the same search seed in another store finds the same schedule; another seed is another study
    fresh = Store(tmp_path / "other.db")
    out = run_quietly(_exp("arms", [{"name": "ga", "params": TINY}]), fresh, tmp_path / "o", teachers)
    assert np.array_equal(load_schedule(out.stored[0]["tuned"]["schedule"]).levels, ga_levels)
    other = run_quietly(
        _exp("seed", [{"name": "ga", "params": {**TINY, "search_seed": 1}}]), fresh, tmp_path / "o", teachers
    )
    assert _study(other.stored[0]) != studies["ga"]


@pytest.mark.parametrize(
    "entry, extra, expected",
    [
        ({"name": "ga"}, {"budget": None}, ["methods[0]", "budget: {macs_ratio: R}"]),
        ({"name": "random", "params": {"fitness_seed": 0}}, {}, ["methods[0].params.fitness_seed", "eval.seed: 0"]),
        ({"name": "ga", "params": {"fitness_seed": 7}}, {"seeds": [7]}, ["fitness_seed", "seeds and eval.seed: 0, 7"]),
        ({"name": "ga", "params": {"schedule": str(SCHEDULE)}}, {"steps": 20}, ["methods[0].params.schedule", "leave"]),
    ],
)
def test_bad_search_settings_fail_before_any_work(tmp_path, teachers, entry, extra, expected):
    store = Store(tmp_path / "r.db")
    with pytest.raises(ValueError) as err:
        run_quietly(_exp("bad", [entry], **extra), store, tmp_path, teachers)
    message = str(err.value)
    assert "\n" not in message and all(part in message for part in expected), message
    assert len(store) == 0 and not (tmp_path / "r-optuna.db").exists()


def test_bad_fields_name_the_field_and_the_allowed_values(capsys):
    with pytest.raises(ValueError, match=r"ga: parameter 'elites' = 4 is invalid: .*\[0, population\) = \[0, 4\)"):
        methods.build("ga", elites=4)
    with pytest.raises(ValueError, match=r"random: unknown parameter 'population'; allowed parameters: .*evaluations"):
        methods.build("random", population=4)
    with pytest.raises(ValueError, match=r"parameter 'level_interval' = 0.3 .*divide 1"):
        methods.build("random", level_interval=0.3)
    with pytest.raises(ValueError, match="runs the schedule its search finds"):
        methods.build("ga").reset(None)
    assert cli_main(["methods", "ga"]) == 0
    listed = capsys.readouterr().out
    assert "applies to: dit, pixart models · budget field: none (searches a schedule under the budget)" in listed
    for field in ("evaluations", "minutes", "fitness_seed", "search_seed", "population", "mutation"):
        assert f"    {field} (" in listed, field


def test_a_time_limited_search_resumes_on_its_own_clock(tmp_path):
    """The time limit counts the stored evaluations' seconds: rerun, a finished search adds nothing."""
    from conftest import dit_pipeline

    from dsbench.macs import level_space_of

    space = level_space_of(dit_pipeline(), 4)
    calls = []

    def slow(levels):
        calls.append(1)
        sum(range(200_000))  # some work, so the evaluations take time
        return float(levels.sum())

    storage = f"sqlite:///{tmp_path / 's.db'}"
    first = random_search(space, slow, 0.4, evaluations=10**6, minutes=0.002, storage=storage, study_name="t")
    assert first.fresh == len(calls) >= 1 and first.seconds >= 0.12
    again = random_search(space, slow, 0.4, evaluations=10**6, minutes=0.002, storage=storage, study_name="t")
    assert again.fresh == 0 and len(calls) == first.fresh and np.array_equal(again.levels, first.levels)


def test_a_budget_list_searches_each_budget_and_skips_the_unreachable(tmp_path, teachers):
    exp = _exp(
        "curve", [{"name": "random", "params": {"evaluations": 1, "fitness_n": 1}}], budget={"macs_ratio": [0.02, 0.6]}
    )
    out = run_quietly(exp, Store(tmp_path / "r.db"), tmp_path, teachers)
    assert [(r["method"], r["budget_macs_ratio"]) for r in out.stored] == [("random", 0.6)]
    assert out.stored[0]["macs_ratio"] <= 0.6
    assert len(out.skipped) == 1 and "budget 0.02" in out.skipped[0][2] and "outside what the" in out.skipped[0][2]
    single = _exp("point", [{"name": "random"}], budget={"macs_ratio": 0.02})  # one budget: the user's, an error
    with pytest.raises(ValueError, match="random on mnist-dit: macs_ratio 0.02: R = 0.98 is outside"):
        run_quietly(single, Store(tmp_path / "p.db"), tmp_path, teachers)
