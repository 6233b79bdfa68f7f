"""Sweeps on the embedded mnist-dit (4 steps, 2 samples): validation (and fuzzed sweep files), a grid killed
with SIGKILL and resumed, two Optuna workers on one SQLite study, stale trials of a dead worker, a worker
killed with SIGKILL (reported in one line; the study completes or the same command resumes it), and stores
or study storages that cannot work failing in one line before any sampling."""

import copy
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from dsbench import sweep
from dsbench.cli import main as cli_main
from dsbench.store import Store

ROOT = Path(__file__).resolve().parent.parent
BASE = {
    "models": ["mnist-dit"],
    "steps": 4,
    "eval": {"size": 2},
    "metrics": ["psnr", "ssim"],
    "latency": {"repeats": 1, "warmup": 0},
    "methods": [{"name": "toca"}],
}
# identical in an interrupted and an uninterrupted sweep (latency, speedup and memory are timings)
DETERMINISTIC = ("point", "methods.toca.ratio", "model", "label", "macs_ratio", "psnr", "ssim")


@pytest.fixture(autouse=True)
def _setup(tmp_path_factory, monkeypatch):
    torch.set_num_threads(1)
    monkeypatch.setenv("DSBENCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))  # teachers, shared
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def _columns(table, names=DETERMINISTIC) -> list[tuple]:
    """The named columns; floats to 12 significant digits (a conv summed in another thread order may differ
    in the last bit between processes)."""
    return [
        tuple(float(f"{record[n]:.12g}") if isinstance(record[n], float) else record[n] for n in names)
        for record in table.records()
    ]


# -- validation ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "data, expected",
    [
        ({"experiment": BASE}, ["bad.yaml", "exactly one of `grid` and `optuna`"]),
        (
            {"experiment": BASE, "grid": {"methods.toca.ratio": [0.3]}, "gird": 1},
            ["bad.yaml", "unknown field 'gird'", "allowed fields: name, experiment, grid, optuna"],
        ),
        (
            {"experiment": BASE, "grid": {"methods.toca.ratio": []}},
            ["bad.yaml", "grid.methods.toca.ratio", "at least one"],
        ),
        ({"experiment": BASE, "grid": {}}, ["bad.yaml", "`grid` needs at least one field path"]),
        ({"experiment": BASE, "grid": {"stepz": [2]}}, ["bad.yaml", "'stepz'", "allowed:", "steps"]),
        (
            {"experiment": BASE, "grid": {"methods.toka.ratio": [0.3]}},
            ["bad.yaml", "no method entry 'toka'", "allowed: toca"],
        ),
        (
            {"experiment": BASE, "grid": {"methods.toca.ratio": [0.3, 2.0]}},
            ["bad.yaml", "point methods.toca.ratio=2.0", "methods[0].params", "ratio"],
        ),
        (
            {"experiment": BASE, "grid": {"steps": [0]}},
            ["bad.yaml", "point steps=0", "'steps'", "greater than or equal to 1"],
        ),
        ({"experiment": "missing.yaml", "grid": {"steps": [2]}}, ["bad.yaml", "field 'experiment'", "missing.yaml"]),
        (
            {"experiment": {**BASE, "metrics": ["fd"]}, "grid": {"steps": [2]}},
            ["bad.yaml", "metrics[0]", "allowed:", "fid"],
        ),
        (
            {
                "experiment": BASE,
                "optuna": {
                    "space": {"methods.toca.ratio": {"type": "uniform", "low": 0, "high": 1}},
                    "objectives": [{"metric": "psnr", "direction": "maximize"}],
                    "n_trials": 2,
                },
            },
            ["bad.yaml", "optuna.space.methods.toca.ratio", "float, int, categorical", "'uniform'"],
        ),
        (
            {
                "experiment": BASE,
                "optuna": {
                    "space": {"methods.toca.ratio": {"type": "float", "low": 0.1, "high": 0.9}},
                    "objectives": [{"metric": "psnr", "direction": "up"}],
                    "n_trials": 2,
                },
            },
            ["bad.yaml", "optuna.objectives[0].direction", "'minimize' or 'maximize'"],
        ),
        (
            {
                "experiment": BASE,
                "optuna": {
                    "space": {"methods.toca.ratio": {"type": "float", "low": 0.1, "high": 0.9}},
                    "objectives": [{"metric": "psnr", "direction": "maximize"}],
                    "n_trials": 2,
                    "sampler": "cmaes",
                },
            },
            ["bad.yaml", "optuna.sampler", "'tpe', 'random' or 'nsga2'"],
        ),
        (
            {
                "experiment": BASE,
                "optuna": {
                    "space": {"methods.toca.ratio": {"type": "float", "low": 0.1, "high": 1.5}},
                    "objectives": [{"metric": "psnr", "direction": "maximize"}],
                    "n_trials": 2,
                },
            },
            ["bad.yaml", "point methods.toca.ratio=1.5", "methods[0].params"],
        ),
        (
            {
                "experiment": BASE,
                "optuna": {
                    "space": {"steps": {"type": "int", "low": 5, "high": 2}},
                    "objectives": [{"metric": "psnr", "direction": "maximize"}],
                    "n_trials": 2,
                },
            },
            ["bad.yaml", "optuna.space.steps: low 5 is above high 2"],
        ),
    ],
)
def test_validation_errors_name_file_field_and_allowed_values(tmp_path, data, expected):
    with pytest.raises(ValueError) as err:
        sweep.load(_write(tmp_path / "bad.yaml", data))
    for part in expected:
        assert part in str(err.value), (part, str(err.value))


