"""The results database: one row per run, the source of truth every report is made from (docs/architecture.md).

SQLite, one table ``runs``: the identity and the columns reports filter on are real columns; the
whole row is kept as JSON next to them, so metrics a new model or method brings need no schema change.
A row is written in one transaction and is unique on ``run_id``, so an interrupted sweep that
resumes, or two workers finishing the same run, can never leave two rows for one identity.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

# The columns every frame has (None where a run has no value); metric columns are added as found.
COLUMNS = (
    "run_id",
    "experiment",
    "model",
    "method",
    "label",
    "params",
    "tuned",
    "budget_macs_ratio",
    "budget_note",
    "bracket",
    "sampler",
    "steps",
    "guidance",
    "eval_set",
    "n_samples",
    "seed",
    "code_version",
    "macs",
    "macs_full",
    "macs_ratio",
    "macs_attention",
    "latency_s",
    "latency_full_s",
    "speedup",
    "peak_memory_mb",
    "artifacts",
    "created_at",
)
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
);
CREATE TABLE IF NOT EXISTS members (
    experiment TEXT NOT NULL,
    identity   TEXT NOT NULL,
    run_id     TEXT NOT NULL,
    PRIMARY KEY (experiment, identity)
);
"""
LOCK_TIMEOUT_S = 60  # sweep workers may write at once; SQLite serialises them, waiting up to this long


class StoreError(ValueError):
    """The results database cannot be used as given (missing, not a database, unwritable): one line, the fix."""


