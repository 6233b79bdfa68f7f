"""The results database: one row per run, the source of truth every report is made from (DESIGN §2, §7).

SQLite, one table ``runs``: the identity and the columns reports filter on are real columns; the
whole row is kept as JSON next to them, so metrics a new model or method brings need no schema change.
A row is written in one transaction and is unique on ``run_id``, so an interrupted sweep that
resumes, or two workers finishing the same run, can never leave two rows for one identity.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

# The columns every frame has (None where a run has no value); metric columns are added as found.
COLUMNS = ("run_id", "experiment", "model", "method", "label", "params", "tuned", "budget_macs_ratio", "budget_note",
           "sampler", "steps", "guidance", "eval_set", "n_samples", "seed", "code_version", "macs", "macs_full",
           "macs_ratio", "macs_attention", "latency_s", "latency_full_s", "speedup", "peak_memory_mb", "artifacts",
           "created_at")
INDEXED = ("experiment", "model", "method", "label", "created_at")  # real SQL columns besides run_id

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id     TEXT PRIMARY KEY,
    experiment TEXT,
    model      TEXT,
    method     TEXT,
    label      TEXT,
    created_at REAL NOT NULL,
    row        TEXT NOT NULL
)
"""


def _plain(value: Any):
    """JSON for numpy scalars and arrays, paths and tuples (NaN round-trips: Python's json reads what it writes)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"store rows must be JSON-serialisable; got {type(value).__name__}")


class Store:
    """``Store(path)``: the SQLite results database at ``path`` (created on first use; ``":memory:"`` works)."""

    def __init__(self, path: str | Path = "results/dsbench.db"):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        # timeout: several sweep workers may write at once; SQLite serialises them
        self._conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        if self.path != ":memory:":
            self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute(_SCHEMA)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def put(self, row: dict, replace: bool = False) -> None:
        """Write ``row`` in one transaction. A second row for a stored ``run_id`` is a ValueError unless
        ``replace`` (what ``--force`` does), which swaps the old row for the new one atomically."""
        run_id = row.get("run_id")
        if not isinstance(run_id, str) or not run_id:
            raise ValueError(f"a store row needs a non-empty string run_id, got {run_id!r}")
        row = dict(row)
        row.setdefault("created_at", time.time())
        text = json.dumps(row, default=_plain, sort_keys=True)
        values = (run_id, *(row.get(c) for c in INDEXED), text)
        verb = "INSERT OR REPLACE" if replace else "INSERT"
        try:
            with self._conn:  # BEGIN ... COMMIT, or ROLLBACK on error
                self._conn.execute("BEGIN IMMEDIATE")
                self._conn.execute(f"{verb} INTO runs (run_id, {', '.join(INDEXED)}, row) VALUES (?, ?, ?, ?, ?, ?, ?)",
                                   values)
        except sqlite3.IntegrityError:
            raise ValueError(f"run {run_id} is already in the store {self.path}; pass replace=True (--force) "
                             "to rerun it") from None

    def has(self, run_id: str) -> bool:
        return self._conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is not None

    def get(self, run_id: str) -> dict | None:
        found = self._conn.execute("SELECT row FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return json.loads(found[0]) if found else None

    def delete(self, run_id: str) -> bool:
        with self._conn:
            return self._conn.execute("DELETE FROM runs WHERE run_id = ?", (run_id,)).rowcount > 0

    def rows(self, experiment: str | None = None) -> list[dict]:
        """All rows (of one experiment), oldest first."""
        query, args = "SELECT row FROM runs", ()
        if experiment is not None:
            query, args = query + " WHERE experiment = ?", (experiment,)
        return [json.loads(r[0]) for r in self._conn.execute(query + " ORDER BY created_at, run_id", args)]

    def __len__(self) -> int:
        return self._conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0]

    def frame(self, experiment: str | None = None):
        """pandas DataFrame, one row per run: the :data:`COLUMNS` first, then every metric column found."""
        import pandas as pd

        rows = self.rows(experiment)
        extra = sorted({key for row in rows for key in row} - set(COLUMNS))
        frame = pd.DataFrame([{c: row.get(c) for c in (*COLUMNS, *extra)} for row in rows],
                             columns=[*COLUMNS, *extra])
        return frame