def test_cli_reports_invalid_sweep_before_any_work(tmp_path, capsys):
    path = _write(tmp_path / "bad.yaml", {"experiment": BASE, "grid": {"methods.toca.ratoi": [0.3]}})
    assert cli_main(["sweep", str(path), "--store", str(tmp_path / "r.db")]) == 2
    assert "bad.yaml" in capsys.readouterr().err
    assert not (tmp_path / "r.db").exists()


def test_example_sweeps_validate():
    grid = sweep.load(ROOT / "experiments" / "sweep_toca_ratio.yaml")
    assert grid.fields == ["methods.toca.ratio"] and len(grid.points()) == 4
    assert grid.experiment_for(grid.points()[0]).models == ["mnist-dit", "shapes-pixart"]
    study = sweep.load(ROOT / "experiments" / "sweep_optuna_pareto.yaml")
    assert [o.metric for o in study.sweep.optuna.objectives] == ["lpips_alex", "macs_ratio"]
    assert study.sweep.optuna.sampler == "nsga2"


def test_field_paths_reach_method_params_overrides_and_list_fields(tmp_path):
    base = {**BASE, "methods": [{"name": "full"}, {"name": "toca", "params": {"interval": 2}}]}
    spec = sweep.load(
        _write(
            tmp_path / "s.yaml",
            {
                "experiment": base,
                "grid": {
                    "methods.toca.ratio": [0.3],
                    "methods.toca.models.mnist-dit.bonus": [0.5],
                    "seeds": [1],
                    "eval.size": [3],
                },
            },
        )
    )
    baseline, point = spec.points()  # full (no axis of its own) once, toca once per point of its axes
    assert baseline == {"seeds": 1, "eval.size": 3}
    exp = spec.experiment_for(point)
    assert exp.name == "s" and exp.seeds == [1] and exp.eval.size == 3
    assert [m.name for m in exp.methods] == ["toca"]
    assert exp.methods[0].params_for("mnist-dit") == {"interval": 2, "ratio": 0.3, "bonus": 0.5}
    full = spec.experiment_for(baseline)
    assert [m.name for m in full.methods] == ["full"] and full.methods[0].params == {} and full.seeds == [1]


# -- grid semantics: each method its own grid; numbered points; reused points --------------------------------------
TWO_METHODS = {**BASE, "methods": [{"name": "full"}, {"name": "toca"}, {"name": "fora"}]}


