"""Sweeps (``dsbench sweep FILE``): many experiments from one base, as a grid or an Optuna study.

A sweep file names a base experiment (a file, or the experiment inline) and either a grid or a study::

    name: toca-ratio
    experiment: quickstart.yaml               # relative to this file; or an inline mapping
    grid:                                     # one experiment per point
      methods.toca.ratio: [0.2, 0.4, 0.6]     # methods.<name>.<param> sets that method's params
      methods.fora.interval: [2, 3]           # another method's axis varies on its own: 3 + 2 points, not 3 × 2
      seeds: [0, 1]                           # any other experiment field by its dotted path (crossed with all)
    # or
    optuna:
      space: {methods.toca.ratio: {type: float, low: 0.1, high: 0.9}}
      objectives: [{metric: lpips_alex, direction: minimize}, {metric: macs_ratio, direction: minimize}]
      n_trials: 20
      sampler: nsga2                          # tpe | random | nsga2
      storage: null                           # default: SQLite file next to the results store
      study_name: null                        # default: the sweep's name

Each method has its own grid: the product of its own axes crossed with the other fields' axes, and a point
runs that method alone (the methods no axis names run once per point of the other fields). Points and trials
are numbered ("point 3/8", "trial 5/20") in the log lines and in the sweep's table; a point whose runs are all
stored is said to be reused (and starts no progress bar). A study's float parameters are rounded
(:func:`rounded`) before they run.

Every point (grid) or trial (study) is an ordinary experiment run by :func:`dsbench.runner.run_experiment`
into the results store, so the run identity makes a rerun skip what is stored (``force`` reruns it).
``workers`` processes share the work: grid points are dealt round-robin; study workers count COMPLETE
and RUNNING trials and ask for a new one inside one cross-process lock, so together they finish exactly
``n_trials``. A RUNNING trial whose worker died (its process is gone on this host, or its heartbeat is
older than :data:`STALE_AFTER` on another host) is marked FAIL and its parameters enqueued again, so the
study still ends with ``n_trials`` COMPLETE trials and the interrupted run is picked up where it stopped.
The parent reports a dead worker in one line; when the others still completed the sweep it prints the table,
otherwise it ends with a one-line error saying to rerun the same command (every finished run is stored).
The store, its folder and the study storage are opened before any worker starts, so a path or URL that
cannot work (a parent that is a file, an unwritable folder, a damaged database, an in-memory database that
would lose the study) is a one-line ValueError before any sampling.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
import logging
import math
import os
import socket
import sqlite3
import threading
import time
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic

from dsbench import experiment, report, runner
from dsbench.store import COLUMNS, Store
from dsbench.tracking import Tracker
from dsbench.validation import read_yaml, schema_errors

log = logging.getLogger("dsbench.sweep")
STALE_AFTER = 600.0  # seconds without heartbeat after which another host's RUNNING trial counts as dead
HEARTBEAT = 30.0  # seconds between a running trial's heartbeats
_LIST_FIELDS = ("models", "seeds", "metrics")  # a scalar swept into a list field means a one-element list


class _Strict(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)


class FloatParam(_Strict):
    type: Literal["float"]
    low: float = pydantic.Field(..., allow_inf_nan=False)
    high: float = pydantic.Field(..., allow_inf_nan=False)
    log: bool = pydantic.Field(False, description="sample on a log scale (low > 0)")
    step: float | None = pydantic.Field(None, gt=0, allow_inf_nan=False, description="discretisation step > 0")


class IntParam(_Strict):
    type: Literal["int"]
    low: int
    high: int
    step: int = pydantic.Field(1, ge=1, description="step >= 1")
    log: bool = pydantic.Field(False, description="sample on a log scale (low >= 1)")


class CategoricalParam(_Strict):
    type: Literal["categorical"]
    choices: list[Any] = pydantic.Field(..., min_length=1, description="values to choose from")


Param = Annotated[FloatParam | IntParam | CategoricalParam, pydantic.Field(discriminator="type")]


class Objective(_Strict):
    metric: str = pydantic.Field(
        ..., min_length=1, description="a numeric column of the runs (lpips_alex, macs_ratio, speedup, ...)"
    )
    direction: Literal["minimize", "maximize"]


class Study(_Strict):
    space: dict[str, Param] = pydantic.Field(..., min_length=1, description="{field path: search space}")
    objectives: list[Objective] = pydantic.Field(..., min_length=1, description="metrics to optimise")
    n_trials: int = pydantic.Field(..., ge=1, description="COMPLETE trials the study ends with, >= 1")
    sampler: Literal["tpe", "random", "nsga2"] = "tpe"
    seed: int = pydantic.Field(0, ge=0, le=2**31 - 1, description="sampler seed, 0 <= seed < 2**31")
    storage: str | None = pydantic.Field(
        None, min_length=1, description="RDB URL (default: SQLite file next to the store)"
    )
    study_name: str | None = pydantic.Field(None, min_length=1, description="study name (default: the sweep's name)")


class Sweep(_Strict):
    name: str = pydantic.Field(..., min_length=1, description="sweep name (default: the file name)")
    experiment: str | dict[str, Any] = pydantic.Field(..., description="base experiment file, or inline experiment")
    grid: dict[str, list[Any]] | None = pydantic.Field(
        None,
        description="{field path: [values]}; each method runs its own axes (methods.<name>.<param>) crossed "
        "with the other fields' axes, never once per value of another method's axis",
    )
    optuna: Study | None = None

    @pydantic.model_validator(mode="after")
    def _one_kind(self):
        if (self.grid is None) == (self.optuna is None):
            raise ValueError("give exactly one of `grid` and `optuna`")
        if self.grid is not None and not self.grid:
            raise ValueError("`grid` needs at least one field path with its values")
        for path, values in (self.grid or {}).items():
            if not values:
                raise ValueError(f"grid.{path!s:.200}: needs at least one value")
        for path, p in (self.optuna.space if self.optuna else {}).items():
            where = f"optuna.space.{path!s:.200}"
            if p.type == "categorical":
                bad = [c for c in p.choices if c is not None and not isinstance(c, (bool, int, float, str))]
                if bad:  # optuna stores choices as JSON scalars
                    raise ValueError(
                        f"{where}: choices must be numbers, strings, booleans or null; got {bad[0]!r:.200}"
                    )
                continue
            if p.low > p.high:
                raise ValueError(f"{where}: low {p.low} is above high {p.high}")
            if p.log and p.low <= (0 if p.type == "float" else 0.5):
                raise ValueError(f"{where}: log: true needs low {'> 0' if p.type == 'float' else '>= 1'}, got {p.low}")
            if p.log and (p.step or 1) != 1:
                raise ValueError(f"{where}: log: true does not combine with step {p.step}; remove one")
            if p.step is not None and not math.isclose(
                round((p.high - p.low) / p.step) * p.step, p.high - p.low, rel_tol=1e-9, abs_tol=1e-12
            ):
                raise ValueError(f"{where}: high - low ({p.high} - {p.low}) is not a multiple of step {p.step}")
        return self


class SweepSpec:
    """A loaded sweep: the schema, the base experiment's data, and the experiment of each assignment."""

    def __init__(self, sweep: Sweep, base: dict, source: str):
        self.sweep, self.base, self.source = sweep, base, source

    @property
    def fields(self) -> list[str]:
        return list(self.sweep.grid or self.sweep.optuna.space)

    def experiment_for(self, assignment: dict[str, Any]) -> experiment.Experiment:
        """The base experiment with ``assignment`` ({field path: value}) applied, validated. A grid point that
        sets a method's fields runs that method alone; with method axes in the grid, a point that sets none
        runs the methods no axis names (each method has its own grid: :meth:`points`)."""
        data = copy.deepcopy(self.base)
        for path, value in assignment.items():
            _assign(data, path, value, self.source)
        keep = self._methods_of(assignment)
        if keep is not None:
            data["methods"] = [e for i, e in enumerate(data["methods"]) if i in keep]
        data["name"] = self.sweep.name
        point = ", ".join(f"{k}={v!r}" for k, v in assignment.items())
        return experiment.parse(data, f"{self.source} (point {point})")

    def _method_axes(self) -> dict[int, list[str]]:
        """{method entry index: its grid axes} (entries by name or position, in file order)."""
        out: dict[int, list[str]] = {}
        for path in self.sweep.grid or {}:
            if path.split(".")[0] == "methods":
                out.setdefault(_method_index(self.base.get("methods"), path, self.source), []).append(path)
        return out

    def _methods_of(self, assignment: dict[str, Any]) -> set[int] | None:
        """Indices of the method entries a grid point runs; None: all of them (no method axes, or a study)."""
        axes = self._method_axes()
        if not axes:
            return None
        mine = {i for i, paths in axes.items() if any(p in assignment for p in paths)}
        return mine or set(range(len(self.base["methods"]))) - set(axes)

    def points(self) -> list[dict[str, Any]]:
        """Grid assignments (the last field varies fastest). Axes of different methods vary independently: the
        methods no axis names run once per value of the other axes (seeds, steps, eval.size, ...); then each swept
        method, in the base's order, once per point of its own axes crossed with those other axes. So
        ``methods.toca.ratio: [a, b]`` with ``methods.fora.interval: [c, d]`` is four points, not four of each."""
        grid = self.sweep.grid
        axes = self._method_axes()
        common = [p for p in grid if p.split(".")[0] != "methods"]
        groups = []
        if not axes or set(range(len(self.base["methods"]))) - set(axes):
            groups.append(common)  # no method axes: every method; else the methods no axis names
        groups += [[p for p in grid if p in common or p in axes[i]] for i in sorted(axes)]
        return [dict(zip(g, values)) for g in groups for values in itertools.product(*(grid[p] for p in g))]

    def study_name(self) -> str:
        return self.sweep.optuna.study_name or self.sweep.name

    def storage_url(self, store_path: str | Path, storage: str | None = None) -> str:
        """``storage`` (the command line's), else the file's, else ``<store>-optuna.db`` next to the store."""
        url = storage or self.sweep.optuna.storage
        if url is None:
            store = Path(store_path)
            url = f"sqlite:///{store.with_name(store.stem + '-optuna.db').resolve()}"
        return url


