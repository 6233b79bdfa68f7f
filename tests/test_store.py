"""The results store: one row per run identity, atomic writes, frames with the contract's columns."""

import math
import sqlite3

import numpy as np
import pytest

from dsbench.store import COLUMNS, Store


def _row(run_id, **kw):
    return {
        "run_id": run_id,
        "experiment": "exp",
        "model": "mnist-dit",
        "method": "toca",
        "label": "toca_N3_R0.30",
        "params": {"interval": 3, "ratio": 0.3},
        "tuned": {"ratio": 0.3},
        "macs": 1.5e9,
        "lpips_alex": 0.1,
        **kw,
    }


def test_put_get_has_and_frame_columns(tmp_path):
    store = Store(tmp_path / "r.db")
    store.put(_row("a", psnr=np.float32(30.5), steps=np.int64(20)))
    assert store.has("a") and not store.has("b")
    row = store.get("a")
    assert row["params"] == {"interval": 3, "ratio": 0.3} and row["psnr"] == 30.5 and row["steps"] == 20
    assert store.get("b") is None
    frame = store.frame()
    assert list(frame.columns[: len(COLUMNS)]) == list(COLUMNS)
    assert {"lpips_alex", "psnr"} <= set(frame.columns)
    assert frame.loc[0, "params"] == {"interval": 3, "ratio": 0.3}  # dicts come back as dicts
    assert frame.loc[0, "created_at"] > 0


def test_unique_on_run_id_and_replace(tmp_path):
    store = Store(tmp_path / "r.db")
    store.put(_row("a", macs=1.0))
    with pytest.raises(ValueError, match="already in the store"):
        store.put(_row("a", macs=2.0))
    assert len(store) == 1 and store.get("a")["macs"] == 1.0
    store.put(_row("a", macs=2.0), replace=True)
    assert len(store) == 1 and store.get("a")["macs"] == 2.0


def test_rows_persist_across_connections_and_filter_by_experiment(tmp_path):
    path = tmp_path / "sub" / "r.db"
    with Store(path) as store:
        store.put(_row("a"))
        store.put(_row("b", experiment="other", fid=math.nan))
    store = Store(path)
    assert len(store) == 2
    assert list(store.frame("exp")["run_id"]) == ["a"]
    other = store.frame("other")
    assert math.isnan(other.loc[0, "fid"])


def test_failed_write_leaves_no_row(tmp_path):
    store = Store(tmp_path / "r.db")
    with pytest.raises(TypeError, match="JSON-serialisable"):
        store.put(_row("a", bad=object()))
    with pytest.raises(ValueError, match="run_id"):
        store.put({"experiment": "exp"})
    assert len(store) == 0
    # the table is what other tools may query directly
    assert sqlite3.connect(tmp_path / "r.db").execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 0


def test_memory_store_and_empty_frame():
    store = Store(":memory:")
    frame = store.frame()
    assert len(frame) == 0 and list(frame.columns) == list(COLUMNS)
    store.put(_row("a"))
    assert store.delete("a") and not store.has("a")