def test_axes_of_two_methods_vary_independently(tmp_path):
    grid = {"methods.toca.ratio": [0.2, 0.4, 0.6], "methods.fora.interval": [2, 3], "seeds": [0, 1]}
    spec = sweep.load(_write(tmp_path / "two.yaml", {"experiment": TWO_METHODS, "grid": grid}))
    points = spec.points()
    # full: once per seed; toca: its 3 ratios x 2 seeds; fora: its 2 intervals x 2 seeds (not 3 x 2 x 2 of each)
    assert len(points) == 2 + 6 + 4
    runs: dict[str, list] = {}
    for point in points:
        exp = spec.experiment_for(point)
        assert len(exp.methods) == 1 and exp.seeds == [point["seeds"]]
        (entry,) = exp.methods
        assert set(point) - {"seeds"} == {p for p in grid if p.startswith(f"methods.{entry.name}.")}
        runs.setdefault(entry.name, []).append((entry.params, exp.seeds))
        if entry.name == "toca":  # toca never runs once per value of fora's interval (nor fora per ratio)
            assert entry.params == {"ratio": point["methods.toca.ratio"]}
        elif entry.name == "fora":
            assert entry.params == {"interval": point["methods.fora.interval"]}
    assert {k: len(v) for k, v in runs.items()} == {"full": 2, "toca": 6, "fora": 4}
    ids = [rid for point in points for _, rid in sweep.run_ids(spec.experiment_for(point))]
    assert len(ids) == len(set(ids)) == 12  # no run twice

    # without method axes every point runs every method; by position and by name reach the same entry
    plain = sweep.load(_write(tmp_path / "plain.yaml", {"experiment": TWO_METHODS, "grid": {"seeds": [0, 1]}}))
    assert [[m.name for m in plain.experiment_for(p).methods] for p in plain.points()] == [["full", "toca", "fora"]] * 2
    mixed = {"methods.1.ratio": [0.2, 0.4], "methods.toca.interval": [2]}
    spec = sweep.load(_write(tmp_path / "mixed.yaml", {"experiment": TWO_METHODS, "grid": mixed}))
    assert [[m.name for m in spec.experiment_for(p).methods] for p in spec.points()] == [["full", "fora"]] + [
        ["toca"]
    ] * 2


def test_grid_points_are_numbered_and_a_stored_point_is_reused(tmp_path, caplog):
    grid = {"methods.toca.ratio": [0.3, 0.6], "methods.fora.interval": [2]}
    base = {**BASE, "methods": [{"name": "toca"}, {"name": "fora"}]}
    spec = sweep.load(_write(tmp_path / "g.yaml", {"experiment": base, "grid": grid}))
    store = tmp_path / "r.db"
    with caplog.at_level("INFO", logger="dsbench.sweep"):
        sweep.run(spec, store, wandb=False, progress=False)
    said = [r.getMessage() for r in caplog.records if r.name == "dsbench.sweep"]
    assert said == [
        "point 1/3: methods.toca.ratio=0.3",
        "point 2/3: methods.toca.ratio=0.6",
        "point 3/3: methods.fora.interval=2",
    ]
    with sqlite3.connect(store) as conn:
        assert _count(conn) == 3  # one run per point: no duplicates across the two methods' axes
    table = sweep.table(spec, store)
    records = table.records()
    assert [r["point"] for r in records] == ["1/3", "2/3", "3/3"]
    assert [r["label"].split("_")[0] for r in records] == ["toca", "toca", "fora"]
    assert [r["methods.toca.ratio"] for r in records] == [0.3, 0.6, None]
    assert [r["methods.fora.interval"] for r in records] == [None, None, 2]

    caplog.clear()
    with caplog.at_level("INFO", logger="dsbench.sweep"):
        sweep.run(spec, store, wandb=False, progress=False)
    said = [r.getMessage() for r in caplog.records if r.name == "dsbench.sweep"]
    assert said == [
        "point 1/3: methods.toca.ratio=0.3: reused (its 1 run(s) are already stored)",
        "point 2/3: methods.toca.ratio=0.6: reused (its 1 run(s) are already stored)",
        "point 3/3: methods.fora.interval=2: reused (its 1 run(s) are already stored)",
        "sweep g: 3 point(s) reused from the store",
    ]


def test_study_parameters_are_rounded():
    study = sweep.Study(
        space={
            "a": {"type": "float", "low": 0.1, "high": 0.9},
            "b": {"type": "float", "low": 0.1, "high": 0.9, "step": 0.1},
            "c": {"type": "int", "low": 1, "high": 6},
            "d": {"type": "categorical", "choices": [0.123456789, "x"]},
            "e": {"type": "float", "low": 0.1234, "high": 0.5},
        },
        objectives=[{"metric": "psnr", "direction": "maximize"}],
        n_trials=1,
    )
    got = sweep.rounded(
        study, {"a": 0.43719283746151, "b": 0.30000000000000004, "c": 3, "d": 0.123456789, "e": 0.12341}
    )
    assert got == {"a": 0.437, "b": 0.3, "c": 3, "d": 0.123456789, "e": 0.1234}
    assert sweep.point_label(got) == "a=0.437, b=0.3, c=3, d=0.1235, e=0.1234"