# -- loading and validation -------------------------------------------------------------------------------
def _assign(data: dict, path: str, value: Any, source: str) -> None:
    """Set the experiment field at dotted ``path``; ``methods.<name>.<param>`` is that method entry's param
    (``methods.<name>.models.<model>.<param>`` its per-model override, ``methods.<i>...`` by position)."""
    parts = path.split(".")
    if parts[0] == "methods":
        entries = data.get("methods")
        index = _method_index(entries, path, source)
        entry = entries[index] = dict(entries[index])
        rest = parts[2:] if parts[2] in ("params", "models") else ["params", *parts[2:]]
        _set(entry, rest, value)
        return
    allowed = [*experiment.Experiment.model_fields, "model"]
    if parts[0] not in allowed:
        raise ValueError(
            f"{source}: field path {path!r}: unknown experiment field {parts[0]!r}; allowed: {', '.join(allowed)}"
        )
    if len(parts) == 1 and parts[0] in _LIST_FIELDS and not isinstance(value, list):
        value = [value]
    _set(data, parts, value)


def _method_index(entries: Any, path: str, source: str) -> int:
    """The index of the method entry that field path ``methods.<name or index>.<param>`` names."""
    parts = path.split(".")
    if not isinstance(entries, list):
        raise ValueError(
            f"{source}: field path {path!r}: the base experiment's methods must be a list of "
            f"entries (not {entries!r}) to sweep a method parameter"
        )
    if len(parts) < 3:
        raise ValueError(f"{source}: field path {path!r}: write methods.<method>.<param>")
    names = [e.get("name") if isinstance(e, dict) else None for e in entries]
    if parts[1].isdigit() and int(parts[1]) < len(entries):
        return int(parts[1])
    if names.count(parts[1]) == 1:
        return names.index(parts[1])
    if parts[1] in names:
        raise ValueError(
            f"{source}: field path {path!r}: method {parts[1]!r} appears {names.count(parts[1])} "
            f"times; name the entry by position (methods.<index>.<param>)"
        )
    raise ValueError(
        f"{source}: field path {path!r}: no method entry {parts[1]!r}; "
        f"allowed: {', '.join(map(str, names))} (or an index)"
    )


