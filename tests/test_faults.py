"""The fault suite: what a user can do wrong, and what can go wrong under a run, ends in a one-line error (exit
code != 0) or in the correct result — never a traceback, never a lost row. The "Guarantees" page (docs/guarantees.md)
names these tests."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_quietly

from dsbench import experiment, runner
from dsbench.cli import main as cli_main
from dsbench.store import Store, StoreError, keep_pending, pending_dir

ROOT = Path(__file__).resolve().parent.parent
BASE = {
    "models": ["mnist-dit"],
    "steps": 4,
    "eval": {"size": 2},
    "metrics": ["psnr"],
    "latency": {"repeats": 1, "warmup": 0},
}


def _exp(name, methods, **extra):
    return experiment.parse({"name": name, **BASE, "methods": methods, **extra}, f"{name}.yaml")


def _one_line_error(capsys, *parts):
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for part in parts:
        assert part in err, (part, err)
    return err


# -- run identity: experiments share rows, never take them from each other ---------------------------------------
def test_force_in_one_experiment_never_rewrites_a_row_another_reports(tmp_path, teachers):
    store = Store(tmp_path / "r.db")
    run_quietly(_exp("a", [{"name": "full"}, {"name": "fora", "params": {"interval": 2}}]), store, tmp_path, teachers)
    before = {row["run_id"]: row for row in store.rows("a")}
    b = _exp("b", [{"name": "fora", "params": {"interval": 2}}, {"name": "steps", "params": {"fraction": 0.5}}])
    out = run_quietly(b, store, tmp_path, teachers, force=True)
    assert [r["method"] for r in out.stored] == ["fora", "steps"]
    after = {row["run_id"]: row for row in store.rows("a")}
    assert after == {key: {**row, "experiment": "a"} for key, row in before.items()}  # a's rows untouched
    assert sorted(store.frame("b")["method"]) == ["fora", "steps"]
    fora_b = store.frame("b").set_index("method").loc["fora"]
    fora_a = store.frame("a").set_index("method").loc["fora"]
    assert fora_b["run_id"] != fora_a["run_id"] and fora_b["identity"] == fora_a["run_id"]
    # forcing b again replaces b's own row only
    run_quietly(b, store, tmp_path, teachers, force=True)
    assert len(store) == 4 and {r["run_id"]: r for r in store.rows("a")} == after


def test_an_experiment_reports_runs_another_experiment_computed(tmp_path, teachers, capsys):
    store_path = tmp_path / "r.db"
    run_quietly(_exp("a", [{"name": "full"}]), Store(store_path), tmp_path, teachers)
    path = tmp_path / "b.yaml"
    path.write_text(json.dumps({"name": "b", **BASE, "methods": [{"name": "full"}]}))
    assert cli_main(["run", str(path), "--store", str(store_path), "--no-wandb"]) == 0
    printed = capsys.readouterr().out
    assert "(no runs)" not in printed and "full" in printed
    assert len(Store(store_path)) == 1 and list(Store(store_path).frame("b")["method"]) == ["full"]


def test_adding_a_metric_measures_it_instead_of_dropping_it(tmp_path, teachers):
    store = Store(tmp_path / "r.db")
    run_quietly(_exp("a", [{"name": "full"}]), store, tmp_path, teachers)
    out = run_quietly(_exp("a", [{"name": "full"}], metrics=["psnr", "ssim"]), store, tmp_path, teachers)
    assert len(out.stored) == 1 and not out.resumed
    from dsbench import report

    table = report.leaderboard(store.frame("a"))
    record = table.records()[0]
    assert record["seeds"] == 1 and record["ssim"] == pytest.approx(1.0)  # the newer row, not two seeds


# -- no computed row is lost -------------------------------------------------------------------------------------
def test_a_locked_store_keeps_the_row_beside_it_and_the_next_run_imports_it(tmp_path, teachers, caplog):
    path = tmp_path / "r.db"
    store = Store(path, timeout=0.2)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # another process holds the lock past the timeout
    exp = _exp("locked", [{"name": "full"}])
    with caplog.at_level("WARNING", logger="dsbench.runner"):
        out = run_quietly(exp, store, tmp_path, teachers)
    blocker.rollback()
    blocker.close()
    assert not out.stored and len(out.pending) == 1 and Path(out.pending[0]).is_file()
    assert "kept in" in caplog.text and "next run on this store imports it" in caplog.text
    again = run_quietly(exp, Store(path), tmp_path, teachers)
    assert len(again.resumed) == 1 and not again.stored  # imported, not recomputed
    assert list(Store(path).frame("locked")["method"]) == ["full"]
    assert not list(pending_dir(path).glob("*.json"))


def test_pending_rows_import_once_and_a_half_written_file_is_left_alone(tmp_path):
    path = tmp_path / "r.db"
    row = {"run_id": "abc", "experiment": "e", "model": "m", "method": "full", "label": "full"}
    keep_pending(path, row)
    keep_pending(path, row)  # the same row kept twice (two interrupted runs)
    (pending_dir(path) / "zz-partial.json").write_text('{"row": {"run_id"')
    store = Store(path)
    assert store.import_pending() == 2 and len(store) == 1
    assert [p.name for p in pending_dir(path).glob("*.json")] == ["zz-partial.json"]


def test_artifacts_that_cannot_be_written_after_sampling_keep_the_row(tmp_path, teachers, monkeypatch):
    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(runner, "save_artifacts", disk_full)
    store = Store(tmp_path / "r.db")
    out = run_quietly(_exp("nospace", [{"name": "full"}]), store, tmp_path, teachers)
    row = store.get(out.stored[0]["run_id"])
    assert row["artifacts"] is None and "No space left" in row["artifacts_note"] and row["psnr"] > 0


def test_blocked_artifacts_folder_fails_before_sampling(tmp_path, teachers, monkeypatch):
    from dsbench import metrics

    monkeypatch.setattr(metrics, "compute", lambda *a, **k: pytest.fail("sampled before the check"))
    (tmp_path / "artifacts").write_text("a file where the folder should be")
    with pytest.raises(ValueError, match="artifacts: cannot write into .*is a file"):
        run_quietly(_exp("blocked", [{"name": "full"}]), Store(tmp_path / "r.db"), tmp_path, teachers)


def _rows(path: Path) -> int:
    """Rows committed so far, read without a write lock (0 while the file or its table is not there yet)."""
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as conn:
            return conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    except sqlite3.Error:
        return 0


def test_kill_9_during_store_writes_leaves_a_whole_database(tmp_path):
    """A writer killed at random points inside its transactions: every row that is there is whole."""
    path = tmp_path / "r.db"
    code = (
        "import sys; from dsbench.store import Store\n"
        "s, attempt = Store(sys.argv[1]), sys.argv[2]\n"
        "for i in range(100000):\n"
        "    s.put({'run_id': f'r{attempt}-{i}', 'experiment': 'k', 'blob': 'x' * 20000, 'i': i, 'a': attempt})\n"
    )
    for attempt in range(3):
        proc = subprocess.Popen([sys.executable, "-c", code, str(path), str(attempt)], cwd=ROOT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None and _rows(path) < 20 * (attempt + 1):
            time.sleep(0.05)
        assert proc.poll() is None, "the writer ended before it was killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    store = Store(path)
    rows = store.rows("k")
    assert len(rows) >= 60 and all(r["blob"] == "x" * 20000 and r["run_id"] == f"r{r['a']}-{r['i']}" for r in rows)
    assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"


# -- the store file itself ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("fault", ["garbage", "truncated", "directory", "foreign sqlite", "parent is a file"])
def test_store_faults_are_one_line_errors(tmp_path, fault):
    path = tmp_path / "r.db"
    if fault == "garbage":
        path.write_bytes(os.urandom(5000))
    elif fault == "truncated":
        with Store(path) as store:
            for i in range(200):
                store.put({"run_id": f"r{i}", "experiment": "e", "blob": "y" * 2000})
        sqlite3.connect(path).execute("PRAGMA wal_checkpoint(TRUNCATE)").close()
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    elif fault == "directory":
        path.mkdir()
    elif fault == "foreign sqlite":
        sqlite3.connect(path).execute("CREATE TABLE other (x)").close()
    else:
        (tmp_path / "file").write_text("")
        path = tmp_path / "file" / "r.db"
    for readonly in (False, True):
        with pytest.raises(StoreError) as err:
            Store(path, readonly=readonly)
        assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_reports_never_create_a_store(tmp_path, capsys):
    typo = tmp_path / "typo.db"
    assert cli_main(["table", "--store", str(typo)]) == 2
    _one_line_error(capsys, "no results database", str(typo))
    assert cli_main(["plot", "--store", str(typo), "--out", str(tmp_path / "plots")]) == 2
    _one_line_error(capsys, "no results database")
    assert not typo.exists()


@pytest.mark.parametrize(
    "argv, parts",
    [
        (["plot", "--out", "{file}", "--store", "{store}"], ["--out", "is a file"]),
        (["table", "--out", "{dir}", "--store", "{store}"], ["--out", "is a folder"]),
        (["quickstart", "--out", "{file}", "--no-wandb"], ["--out", "is a file"]),
        (["run", "{yaml}", "--store", "{file}/r.db", "--no-wandb"], ["store", "is a file, not a folder"]),
        (["run", "{yaml}", "--store", "{garbage}", "--no-wandb"], ["store", "not a dsbench results database"]),
        (["table", "--store", "{dir}"], ["store", "is a directory"]),
    ],
)
def test_bad_paths_are_one_line_errors_before_any_work(tmp_path, capsys, argv, parts):
    (tmp_path / "file").write_text("")
    (tmp_path / "dir").mkdir()
    (tmp_path / "garbage.db").write_bytes(b"not a database at all" * 100)
    (tmp_path / "e.yaml").write_text(json.dumps({"name": "e", **BASE, "methods": [{"name": "full"}]}))
    with Store(tmp_path / "s.db") as store:
        store.put({"run_id": "x", "experiment": "e", "model": "mnist-dit", "method": "full", "label": "full"})
    names = {
        "file": tmp_path / "file",
        "dir": tmp_path / "dir",
        "store": tmp_path / "s.db",
        "yaml": tmp_path / "e.yaml",
        "garbage": tmp_path / "garbage.db",
    }
    assert cli_main([a.format(**names) for a in argv]) == 2
    _one_line_error(capsys, *parts)


def test_zero_steps_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit:
        cli_main(["macs", "--model", "dit-xl-2-256", "--method", "full", "--steps", "0"])
    assert exit.value.code == 2 and "expected an integer >= 1, got 0" in capsys.readouterr().err


def test_ctrl_c_is_exit_130_with_the_resume_hint(tmp_path, monkeypatch, capsys):
    from dsbench import quickstart

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(quickstart, "execute", interrupted)
    path = tmp_path / "e.yaml"
    path.write_text(json.dumps({"name": "e", **BASE, "methods": [{"name": "full"}]}))
    assert cli_main(["run", str(path), "--store", str(tmp_path / "r.db")]) == 130
    _one_line_error(capsys, "interrupted", "rerun the same command to resume")


def test_ctrl_c_on_a_realrun_quietly(tmp_path):
    """SIGINT to a real `dsbench run` while it samples: exit 130, one line, no traceback."""
    path = tmp_path / "e.yaml"
    path.write_text(json.dumps({"name": "e", **BASE, "eval": {"size": 64}, "methods": [{"name": "full"}]}))
    env = {**os.environ, "WANDB_MODE": "disabled", "DSBENCH_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dsbench.cli", "run", str(path), "--store", str(tmp_path / "r.db"), "--no-wandb"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (tmp_path / "cache" / "teachers" / ".locks").exists():
        time.sleep(0.1)  # the teacher is being sampled
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "rerun the same command to resume" in err.strip().splitlines()[-1]