def test_pareto_mask():
    values = [[0.1, 0.9], [0.2, 0.5], [0.3, 0.6], [0.1, 0.9], [0.5, 0.1]]
    assert sweep.pareto_mask(values, ["minimize", "minimize"]) == [True, True, False, True, True]
    assert sweep.pareto_mask(values, ["maximize", "minimize"]) == [False, False, False, False, True]


# -- grid: SIGKILL mid-sweep, rerun, same table as an uninterrupted sweep ------------------------------------------
def test_grid_killed_with_sigkill_resumes_to_the_uninterrupted_table(tmp_path):
    path = _write(tmp_path / "grid.yaml", {"experiment": BASE, "grid": {"methods.toca.ratio": [0.2, 0.4, 0.6, 0.8]}})
    spec = sweep.load(path)

    whole = tmp_path / "whole" / "r.db"
    sweep.run(spec, whole, wandb=False, progress=False)
    expected = sweep.table(spec, whole)
    assert [row[:2] for row in expected.rows] == [["1/4", 0.2], ["2/4", 0.4], ["3/4", 0.6], ["4/4", 0.8]]
    assert "methods.toca.ratio" in [c.header for c in expected.columns]

    killed = tmp_path / "killed" / "r.db"
    cmd = [sys.executable, "-m", "dsbench.cli", "sweep", str(path), "--store", str(killed), "--no-wandb"]
    env = dict(os.environ)  # the same dsbench as this process (the installed package, or PYTHONPATH)
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        rows = 0
        while rows == 0 and proc.poll() is None:
            time.sleep(0.05)
            if killed.exists():
                try:
                    with sqlite3.connect(killed, timeout=60) as conn:
                        rows = _count(conn)
                except sqlite3.OperationalError:  # the table is created a moment after the file
                    pass
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the sweep ended before it could be killed"
    with sqlite3.connect(killed) as conn:
        at_kill = dict(conn.execute("SELECT run_id, created_at FROM runs").fetchall())
    assert 1 <= len(at_kill) < 4, at_kill

    assert cli_main(["sweep", str(path), "--store", str(killed), "--no-wandb"]) == 0  # the same command again
    with sqlite3.connect(killed) as conn:
        after = dict(conn.execute("SELECT run_id, created_at FROM runs").fetchall())
    assert len(after) == 4 and all(after[rid] == created for rid, created in at_kill.items())  # skipped, not rerun
    assert _columns(sweep.table(spec, killed)) == _columns(expected)

    assert cli_main(["table", "--sweep", str(path), "--store", str(killed), "--format", "csv"]) == 0


def _count(conn) -> int:
    return conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0]