def _set(data: dict, parts: list[str], value: Any) -> None:
    for part in parts[:-1]:
        child = data.get(part)
        data[part] = child = dict(child) if isinstance(child, dict) else {}
        data = child
    data[parts[-1]] = value


_BRANCH_LABELS = ("float", "int", "categorical", "str", "dict[str,any]")


def _allowed_fields(loc: tuple) -> list[str]:
    """The fields allowed where an unknown field ``loc`` was found."""
    if "space" in loc[:-1]:  # space.<name>.<type>.<field>: the parameter class of that type
        kinds = {"float": FloatParam, "int": IntParam, "categorical": CategoricalParam}
        return list(kinds.get(loc[-2] if len(loc) > 1 else "", FloatParam).model_fields)
    sections = {"optuna": Study, "objectives": Objective}
    return list(next((sections[p] for p in reversed(loc[:-1]) if p in sections), Sweep).model_fields)


def _explain(e: dict, where: str) -> str | None:
    if e["type"] == "union_tag_invalid":
        return f"field {where!r}: type must be one of float, int, categorical (got {e.get('input', {}).get('type')!r})"
    return None


def _schema_errors(source: str, err: pydantic.ValidationError) -> str:
    return schema_errors(source, err, _allowed_fields, branch_labels=lambda p: p in _BRANCH_LABELS, explain=_explain)


def _one_line(text: str) -> str:
    """Error messages are one line: several problems are joined with "; "."""
    return "; ".join(line.strip() for line in str(text).splitlines() if line.strip()) or "invalid sweep"


def parse(data: Any, source: str = "<sweep>", default_name: str | None = None, root: Path | None = None) -> SweepSpec:
    """A validated sweep from parsed YAML: the schema, the base experiment, and every point (grid) or both
    ends of every range (study) turned into a valid experiment; a one-line ValueError naming file, field and
    allowed values (also for errors of the base experiment or of one point)."""
    try:
        return _parse(data, source, default_name, root)
    except (ValueError, TypeError) as err:  # pydantic's ValidationError is a ValueError
        raise ValueError(_one_line(str(err))) from None


def _parse(data: Any, source: str, default_name: str | None, root: Path | None) -> SweepSpec:
    if not isinstance(data, dict):
        raise ValueError(
            f"{source}: a sweep file must be a mapping of fields, got {type(data).__name__}; "
            f"allowed fields: {', '.join(Sweep.model_fields)}"
        )
    data = dict(data)
    if default_name and "name" not in data:
        data["name"] = default_name
    try:
        sweep = Sweep.model_validate(data)  # not Sweep(**data): a YAML key may be a number
    except pydantic.ValidationError as err:
        raise ValueError(_schema_errors(source, err)) from None
    if isinstance(sweep.experiment, str):
        path = Path(sweep.experiment)
        candidates = [path] if path.is_absolute() else [(root or Path.cwd()) / path, path]
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            raise ValueError(
                f"{source}: field 'experiment': experiment file {sweep.experiment} does not exist "
                f"(looked in {', '.join(str(c) for c in candidates)})"
            )
        try:
            base = read_yaml(found, "experiment")
        except ValueError as err:
            raise ValueError(f"{source}: field 'experiment': {_one_line(str(err))}") from None
        experiment.parse(base, f"{found} (the base experiment of {source})", default_name=found.stem)
        base = dict(base)
    else:
        base = dict(sweep.experiment)
        experiment.parse({"name": sweep.name, **base}, f"{source}: field 'experiment'")
    spec = SweepSpec(sweep, base, source)
    if sweep.grid is not None:
        for point in spec.points():
            spec.experiment_for(point)
    else:
        for path, p in sweep.optuna.space.items():
            for value in p.choices if p.type == "categorical" else (p.low, p.high):
                spec.experiment_for({path: value})
        _check_distributions(spec)
    return spec