def _plain(value: Any):
    """JSON for numpy scalars and arrays, paths and tuples (NaN round-trips: Python's json reads what it writes)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"store rows must be JSON-serialisable; got {type(value).__name__}")


class Store:
    """``Store(path)``: the SQLite results database at ``path`` (created on first use; ``":memory:"`` works).

    A row is one measured run. Its ``run_id`` is the run's identity (a hash of everything that determines its
    values, :func:`dsbench.runner.run_id`); an experiment reports the rows it is a *member* of, so one row can
    serve several experiments, and ``--force`` in one of them never rewrites a row another one reports (the
    rerun gets a row of its own, ``<identity>-<n>``). ``readonly``: open an existing store for reports only
    (never creates one). Every fault of the file itself is a :class:`StoreError` naming the path and the fix.
    """

    def __init__(
        self, path: str | Path = "results/dsbench.db", *, readonly: bool = False, timeout: float = LOCK_TIMEOUT_S
    ):
        self.path = str(path)
        self.readonly = readonly
        memory = self.path == ":memory:"
        file = Path(self.path)
        if not memory:
            _check_path(file, readonly)
        try:
            if readonly:
                # No -wal beside it: no writer has it open and every write is in the file itself. Read it as
                # immutable then, or SQLite would leave -wal and -shm files beside it (a report creates no file).
                wal = file.with_name(file.name + "-wal")
                mode = "mode=ro" if wal.exists() else "mode=ro&immutable=1"
                self._conn = sqlite3.connect(
                    f"{file.resolve().as_uri()}?{mode}", uri=True, timeout=timeout, isolation_level=None
                )
            else:
                self._conn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None)
            tables = self._tables()
            if tables and "runs" not in tables:  # someone else's database: never write into it
                raise StoreError(
                    f"store: {self.path} is an SQLite file without a runs table, not a dsbench "
                    "results database; pass another --store"
                )
            check = self._conn.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(f"damaged: {check}")
            if not readonly:
                if not memory:
                    self._conn.execute("PRAGMA journal_mode=WAL")
                if not {"runs", "members"} <= tables:
                    self._conn.executescript(_SCHEMA)
                self._migrate()
                tables = self._tables()
        except sqlite3.OperationalError as err:
            if "locked" in str(err):
                raise StoreError(
                    f"store: {self.path} is locked by another process for more than {timeout:.0f} s; "
                    "wait for it to finish and rerun"
                ) from None
            raise StoreError(f"store: {self.path} cannot be opened ({err}); pass a writable --store") from None
        except sqlite3.DatabaseError as err:
            raise StoreError(
                f"store: {self.path} is not a dsbench results database ({err}); move it aside or pass another --store"
            ) from None
        if "runs" not in tables:
            raise StoreError(
                f"store: {self.path} has no runs table, not a dsbench results database; pass another --store"
            )
        self._has_members = "members" in tables

    def _tables(self) -> set[str]:
        return {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}

    def _migrate(self) -> None:
        """Stores written before experiments shared rows: every row is a member of the experiment that ran it.
        Looked for first, so that opening a current store takes no write lock (workers open it concurrently)."""
        orphans = "FROM runs WHERE experiment IS NOT NULL AND run_id NOT IN (SELECT run_id FROM members)"
        if self._conn.execute(f"SELECT 1 {orphans} LIMIT 1").fetchone() is not None:
            self._conn.execute(
                f"INSERT OR IGNORE INTO members (experiment, identity, run_id) "
                f"SELECT experiment, run_id, run_id {orphans}"
            )

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def put(self, row: dict, replace: bool = False) -> str:
        """Write ``row`` (``row["run_id"]`` is its identity) in one transaction and make it a member of
        ``row["experiment"]``; the row key written is returned. A second row for a stored identity is a
        ValueError unless ``replace`` (what ``--force`` does): then the experiment's own row is swapped for the
        new one, while a row another experiment reports stays as it is and the new one gets its own key."""
        identity = row.get("run_id")
        if not isinstance(identity, str) or not identity:
            raise ValueError(f"a store row needs a non-empty string run_id, got {identity!r}")
        if self.readonly:
            raise StoreError(f"store: {self.path} was opened read-only")
        row = dict(row)
        row.setdefault("created_at", time.time())
        experiment = row.get("experiment")
        with self._conn:  # BEGIN ... COMMIT, or ROLLBACK on error
            self._conn.execute("BEGIN IMMEDIATE")
            existing = self._keys(identity)
            if existing and not replace:
                raise ValueError(
                    f"run {identity} is already in the store {self.path}; pass replace=True (--force) to rerun it"
                )
            key = identity
            if existing:
                mine = self._member_key(experiment, identity)
                free = [k for k in existing if not self._reported_by_others(k, experiment)]
                key = mine if mine in free else (free[0] if free else self._new_key(identity, existing))
                for old in free:  # rows no other experiment reports are replaced, not kept
                    if old != key:
                        self._conn.execute("DELETE FROM runs WHERE run_id = ?", (old,))
                        self._conn.execute("DELETE FROM members WHERE run_id = ?", (old,))
            row["run_id"] = key
            row["identity"] = identity
            text = json.dumps(row, default=_plain, sort_keys=True)
            self._conn.execute(
                f"INSERT OR REPLACE INTO runs (run_id, {', '.join(INDEXED)}, row) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (key, *(row.get(c) for c in INDEXED), text),
            )
            if experiment is not None:
                self._conn.execute(
                    "INSERT OR REPLACE INTO members (experiment, identity, run_id) VALUES (?, ?, ?)",
                    (experiment, identity, key),
                )
        return key

    def _keys(self, identity: str) -> list[str]:
        return [
            r[0]
            for r in self._conn.execute(
                "SELECT run_id FROM runs WHERE run_id = ? OR run_id LIKE ? ESCAPE '!'", (identity, f"{identity}-%")
            )
        ]

    def _member_key(self, experiment: str | None, identity: str) -> str | None:
        found = self._conn.execute(
            "SELECT run_id FROM members WHERE experiment IS ? AND identity = ?", (experiment, identity)
        ).fetchone()
        return found[0] if found else None

    def _reported_by_others(self, key: str, experiment: str | None) -> bool:
        return (
            self._conn.execute(
                "SELECT 1 FROM members WHERE run_id = ? AND experiment IS NOT ?", (key, experiment)
            ).fetchone()
            is not None
        )

    @staticmethod
    def _new_key(identity: str, existing: list[str]) -> str:
        n = 2
        while f"{identity}-{n}" in existing:
            n += 1
        return f"{identity}-{n}"

    def has(self, identity: str) -> bool:
        """Whether any experiment stored a run of this identity (or this row key)."""
        return self.get(identity) is not None

    def get(self, identity: str) -> dict | None:
        """The newest row of this identity (or the row with this key)."""
        found = self._conn.execute(
            "SELECT row FROM runs WHERE run_id = ? OR run_id LIKE ? ESCAPE '!' ORDER BY created_at DESC LIMIT 1",
            (identity, f"{identity}-%"),
        ).fetchone()
        return json.loads(found[0]) if found else None

    def member(self, experiment: str, identity: str) -> dict | None:
        """The row ``experiment`` reports for this identity, if any."""
        if not self._has_members:
            return None
        found = self._conn.execute(
            "SELECT r.row FROM members m JOIN runs r ON r.run_id = m.run_id WHERE m.experiment = ? AND m.identity = ?",
            (experiment, identity),
        ).fetchone()
        return json.loads(found[0]) if found else None

    def adopt(self, experiment: str, identity: str) -> bool:
        """Make the newest stored row of this identity (computed by another experiment) a member of
        ``experiment`` too; False when no experiment has computed it yet."""
        row = self.get(identity)
        if row is None:
            return False
        with self._conn:
            self._conn.execute(
                "INSERT OR IGNORE INTO members (experiment, identity, run_id) VALUES (?, ?, ?)",
                (experiment, identity, row["run_id"]),
            )
        return True

    def delete(self, run_id: str) -> bool:
        with self._conn:
            self._conn.execute("DELETE FROM members WHERE run_id = ?", (run_id,))
            return self._conn.execute("DELETE FROM runs WHERE run_id = ?", (run_id,)).rowcount > 0

    def rows(self, experiment: str | None = None) -> list[dict]:
        """The rows ``experiment`` reports (every experiment's, one per membership, without), oldest first;
        each row's ``experiment`` is the experiment reporting it."""
        if not self._has_members:  # an old store opened read-only: rows belong to the experiment that ran them
            query, args = "SELECT row, experiment FROM runs", ()
            if experiment is not None:
                query, args = query + " WHERE experiment = ?", (experiment,)
        else:
            query, args = "SELECT r.row, m.experiment FROM members m JOIN runs r ON r.run_id = m.run_id", ()
            if experiment is not None:
                query, args = query + " WHERE m.experiment = ?", (experiment,)
        found = self._conn.execute(
            query + " ORDER BY r.created_at, r.run_id" if self._has_members else query + " ORDER BY created_at, run_id",
            args,
        )
        return [{**json.loads(text), "experiment": member} for text, member in found]

    def import_pending(self) -> int:
        """Write the rows a run kept in the side folder because this store could not be written then (locked,
        full disk); each file is removed once its row is in. Returns how many were imported."""
        folder = pending_dir(self.path)
        count = 0
        for file in sorted(folder.glob("*.json")) if folder.is_dir() else ():
            try:
                kept = json.loads(file.read_text())
                row, replace = kept["row"], bool(kept.get("replace"))
            except (OSError, ValueError, KeyError, TypeError):
                continue  # half-written by a run killed mid-write: its row is still in memory of no one; skip
            try:
                self.put(row, replace=replace)
            except ValueError:  # the identity was stored meanwhile (another worker, or this file twice)
                if not replace:
                    self.adopt(row.get("experiment"), row["run_id"])
            file.unlink()
            count += 1
        return count

    def __len__(self) -> int:
        return self._conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0]

    def frame(self, experiment: str | None = None):
        """pandas DataFrame, one row per (experiment, run): the :data:`COLUMNS` first, then every metric column."""
        import pandas as pd

        rows = self.rows(experiment)
        extra = sorted({key for row in rows for key in row} - set(COLUMNS))
        frame = pd.DataFrame([{c: row.get(c) for c in (*COLUMNS, *extra)} for row in rows], columns=[*COLUMNS, *extra])
        return frame


