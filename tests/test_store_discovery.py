"""One place for results: reports find the quickstart's and the last run's store without --store, and a
read-only command never creates a file (no store, no Optuna database, no SQLite side files)."""

import shutil
from pathlib import Path

import pytest

from dsbench import store as stores
from dsbench.cli import main

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "results" / "quickstart" / "dsbench.db"


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """An empty working folder and an empty cache (the last-store record lives there)."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("DSBENCH_CACHE", str(tmp_path / "cache"))
    return work


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def quickstart_store(folder: Path) -> Path:
    path = folder / stores.QUICKSTART_STORE
    path.parent.mkdir(parents=True)
    shutil.copyfile(REFERENCE, path)
    return path


def test_no_store_says_how_to_make_one_and_creates_nothing(folder, capsys):
    assert main(["table"]) == 2
    err = capsys.readouterr().err
    assert "no results database found" in err and "dsbench quickstart" in err and "--store" in err
    assert main(["plot", "--out", str(folder.parent / "plots")]) == 2
    assert files_under(folder) == set()


def test_quickstart_store_found_without_flags(folder, capsys):
    path = quickstart_store(folder)
    before = files_under(folder)
    assert stores.find_store(None)[0] == stores.QUICKSTART_STORE
    assert main(["table"]) == 0
    out, err = capsys.readouterr()
    assert "Leaderboard" in out and "mnist-dit" in out and "toca" in out
    assert f"reading {stores.QUICKSTART_STORE}" in err
    assert files_under(folder) == before  # no results/dsbench.db, no -wal / -shm beside the store
    assert path.read_bytes() == REFERENCE.read_bytes()


def test_plot_reads_the_quickstart_store(folder, capsys):
    quickstart_store(folder)
    out = folder.parent / "plots"
    assert main(["plot", "--out", str(out)]) == 0
    assert (out / "pareto.png").is_file()
    assert not (folder / "results").exists()


def test_last_run_store_comes_first_and_the_others_are_named(folder, capsys):
    quickstart_store(folder)
    mine = folder / "runs" / "mine" / "dsbench.db"
    mine.parent.mkdir(parents=True)
    shutil.copyfile(REFERENCE, mine)
    stores.remember(mine)
    path, note = stores.find_store(None)
    assert path == "runs/mine/dsbench.db"
    assert "the last run's store" in note and stores.QUICKSTART_STORE in note and "--store" in note
    assert stores.find_store("x.db") == ("x.db", None)  # --store is taken as given


def test_a_store_outside_the_folder_is_not_recorded(folder, tmp_path):
    elsewhere = tmp_path / "elsewhere.db"
    shutil.copyfile(REFERENCE, elsewhere)
    stores.remember(elsewhere)
    assert stores.last_store() is None


def test_a_recorded_store_that_is_gone_is_skipped(folder):
    quickstart_store(folder)
    gone = folder / "runs" / "gone.db"
    gone.parent.mkdir(parents=True, exist_ok=True)
    gone.write_bytes(REFERENCE.read_bytes())
    stores.remember(gone)
    gone.unlink()
    assert stores.find_store(None)[0] == stores.QUICKSTART_STORE


def test_sweep_table_creates_no_optuna_database(folder, capsys):
    path = quickstart_store(folder)
    before = files_under(folder)
    sweep_file = ROOT / "experiments" / "sweep_optuna_pareto.yaml"
    assert main(["table", "--sweep", str(sweep_file)]) == 2
    err = capsys.readouterr().err
    assert "no Optuna study storage" in err and "dsbench sweep" in err
    assert files_under(folder) == before
    assert not path.with_name("dsbench-optuna.db").exists()


def test_read_only_open_of_a_missing_store_creates_nothing(folder):
    with pytest.raises(stores.StoreError, match="no results database"):
        stores.Store(folder / "results" / "dsbench.db", readonly=True)
    assert files_under(folder) == set()


def test_plot_of_an_empty_store_says_so(folder, capsys):
    stores.Store(folder / "runs" / "empty.db").close()
    assert main(["plot", "--store", "runs/empty.db", "--out", str(folder.parent / "plots")]) == 2
    assert "has no runs to plot" in capsys.readouterr().err