def _check_distributions(spec: SweepSpec) -> None:
    """Optuna accepts every search space as given (a warning it would act on is an error here)."""
    for path in spec.sweep.optuna.space:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                _distributions(spec.sweep.optuna, only=path)
        except (ValueError, TypeError, UserWarning) as err:
            raise ValueError(f"{spec.source}: field 'optuna.space.{path}': {_one_line(str(err))}") from None


def load(path: str | Path) -> SweepSpec:
    """Read and validate a sweep file (its name defaults to the file's stem)."""
    path = Path(path)
    return parse(read_yaml(path, "sweep"), str(path), default_name=path.stem, root=path.parent)


# -- running ------------------------------------------------------------------------------------------------
class SweepIncomplete(ValueError):
    """Workers ended before the sweep was complete; every finished run is stored and the same command resumes."""


def run(
    spec: SweepSpec,
    store_path: str | Path,
    *,
    workers: int = 1,
    storage: str | None = None,
    force: bool = False,
    wandb: bool = True,
    progress: bool = True,
) -> None:
    """Run the sweep into the store at ``store_path`` with ``workers`` local processes (1: this process).

    The store and the study storage are opened here first, so a path or URL that cannot work is a one-line
    ValueError before any sampling. A worker that dies is reported (one warning line each); if the others
    completed the sweep anyway this returns normally, else :class:`SweepIncomplete` says to rerun."""
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    _open_store(store_path)
    url = spec.storage_url(store_path, storage) if spec.sweep.optuna else None
    if url is not None:
        _open_storage(spec, url)  # create the study (and check it is this sweep's) before any worker starts
    if workers == 1:
        _work(spec, str(store_path), url, 0, 1, force, wandb, progress)
        _summarise(spec, store_path, storage, wandb)
        return
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    pipes = [context.Pipe(duplex=False) for _ in range(workers)]
    procs = [
        context.Process(target=_worker_main, args=(spec, str(store_path), url, i, workers, force, wandb, send))
        for i, (_, send) in enumerate(pipes)
    ]
    # the workers identify runs by the code the sweep started with, even if files change while it runs
    before = os.environ.get(runner.CODE_VERSION_ENV)
    os.environ[runner.CODE_VERSION_ENV] = runner.code_version()
    try:
        for p, (_, send) in zip(procs, pipes):
            p.start()
            send.close()  # the worker holds the only write end: a dead worker reads as end of file
    finally:
        if before is None:
            os.environ.pop(runner.CODE_VERSION_ENV)
        else:
            os.environ[runner.CODE_VERSION_ENV] = before
    for p in procs:
        p.join()
    failed, errors = [], []
    for i, (p, (receive, _)) in enumerate(zip(procs, pipes)):
        message = None
        with contextlib.suppress(EOFError, OSError):
            if receive.poll():
                message = receive.recv()
        receive.close()
        if p.exitcode == 0:
            continue
        how = (
            f"was killed by signal {_signal_name(-p.exitcode)}" if p.exitcode < 0 else f"exited with code {p.exitcode}"
        )
        failed.append(f"worker {i} (pid {p.pid}) {how}")
        log.warning(
            "sweep %s: worker %d (pid %d) %s%s", spec.sweep.name, i, p.pid, how, f": {message}" if message else ""
        )
        if message and message not in errors:
            errors.append(message)
    if not failed:
        _summarise(spec, store_path, storage, wandb)
        return
    if errors:  # an error of the sweep itself (every worker would meet it again): say what it is
        more = f" (and {len(errors) - 1} other worker error(s) above)" if len(errors) > 1 else ""
        raise ValueError(errors[0] + more)
    done, total, unit = _progress(spec, store_path, url)
    if done >= total:
        log.warning(
            "sweep %s: %s, but the sweep is complete (%d of %d %s); its table follows",
            spec.sweep.name,
            "a worker died" if len(failed) == 1 else f"{len(failed)} workers died",
            done,
            total,
            unit,
        )
        _summarise(spec, store_path, storage, wandb)
        return
    raise SweepIncomplete(
        f"sweep {spec.sweep.name}: {'; '.join(failed)}; {done} of {total} {unit} complete (every "
        f"finished run is in {store_path}); rerun the same command to resume"
    )