def _check_path(file: Path, readonly: bool) -> None:
    """What can be said about the path before SQLite tries it, as one line with the fix."""
    if file.is_dir():
        raise StoreError(f"store: {file} is a directory; pass a database file such as {file / 'dsbench.db'}")
    if readonly:
        if not file.exists():
            raise StoreError(
                f"store: no results database at {file}; run an experiment into it first "
                f"(dsbench run FILE --store {file}) or pass the --store that has the runs"
            )
        return
    parent = file.parent
    blocker = next((p for p in (parent, *parent.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise StoreError(f"store: cannot create {file}: {blocker} is a file, not a folder; pass another --store")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise StoreError(f"store: cannot create the folder {parent} ({err.strerror}); pass another --store") from None


def pending_dir(store_path: str | Path) -> Path:
    """Where rows wait that were computed but could not be written to the store at ``store_path``."""
    path = Path(store_path)
    return path.with_name(path.name + ".pending")


def keep_pending(store_path: str | Path, row: dict, replace: bool = False) -> Path:
    """Keep a computed row next to the store (atomically: a temporary file renamed into place) for
    :meth:`Store.import_pending`; returns the file."""
    folder = pending_dir(store_path)
    folder.mkdir(parents=True, exist_ok=True)
    file = folder / f"{row['run_id']}-{int(time.time() * 1e6)}.json"
    tmp = file.with_suffix(".tmp")
    tmp.write_text(json.dumps({"row": row, "replace": replace}, default=_plain, sort_keys=True))
    os.replace(tmp, file)
    return file


# -- one place for results: which store a command reads when no --store is given ----------------------------------
DEFAULT_STORE = "results/dsbench.db"  # `dsbench run` and `dsbench sweep` write here by default
QUICKSTART_STORE = "runs/quickstart/dsbench.db"  # `dsbench quickstart` (its --out folder + dsbench.db)
REFERENCE_STORE = "results/quickstart/dsbench.db"  # the committed reference measurement of the quickstart
LAST_STORE_FILE = "last-store.json"  # under the cache folder: {working folder: the store last written from it}


def _record_path() -> Path:
    cache = os.environ.get("DSBENCH_CACHE")
    return Path(cache) / LAST_STORE_FILE if cache else Path.home() / ".cache" / "dsbench" / LAST_STORE_FILE


def remember(store_path: str | Path) -> None:
    """Record ``store_path`` as the store the last run from this working folder wrote (``dsbench run``,
    ``sweep`` and ``quickstart`` call it), so that ``table``, ``plot`` and sweep reports read it without
    ``--store``. Only a store inside the working folder is recorded (one elsewhere, e.g. a test's temporary
    store, is read with ``--store``). Best effort: a record that cannot be written only costs a ``--store``."""
    if str(store_path) == ":memory:":
        return
    record, here, store = _record_path(), Path.cwd().resolve(), Path(store_path).resolve()
    if here not in store.parents:  # a store elsewhere (a temporary one, a shared disk) is named with --store
        return
    try:
        known = json.loads(record.read_text()) if record.is_file() else {}
        if not isinstance(known, dict):
            known = {}
        known[str(here)] = str(store)
        record.parent.mkdir(parents=True, exist_ok=True)
        tmp = record.with_name(f"{record.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known, indent=1, sort_keys=True))
        os.replace(tmp, record)
    except (OSError, ValueError):
        pass


def last_store() -> Path | None:
    """The store the last run from this working folder wrote, if it still exists."""
    try:
        known = json.loads(_record_path().read_text())
        path = Path(known[str(Path.cwd().resolve())])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return path if path.is_file() else None


def _shown(path: Path) -> str:
    """``path`` relative to the working folder where it is inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def known_stores() -> list[tuple[str, str]]:
    """The stores that exist, as (path as shown, what it is), most relevant first: the last run's, the
    default of ``run``/``sweep``, the quickstart's, the committed reference."""
    found: list[tuple[str, str]] = []
    seen: set[Path] = set()
    candidates = [
        (last_store(), "the last run's store"),
        (Path(DEFAULT_STORE), "dsbench run / sweep"),
        (Path(QUICKSTART_STORE), "dsbench quickstart"),
        (Path(REFERENCE_STORE), "the committed reference quickstart"),
    ]
    for path, what in candidates:
        if path is None or not path.is_file() or path.resolve() in seen:
            continue
        seen.add(path.resolve())
        found.append((_shown(path), what))
    return found


def find_store(given: str | Path | None) -> tuple[str, str | None]:
    """The store a read-only command reads: ``given`` (``--store``) as it is, else the first of
    :func:`known_stores`. Returns (path, a one-line note naming the other stores and how to choose, or None).
    No store anywhere: a StoreError saying how to make one. Never creates a file."""
    if given is not None:
        return str(given), None
    stores = known_stores()
    if not stores:
        raise StoreError(
            f"store: no results database found (looked for the last run's, {DEFAULT_STORE}, {QUICKSTART_STORE} "
            f"and {REFERENCE_STORE}); run `dsbench quickstart` or `dsbench run FILE` first, or pass --store"
        )
    (path, what), others = stores[0], stores[1:]
    note = f"reading {path} ({what})"
    if others:
        note += "; other stores: " + ", ".join(f"{p} ({w})" for p, w in others) + "; choose one with --store"
    return path, note