# -- Optuna: two workers on one SQLite study, then a dead worker's trial -----------------------------------------------
def test_two_workers_complete_n_trials_and_a_dead_workers_trial_is_asked_again(tmp_path):
    study_file = {
        "experiment": BASE,
        "optuna": {
            "space": {"methods.toca.ratio": {"type": "categorical", "choices": [0.2, 0.4, 0.6, 0.8]}},
            "objectives": [
                {"metric": "psnr", "direction": "maximize"},
                {"metric": "macs_ratio", "direction": "minimize"},
            ],
            "n_trials": 5,
            "sampler": "random",
        },
    }
    path = _write(tmp_path / "study.yaml", study_file)
    spec = sweep.load(path)
    store = tmp_path / "r.db"
    sweep.run(spec, store, workers=2, wandb=False, progress=False)

    url = f"sqlite:///{tmp_path / 'r-optuna.db'}"
    study = optuna.load_study(study_name="study", storage=url)
    trials = study.get_trials()
    assert sorted(t.number for t in trials) == [0, 1, 2, 3, 4]  # none lost, none duplicated, none extra
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert len({t.user_attrs["worker"]["pid"] for t in trials}) == 2  # both workers took trials
    ratios = {t.params["methods.toca.ratio"] for t in trials}
    with sqlite3.connect(store) as conn:
        assert _count(conn) == len(ratios)  # trials with the same parameters share one run row
    table = sweep.table(spec, store)
    assert [row[0] for row in table.rows] == ["1/5", "2/5", "3/5", "4/5", "5/5"]
    pareto = [row[-1] == "yes" for row in table.rows]
    values = [[t.values[0], t.values[1]] for t in sorted(trials, key=lambda t: t.number)]
    assert pareto == sweep.pareto_mask(values, ["maximize", "minimize"]) and any(pareto)
    stored = {r["methods.toca.ratio"]: r["psnr"] for r in table.records()}  # the trial's objective value
    assert all(stored[t.params["methods.toca.ratio"]] == t.values[0] for t in trials)
    assert all(r["psnr_ci_low"] < r["psnr"] < r["psnr_ci_high"] for r in table.records())  # every run's interval

    # a worker killed mid-trial leaves a RUNNING trial behind (its process is gone)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = study.ask({"methods.toca.ratio": optuna.distributions.CategoricalDistribution([0.2, 0.4, 0.6, 0.8])})
    orphan.set_user_attr("worker", {"host": socket.gethostname(), "pid": dead.pid, "started": time.time()})
    study_file["optuna"]["n_trials"] = 6
    sweep.run(sweep.load(_write(path, study_file)), store, wandb=False, progress=False)
    trials = {t.number: t for t in study.get_trials()}
    assert trials[orphan.number].state == optuna.trial.TrialState.FAIL and trials[orphan.number].user_attrs["stale"]
    complete = [t for t in trials.values() if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 6 and len(trials) == 7
    assert trials[6].params == orphan.params  # the dead worker's parameters, asked again


def test_stale_trial_rules():
    def running(**attrs):
        return optuna.trial.create_trial(state=optuna.trial.TrialState.RUNNING, user_attrs=attrs)

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    now = time.time()
    here, there = socket.gethostname(), "another-host"
    assert sweep.is_stale(running(), now)  # died before naming its worker
    assert sweep.is_stale(running(worker={"host": here, "pid": dead.pid, "started": now}), now)
    assert not sweep.is_stale(running(worker={"host": here, "pid": os.getpid(), "started": now - 1e6}), now)
    old = now - sweep.STALE_AFTER - 1
    assert sweep.is_stale(running(worker={"host": there, "pid": 1, "started": old}), now)
    assert not sweep.is_stale(running(worker={"host": there, "pid": 1, "started": old}, heartbeat=now - 5), now)


# -- user errors: one line, exit 2, before any work --------------------------------------------------------------
STUDY = {
    "experiment": BASE,
    "optuna": {
        "space": {"methods.toca.ratio": {"type": "categorical", "choices": [0.2, 0.4, 0.6, 0.8]}},
        "objectives": [{"metric": "psnr", "direction": "maximize"}],
        "n_trials": 3,
        "sampler": "random",
    },
}


def _one_line_error(capsys, argv: list[str], *expected: str) -> str:
    """The CLI exits 2 with one line on stderr that holds every ``expected`` part (and no traceback)."""
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("dsbench sweep: error: ") and "Traceback" not in err, err
    for part in expected:
        assert part in err, (part, err)
    return err


def _garbage(path: Path) -> Path:
    path.write_bytes(b"this is not a SQLite database, just bytes " * 50)
    return path


@pytest.mark.parametrize(
    "case",
    [
        "store under a file",
        "storage under a file",
        "not a url",
        "in-memory storage",
        "unwritable storage",
        "corrupt storage",
        "corrupt lock",
        "in-memory store",
    ],
)
def test_store_and_storage_that_cannot_work_fail_in_one_line(tmp_path, capsys, case):
    path = _write(tmp_path / "study.yaml", STUDY)
    (tmp_path / "afile").write_text("x")
    store, storage = str(tmp_path / "r.db"), None
    if case == "store under a file":
        store, expected = str(tmp_path / "afile" / "sub" / "r.db"), ["--store", "afile is a file, not a folder"]
    elif case == "storage under a file":
        storage, expected = f"sqlite:///{tmp_path}/afile/o.db", ["afile is a file, not a folder"]
    elif case == "not a url":
        storage, expected = "results.db", ["'results.db': not a database URL", "sqlite:///"]
    elif case == "in-memory storage":
        storage, expected = "sqlite://", ["in memory", "the study would be lost"]
    elif case == "unwritable storage":  # /proc/self exists and nobody, root included, may create files in it
        storage, expected = "sqlite:////proc/self/o.db", ["/proc/self/o.db", "unable to open database file"]
    elif case == "corrupt storage":
        _garbage(tmp_path / "r-optuna.db")
        expected = ["r-optuna.db", "file is not a database", "move a damaged file aside"]
    elif case == "corrupt lock":
        _garbage(tmp_path / "r-optuna.db.lock")
        expected = ["r-optuna.db", "file is not a database"]
    else:
        store, expected = ":memory:", ["--store :memory: would lose every run"]
    argv = ["sweep", str(path), "--store", store, "--no-wandb"] + (["--storage", storage] if storage else [])
    _one_line_error(capsys, argv, *expected)
    assert not (tmp_path / "artifacts").exists()  # nothing ran


def test_table_of_a_study_in_a_corrupt_storage_fails_in_one_line(tmp_path, capsys):
    path = _write(tmp_path / "study.yaml", STUDY)
    storage = f"sqlite:///{_garbage(tmp_path / 'o.db')}"
    Store(tmp_path / "r.db").close()  # the results store exists; the study storage is damaged
    assert cli_main(["table", "--sweep", str(path), "--store", str(tmp_path / "r.db"), "--storage", storage]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "o.db" in err and "file is not a database" in err, err


def test_invalid_base_experiment_file_fails_in_one_line(tmp_path, capsys):
    (tmp_path / "base.yaml").write_text("models: [mnist-dit\nmethods: [")
    path = _write(tmp_path / "s.yaml", {"experiment": "base.yaml", "grid": {"steps": [2]}})
    _one_line_error(capsys, ["sweep", str(path), "--store", str(tmp_path / "r.db")], "base.yaml", "not valid YAML")
    _write(tmp_path / "base.yaml", {**BASE, "models": ["mnist-dt"], "stepz": 3})
    _one_line_error(
        capsys,
        ["sweep", str(path), "--store", str(tmp_path / "r.db")],
        "base.yaml (the base experiment of",
        "s.yaml",
        "'stepz'",
        "; ",
    )  # two problems, one line
    (tmp_path / "base.yaml").write_bytes(b"\xff\xfe\x00binary")
    _one_line_error(capsys, ["sweep", str(path), "--store", str(tmp_path / "r.db")], "base.yaml", "not UTF-8")


def test_search_space_optuna_would_reject_or_alter_is_a_load_error(tmp_path):
    def space(**param):
        return {"experiment": BASE, "optuna": {**STUDY["optuna"], "space": {"steps": param}}}

    cases = [
        ({"type": "float", "low": 0.0, "high": 1.0, "log": True}, "log: true needs low > 0"),
        ({"type": "int", "low": 0, "high": 4, "log": True}, "log: true needs low >= 1"),
        ({"type": "int", "low": 1, "high": 9, "log": True, "step": 2}, "does not combine with step"),
        ({"type": "float", "low": 0.0, "high": 1.0, "step": 0.3}, "not a multiple of step 0.3"),
        ({"type": "float", "low": 0.0, "high": float("nan")}, "finite number"),
        ({"type": "categorical", "choices": [1, [2, 3]]}, "choices must be numbers, strings"),
    ]
    for param, expected in cases:
        with pytest.raises(ValueError) as err:
            sweep.load(_write(tmp_path / "bad.yaml", space(**param)))
        assert expected in str(err.value) and "\n" not in str(err.value), (param, str(err.value))


def test_worker_error_of_the_sweep_is_one_line_from_every_worker(tmp_path):
    """An error each worker meets at run time (a missing prompt file) ends the sweep with that one line."""
    # a text-conditional model: prompts are refused on a class-conditional one before any work
    missing = {"set": "prompts", "prompts": "missing-prompts.txt", "size": 2}
    base = {**BASE, "models": ["shapes-pixart"], "eval": missing}
    path = _write(tmp_path / "grid.yaml", {"experiment": base, "grid": {"methods.toca.ratio": [0.2, 0.4]}})
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dsbench.cli",
            "sweep",
            str(path),
            "--workers",
            "2",
            "--store",
            str(tmp_path / "r.db"),
            "--no-wandb",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=os.environ,
        timeout=300,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert sum("exited with code 2: experiment grid: field 'eval.prompts'" in line for line in lines) == 2, lines
    assert lines[-1].startswith("dsbench sweep: error: experiment grid: field 'eval.prompts': missing-prompts.txt")


# -- a worker killed with SIGKILL: reported in one line; complete study → table, incomplete → rerun ---------------
def _running_workers(db: Path) -> tuple[dict[int, int], int]:
    """({worker pid: RUNNING trial number}, COMPLETE trials) read from the study's SQLite file."""
    import json as _json

    try:
        with sqlite3.connect(db, timeout=60) as conn:
            rows = conn.execute(
                "SELECT t.number, t.state, a.value_json FROM trials t JOIN trial_user_attributes a "
                "ON a.trial_id = t.trial_id WHERE a.key = 'worker'"
            ).fetchall()
            complete = conn.execute("SELECT COUNT(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet, or busy
        return {}, 0
    return {_json.loads(v)["pid"]: n for n, state, v in rows if state == "RUNNING"}, complete


def _sweep_and_kill(
    cmd: list[str], db: Path, victims: int, cwd: Path, max_complete: int | None = 0
) -> tuple[subprocess.CompletedProcess, list[int]]:
    """Run the sweep command; SIGKILL ``victims`` workers as soon as that many run a trial (and, unless
    ``max_complete`` is None, at most that many trials are complete, so survivors cannot have finished)."""
    out, err = cwd / "sweep.out", cwd / "sweep.err"  # files, not pipes: a full pipe would stall the workers
    with open(out, "w") as stdout, open(err, "w") as stderr:
        proc = subprocess.Popen(cmd, cwd=cwd, env=os.environ, stdout=stdout, stderr=stderr, text=True)
        killed = []
        try:
            while not killed and proc.poll() is None:
                time.sleep(0.05)
                running, complete = _running_workers(db)
                if len(running) >= victims and (max_complete is None or complete <= max_complete):
                    for pid in sorted(running)[:victims]:
                        os.kill(pid, signal.SIGKILL)
                        killed.append(pid)
            proc.wait(timeout=600)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert len(killed) == victims, "the workers finished before they could be killed"
    return subprocess.CompletedProcess(cmd, proc.returncode, out.read_text(), err.read_text()), killed


def test_killed_worker_is_reported_in_one_line_and_the_study_completes_or_resumes(tmp_path):
    # a continuous ratio: every trial is a new point that samples (a repeated choice would resume at once, and
    # two workers would rarely be seen running together)
    study_file = {
        **STUDY,
        "optuna": {**STUDY["optuna"], "space": {"methods.toca.ratio": {"type": "float", "low": 0.1, "high": 0.9}}},
    }
    path = _write(tmp_path / "study.yaml", study_file)
    store = tmp_path / "new" / "deeper" / "r.db"  # folders that do not exist yet (the study storage sits there too)
    db = store.with_name("r-optuna.db")
    cmd = [
        sys.executable,
        "-m",
        "dsbench.cli",
        "sweep",
        str(path),
        "--workers",
        "2",
        "--store",
        str(store),
        "--no-wandb",
    ]

    # one worker killed mid-trial: the other marks its trial FAIL, asks it again, and finishes the study
    done, (pid,) = _sweep_and_kill(cmd, db, 1, tmp_path)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if "sweep study:" in line]
    assert len(lines) == 2, done.stderr
    assert f"(pid {pid}) was killed by signal SIGKILL" in lines[0]
    assert "a worker died, but the sweep is complete (3 of 3 trials)" in lines[1]
    assert "| trial |" in done.stdout and done.stdout.count("| mnist-dit |") == 3
    study = optuna.load_study(study_name="study", storage=f"sqlite:///{db}")
    states = [t.state for t in study.get_trials()]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 3 and states.count(optuna.trial.TrialState.FAIL) == 1

    # both workers killed: incomplete, one line each and one error line (exit 2); the same command resumes
    _write(path, {**study_file, "optuna": {**study_file["optuna"], "n_trials": 6}})
    done, pids = _sweep_and_kill(cmd, db, 2, tmp_path, max_complete=None)  # both running: at most 4 complete
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if "sweep study:" in line]
    assert [f"(pid {p}) was killed by signal SIGKILL" in line for p, line in zip(pids, lines)] == [True, True]
    assert lines[-1].startswith("dsbench sweep: error: sweep study: worker ")
    assert lines[-1].endswith("rerun the same command to resume")
    assert re.search(r"; [34] of 6 trials complete \(every finished run is in ", lines[-1]), lines[-1]
    rerun = subprocess.run(cmd, cwd=tmp_path, env=os.environ, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0 and "Traceback" not in rerun.stderr, rerun.stderr
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(complete) == 6 and rerun.stdout.count("| mnist-dit |") == 6


# -- fuzzing: any sweep document loads or fails with a one-line ValueError ----------------------------------------
SEEDS = [
    yaml.safe_load((ROOT / "experiments" / name).read_text())
    for name in ("sweep_toca_ratio.yaml", "sweep_optuna_pareto.yaml")
]
SEEDS += [{"name": "g", "experiment": BASE, "grid": {"methods.toca.ratio": [0.2, 0.4]}}, {"name": "s", **STUDY}]
NEAR = [
    0,
    1,
    -1,
    2,
    0.5,
    1.5,
    1e9,
    -0.0,
    "",
    "x",
    "tpe",
    "nsga2",
    "float",
    "int",
    "categorical",
    "minimize",
    "maximize",
    "psnr",
    "toca",
    "mnist-dit",
    "all",
    True,
    None,
    [],
    {},
    [0.3],
    {"type": "float"},
]
PATHS = [
    "name",
    "steps",
    "seeds",
    "models",
    "model",
    "metrics",
    "eval.size",
    "eval",
    "methods",
    "methods.toca",
    "methods.toca.ratio",
    "methods.0.ratio",
    "methods.9.ratio",
    "methods.toca.params",
    "methods.toca.models",
    "methods.toca.models.mnist-dit.ratio",
    "methods.nope.ratio",
    "latency.repeats",
    "budget.macs_ratio",
    "",
]
VALUES = st.recursive(
    st.one_of(
        st.sampled_from(NEAR), st.none(), st.booleans(), st.integers(-(10**6), 10**6), st.floats(), st.text(max_size=8)
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=6,
)


def _slots(node, prefix=()):
    """Every (container path, key) in a document: where a mutation can act."""
    keys = list(node) if isinstance(node, dict) else range(len(node)) if isinstance(node, list) else []
    for k in keys:
        yield prefix, k
        yield from _slots(node[k], (*prefix, k))


@st.composite
def sweep_documents(draw):
    """A valid sweep file mutated a few times: keys deleted or renamed (to field paths too), values replaced
    by wrong types and out-of-range values, unknown fields added, or the whole document not a mapping."""
    doc = copy.deepcopy(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 4))):
        slots = list(_slots(doc))
        op = draw(st.sampled_from(["delete", "replace", "replace", "rename", "add", "root"]))
        if op == "root":
            return draw(VALUES)
        if not slots:
            continue
        prefix, key = draw(st.sampled_from(slots))
        parent = doc
        for part in prefix:
            parent = parent[part]
        if op == "delete":
            del parent[key]
        elif op == "replace":
            parent[key] = draw(VALUES)
        elif isinstance(parent, dict) and op == "rename":
            parent[draw(st.one_of(st.sampled_from(PATHS), st.text(max_size=6), st.integers(0, 3)))] = parent.pop(key)
        elif isinstance(parent, dict):
            parent[draw(st.one_of(st.sampled_from(PATHS), st.text(max_size=6)))] = draw(VALUES)
        else:
            parent.append(draw(VALUES))
    return doc


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(doc=sweep_documents())
def test_fuzzed_sweep_files_load_or_fail_with_one_line_value_error(tmp_path, doc):
    path = tmp_path / "fuzz.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True))
    try:
        spec = sweep.load(path)
    except (ValueError, TypeError) as err:
        message = str(err)
        assert message and "\n" not in message and "Traceback" not in message, message
        event(f"{type(err).__name__}")  # --hypothesis-show-statistics: how often each outcome was drawn
        return
    event("loads")
    assert spec.fields and all(spec.experiment_for(p) for p in (spec.points() if spec.sweep.grid else []))