def _summarise(spec: SweepSpec, store_path: str | Path, storage: str | None, wandb: bool) -> None:
    """One W&B run (job_type "sweep-summary") holding the whole sweep's table, once the sweep is complete."""
    if not wandb:
        return
    import pandas as pd

    try:
        records = table(spec, store_path, storage).records()
    except ValueError as err:  # the table cannot be read: the runs are stored, only the mirror is missing
        log.warning("sweep %s: no W&B summary (%s)", spec.sweep.name, err)
        return
    config = {"kind": "grid" if spec.sweep.grid is not None else "study", "fields": spec.fields}
    if spec.sweep.grid is not None:
        config["points"] = len(spec.points())
    else:
        config["trials"] = spec.sweep.optuna.n_trials
    Tracker(dir=Path(store_path).parent).sweep_summary(spec.sweep.name, pd.DataFrame(records), config)


def _signal_name(number: int) -> str:
    import signal

    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def _progress(spec: SweepSpec, store_path: str | Path, url: str | None) -> tuple[int, int, str]:
    """(done, total, unit): COMPLETE trials of a study, stored runs of a grid."""
    if url is not None:
        import optuna

        with _storage_errors(url):
            study = optuna.load_study(study_name=spec.study_name(), storage=url)
            done = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
        return done, spec.sweep.optuna.n_trials, "trials"
    with Store(store_path) as store:
        ids = [rid for point in spec.points() for _, rid in run_ids(spec.experiment_for(point))]
        return sum(store.has(rid) for rid in ids), len(ids), "runs"


def _open_store(store_path: str | Path) -> None:
    """Create the store's folder and open it once: a path that cannot hold a store is a one-line ValueError."""
    if str(store_path) == ":memory:":
        raise ValueError(
            "--store :memory: would lose every run of the sweep (each process has its own); "
            "give a file, e.g. results/dsbench.db"
        )
    path = Path(store_path)
    _make_folder(path.parent, f"--store {path}")
    try:
        Store(path).close()
    except OSError as err:
        raise ValueError(
            f"--store {path}: cannot create it ({err.strerror or err}); give a path in a writable folder"
        ) from None
    except sqlite3.OperationalError as err:
        raise ValueError(f"--store {path}: cannot open or write it ({err}); give a path in a writable folder") from None
    except sqlite3.DatabaseError as err:
        raise ValueError(
            f"--store {path}: not a results database ({err}); move it aside or give another --store"
        ) from None


def _make_folder(folder: Path, what: str) -> None:
    """Create ``folder`` (and its parents); one-line ValueError naming ``what`` when it cannot be."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
        why = f"{blocker} is a file, not a folder" if blocker else (err.strerror or str(err))
        raise ValueError(
            f"{what}: cannot create its folder {folder} ({why}); give a path in a writable folder"
        ) from None


@contextlib.contextmanager
def _storage_errors(url: str):
    """Errors of the Optuna storage itself (unreachable, unwritable, not a database) as one-line ValueErrors."""
    import optuna
    import sqlalchemy

    try:
        yield
    except (
        sqlalchemy.exc.SQLAlchemyError,
        sqlite3.Error,
        optuna.exceptions.OptunaError,
        ImportError,
        OSError,
        RuntimeError,
    ) as err:
        cause = _one_line(str(getattr(err, "orig", None) or err))
        raise ValueError(
            f"Optuna storage {url}: cannot use it ({cause}); give --storage (or optuna.storage) "
            "a writable database, or move a damaged file aside (the runs in the store are kept "
            "and skipped)"
        ) from None


def _open_storage(spec: SweepSpec, url: str) -> None:
    """Check the storage URL, create a SQLite file's folder, create the study and its lock."""
    import sqlalchemy

    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise ValueError(f"Optuna storage {url!r}: not a database URL; give e.g. sqlite:///results/study.db") from None
    if parsed.get_backend_name() == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            raise ValueError(
                f"Optuna storage {url!r} is in memory: the study would be lost (and workers could not "
                "share it); give a file, e.g. sqlite:///results/study.db"
            )
        _make_folder(Path(parsed.database).parent, f"Optuna storage {url}")
    with _storage_errors(url):
        _study(spec, url)
        with trial_lock(url, spec.study_name()):
            pass


def _worker_main(
    spec: SweepSpec, store_path: str, url: str | None, worker: int, workers: int, force: bool, wandb: bool, errors=None
) -> None:
    """One worker process: an error of the sweep (ValueError, TypeError) goes to the parent as one line
    through ``errors`` and ends the worker with exit code 2, with no traceback."""
    import torch

    torch.set_num_threads(1)  # the workers share the machine's cores
    logging.basicConfig(level=logging.INFO, format=f"[worker {worker}] %(message)s")
    try:
        _work(spec, store_path, url, worker, workers, force, wandb, progress=False)
    except (ValueError, TypeError) as err:
        if errors is not None:
            errors.send(_one_line(str(err))[:4000])
        raise SystemExit(2) from None
    except KeyboardInterrupt:  # Ctrl-C reaches every worker: the parent alone says how to resume
        raise SystemExit(130) from None
    finally:
        if errors is not None:
            errors.close()


def _work(
    spec: SweepSpec,
    store_path: str,
    url: str | None,
    worker: int,
    workers: int,
    force: bool,
    wandb: bool,
    progress: bool,
) -> None:
    store = Store(store_path)
    tracker = Tracker(dir=Path(store_path).parent) if wandb else None
    try:
        if url is None:
            _grid(spec, store, worker, workers, force, tracker, progress)
            return
        _optimise(spec, store, url, worker, force, tracker, progress)
    finally:
        store.close()


