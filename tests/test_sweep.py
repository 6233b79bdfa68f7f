"""Sweeps on the embedded mnist-dit (4 steps, 2 samples): validation, a grid killed with SIGKILL and resumed,
two Optuna workers on one SQLite study, stale trials of a dead worker."""

import os
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

from harness import sweep
from harness.cli import main as cli_main

ROOT = Path(__file__).resolve().parent.parent
BASE = {"models": ["mnist-dit"], "steps": 4, "eval": {"size": 2}, "metrics": ["psnr", "ssim"],
        "latency": {"repeats": 1, "warmup": 0}, "methods": [{"name": "toca"}]}
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
    index = [[c.header for c in table.columns].index(n) for n in names]
    return [tuple(row[i] for i in index) for row in table.rows]


# -- validation ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("data, expected", [
    ({"experiment": BASE}, ["bad.yaml", "exactly one of `grid` and `optuna`"]),
    ({"experiment": BASE, "grid": {"methods.toca.ratio": [0.3]}, "gird": 1},
     ["bad.yaml", "unknown field 'gird'", "allowed fields: name, experiment, grid, optuna"]),
    ({"experiment": BASE, "grid": {"methods.toca.ratio": []}}, ["bad.yaml", "grid.methods.toca.ratio", "at least one"]),
    ({"experiment": BASE, "grid": {"stepz": [2]}}, ["bad.yaml", "'stepz'", "allowed:", "steps"]),
    ({"experiment": BASE, "grid": {"methods.toka.ratio": [0.3]}}, ["bad.yaml", "no method entry 'toka'", "allowed: toca"]),
    ({"experiment": BASE, "grid": {"methods.toca.ratio": [0.3, 2.0]}},
     ["bad.yaml", "point methods.toca.ratio=2.0", "methods[0].params", "ratio"]),
    ({"experiment": BASE, "grid": {"steps": [0]}}, ["bad.yaml", "point steps=0", "'steps'", "greater than or equal to 1"]),
    ({"experiment": "missing.yaml", "grid": {"steps": [2]}}, ["bad.yaml", "field 'experiment'", "missing.yaml"]),
    ({"experiment": {**BASE, "metrics": ["fd"]}, "grid": {"steps": [2]}}, ["bad.yaml", "metrics[0]", "allowed:", "fid"]),
    ({"experiment": BASE, "optuna": {"space": {"methods.toca.ratio": {"type": "uniform", "low": 0, "high": 1}},
                                     "objectives": [{"metric": "psnr", "direction": "maximize"}], "n_trials": 2}},
     ["bad.yaml", "optuna.space.methods.toca.ratio", "float, int, categorical", "'uniform'"]),
    ({"experiment": BASE, "optuna": {"space": {"methods.toca.ratio": {"type": "float", "low": 0.1, "high": 0.9}},
                                     "objectives": [{"metric": "psnr", "direction": "up"}], "n_trials": 2}},
     ["bad.yaml", "optuna.objectives[0].direction", "'minimize' or 'maximize'"]),
    ({"experiment": BASE, "optuna": {"space": {"methods.toca.ratio": {"type": "float", "low": 0.1, "high": 0.9}},
                                     "objectives": [{"metric": "psnr", "direction": "maximize"}], "n_trials": 2,
                                     "sampler": "cmaes"}},
     ["bad.yaml", "optuna.sampler", "'tpe', 'random' or 'nsga2'"]),
    ({"experiment": BASE, "optuna": {"space": {"methods.toca.ratio": {"type": "float", "low": 0.1, "high": 1.5}},
                                     "objectives": [{"metric": "psnr", "direction": "maximize"}], "n_trials": 2}},
     ["bad.yaml", "point methods.toca.ratio=1.5", "methods[0].params"]),
    ({"experiment": BASE, "optuna": {"space": {"steps": {"type": "int", "low": 5, "high": 2}},
                                     "objectives": [{"metric": "psnr", "direction": "maximize"}], "n_trials": 2}},
     ["bad.yaml", "optuna.space.steps: low 5 is above high 2"]),
])
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
    spec = sweep.load(_write(tmp_path / "s.yaml", {"experiment": base, "grid": {
        "methods.toca.ratio": [0.3], "methods.toca.models.mnist-dit.bonus": [0.5], "seeds": [1], "eval.size": [3]}}))
    exp = spec.experiment_for(spec.points()[0])
    assert exp.name == "s" and exp.seeds == [1] and exp.eval.size == 3
    assert exp.methods[1].params_for("mnist-dit") == {"interval": 2, "ratio": 0.3, "bonus": 0.5}
    assert exp.methods[0].params == {}


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
    assert [row[:2] for row in expected.rows] == [["0", 0.2], ["1", 0.4], ["2", 0.6], ["3", 0.8]]
    assert "methods.toca.ratio" in [c.header for c in expected.columns]

    killed = tmp_path / "killed" / "r.db"
    cmd = [sys.executable, "-m", "harness.cli", "sweep", str(path), "--store", str(killed), "--no-wandb"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
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
    study_file = {"experiment": BASE, "optuna": {
        "space": {"methods.toca.ratio": {"type": "categorical", "choices": [0.2, 0.4, 0.6, 0.8]}},
        "objectives": [{"metric": "psnr", "direction": "maximize"}, {"metric": "macs_ratio", "direction": "minimize"}],
        "n_trials": 5, "sampler": "random"}}
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
    assert [row[0] for row in table.rows] == ["0", "1", "2", "3", "4"]
    pareto = [row[-1] == "yes" for row in table.rows]
    values = [[t.values[0], t.values[1]] for t in sorted(trials, key=lambda t: t.number)]
    assert pareto == sweep.pareto_mask(values, ["maximize", "minimize"]) and any(pareto)
    stored = {row[1]: row[6] for row in table.rows}  # psnr in the table is the trial's objective value
    assert all(stored[t.params["methods.toca.ratio"]] == t.values[0] for t in trials)

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
    assert sweep._stale(running(), now)  # died before naming its worker
    assert sweep._stale(running(worker={"host": here, "pid": dead.pid, "started": now}), now)
    assert not sweep._stale(running(worker={"host": here, "pid": os.getpid(), "started": now - 1e6}), now)
    old = now - sweep.STALE_AFTER - 1
    assert sweep._stale(running(worker={"host": there, "pid": 1, "started": old}), now)
    assert not sweep._stale(running(worker={"host": there, "pid": 1, "started": old}, heartbeat=now - 5), now)