def _stored(exp: experiment.Experiment, store, force: bool) -> int | None:
    """How many runs of ``exp`` the store already has when it has all of them (and not ``force``); else None."""
    ids = [rid for _, rid in run_ids(exp)]
    return len(ids) if not force and ids and all(store.has(rid) for rid in ids) else None


def _run_point(exp, store, force: bool, tracker, progress: bool, what: str, context: dict) -> bool:
    """Run one grid point or trial (an experiment); True when every run was already stored (reused)."""
    reused = _stored(exp, store, force)
    if reused is not None:
        log.info("%s: reused (its %d run(s) are already stored)", what, reused)
    else:
        log.info("%s", what)
    if tracker is not None:
        tracker.context = context  # the sweep's point or trial in each run's config; one summary per sweep
    # a reused point starts no bar of its own: nothing runs, so it would only show a meaningless rate
    runner.run_experiment(exp, store, force=force, tracker=tracker, progress=progress and reused is None)
    return reused is not None


def _grid(spec: SweepSpec, store, worker: int, workers: int, force: bool, tracker, progress: bool) -> None:
    points = spec.points()
    reused = 0
    for i, point in enumerate(points):
        if i % workers != worker:
            continue
        context = {"name": spec.sweep.name, "kind": "grid", "point": i + 1, "points": len(points), "values": point}
        text = f"point {i + 1}/{len(points)}: {point_label(point)}"
        reused += _run_point(spec.experiment_for(point), store, force, tracker, progress, text, context)
    if reused:
        log.info("sweep %s: %d point(s) reused from the store", spec.sweep.name, reused)


def point_label(point: dict[str, Any]) -> str:
    """``methods.toca.ratio=0.3, seeds=1``: numbers to at most 4 significant digits."""
    return ", ".join(f"{k}={_short(v)}" for k, v in point.items())


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def rounded(study: Study, params: dict[str, Any]) -> dict[str, Any]:
    """A trial's parameters as the sweep runs them: a float on a ``step`` grid without the binary noise
    (0.30000000000000004 is 0.3), any other float to 3 significant digits (inside ``low``..``high``), so runs,
    labels and tables show 0.437, not 0.43719283746151; trials that round alike share their runs."""
    out = dict(params)
    for path, value in params.items():
        p = study.space.get(path)
        if p is None or p.type != "float" or not isinstance(value, float):
            continue
        if p.step is not None:
            value = p.low + round((value - p.low) / p.step) * p.step
            out[path] = min(max(float(f"{value:.12g}"), p.low), p.high)
        else:
            out[path] = min(max(float(f"{value:.3g}"), p.low), p.high)
    return out


def _distributions(study: Study, only: str | None = None) -> dict:
    import optuna.distributions as d

    out = {}
    for path, p in study.space.items():
        if only is not None and path != only:
            continue
        if p.type == "float":
            out[path] = d.FloatDistribution(p.low, p.high, log=p.log, step=p.step)
        elif p.type == "int":
            out[path] = d.IntDistribution(p.low, p.high, log=p.log, step=p.step)
        else:
            out[path] = d.CategoricalDistribution(p.choices)
    return out


def _study(spec: SweepSpec, url: str, seed_offset: int = 0):
    """The sweep's study in ``url`` (created when missing; a study of another sweep is an error)."""
    import optuna

    cfg = spec.sweep.optuna
    seed = cfg.seed + seed_offset
    sampler = {
        "tpe": lambda: optuna.samplers.TPESampler(seed=seed),
        "random": lambda: optuna.samplers.RandomSampler(seed=seed),
        "nsga2": lambda: optuna.samplers.NSGAIISampler(seed=seed),
    }[cfg.sampler]()
    kwargs = {"engine_kwargs": {"connect_args": {"timeout": 600}}} if url.startswith("sqlite") else {}
    storage = optuna.storages.RDBStorage(url, **kwargs)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        storage=storage,
        study_name=spec.study_name(),
        sampler=sampler,
        load_if_exists=True,
        directions=[o.direction for o in cfg.objectives],
    )
    identity = json.loads(
        json.dumps(
            {
                "space": {k: v.model_dump() for k, v in cfg.space.items()},
                "objectives": [o.model_dump() for o in cfg.objectives],
            },
            default=str,
        )
    )
    stored = study.user_attrs.get("sweep")
    if stored is None:
        study.set_user_attr("sweep", identity)
        with warnings.catch_warnings():  # experimental since optuna 3.2; only names the values in optuna's views
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([o.metric for o in cfg.objectives])
    elif stored != identity:
        raise ValueError(
            f"study {spec.study_name()!r} in {url} holds a different sweep ({stored}); "
            f"give optuna.study_name another name"
        )
    return study


@contextlib.contextmanager
def trial_lock(url: str, study_name: str):
    """A cross-process lock around "count trials and create one": a write transaction (BEGIN IMMEDIATE) on a
    SQLite file next to a SQLite storage (the storage's own file must stay writable for optuna); for other
    databases ``SELECT ... FOR UPDATE`` on a row of a ``dsbench_sweep_lock`` table in the same database."""
    import sqlalchemy

    parsed = sqlalchemy.engine.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        conn = sqlite3.connect(f"{parsed.database}.lock", timeout=3600, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")  # released by COMMIT, or by the OS if this process dies
            try:
                yield
            finally:
                conn.execute("COMMIT")
        finally:
            conn.close()
        return
    engine = sqlalchemy.create_engine(url)
    lock = sqlalchemy.text("SELECT study FROM dsbench_sweep_lock WHERE study = :s FOR UPDATE")
    try:
        with engine.begin() as conn:
            conn.execute(
                sqlalchemy.text("CREATE TABLE IF NOT EXISTS dsbench_sweep_lock (study VARCHAR(512) PRIMARY KEY)")
            )
            if conn.execute(lock.bindparams(s=study_name)).first() is None:
                conn.execute(sqlalchemy.text("INSERT INTO dsbench_sweep_lock (study) VALUES (:s)"), {"s": study_name})
        with engine.begin() as conn:
            conn.execute(lock.bindparams(s=study_name))
            yield
    finally:
        engine.dispose()


def _alive(pid: int) -> bool:
    """A process of this host that runs (a zombie, killed but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def is_stale(trial, now: float) -> bool:
    """Whether a RUNNING trial's worker is gone: it never named itself, its process on this host has exited, or
    (another host) its last heartbeat is older than ``STALE_AFTER`` seconds at time ``now``."""
    worker = trial.user_attrs.get("worker")
    if worker is None:  # the worker died between creating the trial and naming itself (both under the lock)
        return True
    if worker["host"] == socket.gethostname():
        return not _alive(worker["pid"])
    return now - trial.user_attrs.get("heartbeat", worker["started"]) > STALE_AFTER


def fail_stale_trials(study) -> list[int]:
    """Mark RUNNING trials of dead workers FAIL and enqueue their parameters again; their numbers."""
    import optuna

    failed = []
    now = time.time()
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if is_stale(trial, now):
            study._storage.set_trial_user_attr(trial._trial_id, "stale", True)
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
            if trial.params:
                study.enqueue_trial(trial.params)
            failed.append(trial.number)
    if failed:
        log.warning("trials %s of a dead worker marked FAIL; their parameters are asked again", failed)
    return failed


@contextlib.contextmanager
def _heartbeat(study, trial_id: int):
    stop = threading.Event()

    def beat():
        while not stop.wait(HEARTBEAT):
            with contextlib.suppress(Exception):  # a missed beat only makes the trial look older
                study._storage.set_trial_user_attr(trial_id, "heartbeat", time.time())

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _optimise(spec: SweepSpec, store, url: str, worker: int, force: bool, tracker, progress: bool) -> None:
    import optuna

    cfg = spec.sweep.optuna
    study = _study(spec, url)
    # a seed per worker and per resume, so workers and reruns do not replay one another's samples
    study = _study(spec, url, seed_offset=1000 * worker + len(study.trials))
    counted = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING)
    distributions = _distributions(cfg)
    reused = 0
    while True:
        with trial_lock(url, study.study_name):
            fail_stale_trials(study)
            taken = len(study.get_trials(deepcopy=False, states=counted))
            if taken >= cfg.n_trials:
                break
            trial = study.ask(distributions)
            position = taken + 1  # its place among the n_trials the study ends with
            trial.set_user_attr("worker", {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()})
            trial.set_user_attr("position", position)
        reused = _trial(spec, study, trial, position, store, force, tracker, progress, reused)
    if reused:
        log.info("sweep %s: %d trial(s) reused stored runs", spec.sweep.name, reused)


def _trial(spec: SweepSpec, study, trial, position: int, store, force: bool, tracker, progress: bool, reused: int):
    """Run one asked trial and tell the study its objective values; the count of reused trials."""
    import optuna

    cfg = spec.sweep.optuna
    try:
        with _heartbeat(study, trial._trial_id):
            params = rounded(cfg, trial.params)
            exp = spec.experiment_for(params)
            context = {
                "name": spec.sweep.name,
                "kind": "study",
                "trial": position,
                "trials": cfg.n_trials,
                "optuna_trial": trial.number,
                "values": params,
            }
            what = f"trial {position}/{cfg.n_trials} (optuna #{trial.number}): {point_label(params)}"
            reused += _run_point(exp, store, force, tracker, progress, what, context)
            values = objective_values(spec, exp, store)
    except BaseException:
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        raise
    study.tell(trial, values)
    return reused


def run_ids(exp: experiment.Experiment) -> list[tuple[str, str]]:
    """(model, run id) of every run of ``exp``, in the runner's order."""
    return [
        (model, runner.run_id(exp, model, entry, seed))
        for model in exp.models
        for seed in exp.seeds
        for entry in exp.method_entries()
    ]


def objective_values(spec: SweepSpec, exp: experiment.Experiment, store) -> list[float]:
    """Each objective's mean over the runs of ``exp`` in the store (seeds, models, methods)."""
    rows = [store.get(rid) for _, rid in run_ids(exp)]
    if any(r is None for r in rows):
        raise ValueError(
            f"{spec.source}: a run of {exp.name} is not in the store (its method was skipped on a model; "
            "see the log); a study needs every run of a trial"
        )
    values = []
    for obj in spec.sweep.optuna.objectives:
        got = [r.get(obj.metric) for r in rows]
        if any(not isinstance(v, (int, float)) or math.isnan(v) for v in got):
            numeric = sorted(k for k, v in rows[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool))
            raise ValueError(
                f"{spec.source}: field 'optuna.objectives': metric {obj.metric!r} is not a number in "
                f"the runs; allowed: {', '.join(numeric)}"
            )
        values.append(sum(got) / len(got))
    return values


# -- the table ------------------------------------------------------------------------------------------------
def pareto_mask(values: list[list[float]], directions: list[str]) -> list[bool]:
    """True for the points no other point dominates (no worse in every objective, better in one)."""
    signs = [1 if d == "minimize" else -1 for d in directions]
    pts = [[s * v for s, v in zip(signs, row)] for row in values]
    return [
        not any(all(o <= p for o, p in zip(other, point)) and any(o < p for o, p in zip(other, point)) for other in pts)
        for point in pts
    ]


def table(spec: SweepSpec, store_path: str | Path, storage: str | None = None):
    """The sweep's runs from the store (and, for a study, its COMPLETE trials' parameters from the study
    storage): one row per point and run, the swept fields as columns, costs and metrics; a study marks
    its Pareto-optimal trials."""
    import optuna

    with Store(store_path, readonly=True) as store:  # a report never creates a store
        if spec.sweep.grid is not None:
            grid = spec.points()
            points = [(f"{i + 1}/{len(grid)}", point) for i, point in enumerate(grid)]
        else:
            url = spec.storage_url(store_path, storage)
            try:
                with _storage_errors(url):
                    study = optuna.load_study(study_name=spec.study_name(), storage=url)
                    trials = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            except KeyError:
                raise ValueError(f"no study {spec.study_name()!r} in {url}; run `dsbench sweep` first") from None
            n = spec.sweep.optuna.n_trials
            points = [
                (f"{i + 1}/{max(n, len(trials))}", rounded(spec.sweep.optuna, t.params))
                for i, t in enumerate(sorted(trials, key=lambda t: t.number))
            ]
        found = []
        for key, point in points:
            exp = spec.experiment_for(point)
            runs = [store.get(rid) for _, rid in run_ids(exp)]
            found.append((key, point, exp, [r for r in runs if r is not None]))
    rows = [run for *_, runs in found for run in runs]
    metrics = report.metric_columns(_frame(rows))
    pareto = None
    if spec.sweep.optuna is not None:
        objectives = spec.sweep.optuna.objectives
        complete = [
            i
            for i, (*_, runs) in enumerate(found)
            if runs and all(isinstance(r.get(o.metric), (int, float)) for r in runs for o in objectives)
        ]
        means = [[sum(r[o.metric] for r in found[i][3]) / len(found[i][3]) for o in objectives] for i in complete]
        mask = pareto_mask(means, [o.direction for o in objectives])
        pareto = {complete[j] for j, on in enumerate(mask) if on}
    columns = [report.Column("trial" if pareto is not None else "point", report.text)]
    columns += [report.Column(f, report.text) for f in spec.fields]
    columns += [report.Column(c, report.text) for c in ("model", "label")]
    columns += [report.Column("macs_ratio", report.fixed(3)), report.Column("speedup", report.times)]
    brief, detail = ("md", "tex"), ("csv",)
    for m in metrics:
        columns += [
            report.Column(m, report.with_interval(4), brief),
            *(report.Column(f"{m}{suffix}", report.fixed(6), detail) for suffix in ("", "_ci_low", "_ci_high")),
        ]
    if pareto is not None:
        columns.append(report.Column("pareto", report.text))
    body, missing = [], 0
    for i, (key, point, exp, runs) in enumerate(found):
        missing += len(run_ids(exp)) - len(runs)
        for run in runs:
            values = []
            for m in metrics:
                low, high = report.run_interval(run, m)
                values += [(run.get(m), low, high), run.get(m), low, high]
            row = [
                key,
                *(point.get(f) for f in spec.fields),
                run["model"],
                run["label"],
                run.get("macs_ratio"),
                run.get("speedup"),
                *values,
            ]
            if pareto is not None:
                row.append("yes" if i in pareto else "")
            body.append(row)
    notes = ["[low, high]: 95 % bootstrap interval over the run's images (set metrics: over its sample set)."]
    notes += [f"{missing} run(s) of the sweep are not in the store (not run yet, or skipped)."] if missing else []
    if pareto is not None:
        notes.append(
            "pareto yes: no other trial is at least as good in every objective ("
            + ", ".join(f"{o.metric} {o.direction}" for o in objectives)
            + ") and better in one."
        )
    return report.Table(title=f"sweep {spec.sweep.name}", columns=columns, rows=body, notes=notes)


def _frame(rows: list[dict]):
    import pandas as pd

    extra = sorted({k for r in rows for k in r} - set(COLUMNS))
    return pd.DataFrame([{c: r.get(c) for c in (*COLUMNS, *extra)} for r in rows], columns=[*COLUMNS, *extra])
