"""Training files: the schedules an experiment needs, trained by one command.

    dsbench train diffsparse experiments/train_embedded.yaml [--only OUT ...]

A training file lists schedules; each is one ``dsbench.training.diffsparse`` run (model, output folder,
``TrainConfig`` parameters, optional wall-clock budget) and, optionally, its evaluation against the
teacher. ``defaults`` apply to every entry (an entry's ``params`` are merged over the defaults'). The
whole file is validated before any training starts; a finished entry — all its epochs done, or its
``minutes`` used (the budget counts every call's time) — is not retrained: its checkpoint says so and the
schedule is re-exported in seconds. An interrupted one resumes from its checkpoint with the time it had left;
raising an entry's ``minutes`` trains it further.

```yaml
name: train_embedded
threads: 2
defaults: {minutes: 10, evaluate: 32, params: {ratio: 0.5, stages: single}}
schedules:
  - {model: mnist-dit, out: results/diffsparse/mnist-dit}
  - {model: shapes-pixart, out: results/diffsparse/shapes-pixart, params: {lr_scale: 0.03}}
  - {model: shapes-pixart, out: results/paper/r43, match: {method: toca}}   # ToCa's MACs, measured
```

``match`` trains a schedule for exactly the MACs of the method it is compared with (the paper's rows put
DiffSparse at the MACs of ToCa): the budget ``ratio`` becomes 1 − M_lin(method) / M_lin(full), counted on
the model before training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydantic

import dsbench
from dsbench import methods
from dsbench.models import zoo
from dsbench.training.diffsparse import TrainConfig, train_and_evaluate
from dsbench.validation import StrictModel, read_yaml, schema_errors


class Match(StrictModel):
    """The method whose counted MACs set the schedule's budget."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=False)

    method: str = pydantic.Field(description="a registered method name")
    params: dict[str, Any] = pydantic.Field(default_factory=dict, description="its parameters")


class Entry(StrictModel):
    """One schedule: which model, where it goes, how it is trained and evaluated."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=False)

    model: str = pydantic.Field(description="model zoo name with a dit or pixart pipeline")
    out: str = pydantic.Field(description="output folder (schedule.json, log, checkpoint)")
    minutes: float | None = pydantic.Field(None, gt=0, description="wall-clock budget in minutes (> 0) or null")
    evaluate: int = pydantic.Field(0, ge=0, description="held-out conditions for the evaluation table (0: none)")
    params: dict[str, Any] = pydantic.Field(default_factory=dict, description="TrainConfig fields")
    match: Match | None = pydantic.Field(None, description="train for this method's MACs (instead of params.ratio)")


class Defaults(StrictModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=False)

    model: str | None = None
    minutes: float | None = pydantic.Field(None, gt=0)
    evaluate: int = pydantic.Field(0, ge=0)
    params: dict[str, Any] = pydantic.Field(default_factory=dict)
    match: Match | None = None


def _allowed_fields(loc: tuple) -> list[str]:
    return list((Defaults if "defaults" in loc[:-1] else TrainFile).model_fields)


class TrainFile(StrictModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=False)

    name: str
    threads: int = pydantic.Field(2, ge=1, description="torch threads >= 1")
    defaults: Defaults = pydantic.Field(default_factory=Defaults)
    schedules: list[dict[str, Any]] = pydantic.Field(min_length=1, description="schedule entries")


def entries(data: dict, source: str) -> tuple[TrainFile, list[tuple[Entry, TrainConfig]]]:
    """The validated file and, per schedule, its entry and training config (all errors before any work)."""
    if not isinstance(data, dict):
        raise ValueError(f"{source}: a training file is a mapping with fields {', '.join(TrainFile.model_fields)}")
    data = {"name": Path(source).stem, **data}
    try:
        spec = TrainFile(**data)
    except pydantic.ValidationError as err:
        raise ValueError(schema_errors(source, err, _allowed_fields)) from None

    out, seen = [], {}
    for j, raw in enumerate(spec.schedules):
        where = f"{source}: schedules[{j}]"
        base = spec.defaults.model_dump(exclude_none=True)
        merged = {**base, **raw, "params": {**base.get("params", {}), **(raw.get("params") or {})}}
        try:
            entry = Entry(**merged)
        except pydantic.ValidationError as err:
            raise ValueError(schema_errors(where, err, lambda loc: list(Entry.model_fields))) from None
        if entry.model not in zoo.available():
            raise ValueError(
                f"{where}: field 'model': {entry.model!r} is not in the model zoo "
                f"(available: {', '.join(zoo.available())})"
            )
        try:
            config = TrainConfig(**entry.params)
        except pydantic.ValidationError as err:
            raise ValueError(
                schema_errors(f"{where}: params", err, lambda loc: list(TrainConfig.model_fields))
            ) from None
        if entry.match is not None:
            _check_match(entry.match, raw, where)
        key = str(Path(entry.out).resolve())
        if key in seen:
            raise ValueError(f"{where}: field 'out': {entry.out} is also the output of schedules[{seen[key]}]")
        seen[key] = j
        out.append((entry, config))
    return spec, out


def _check_match(match: Match, raw: dict, where: str) -> None:
    if "ratio" in (raw.get("params") or {}):
        raise ValueError(f"{where}: fields 'match' and 'params.ratio' both set the budget; keep one")
    if match.method not in methods.available():
        raise ValueError(
            f"{where}: field 'match.method': unknown method {match.method!r} "
            f"(available: {', '.join(methods.available())})"
        )
    methods.build(match.method, **match.params)  # its own one-line error for a bad parameter


def matched_ratio(bundle, method) -> float:
    """The budget R at which a schedule costs what ``method`` costs on this model: 1 − M_lin(method) /
    M_lin(full), counted on one condition (the MACs of a run do not depend on the condition)."""
    macs = {}
    for name, instance in (("full", methods.build("full")), ("method", method)):
        with dsbench.attach(bundle.pipeline, instance) as handle:
            bundle.sample(bundle.conditions(1, 0), 0)
            macs[name] = handle.report()["macs_cfg_not_counted"]
    return 1.0 - macs["method"] / macs["full"]


def _resolve_budget(entry: Entry, config: TrainConfig, log=print) -> TrainConfig:
    """The entry's config with ``ratio`` set from its ``match`` method's MACs (unchanged without one)."""
    if entry.match is None:
        return config

    ratio = matched_ratio(zoo.load(entry.model), methods.build(entry.match.method, **entry.match.params))
    log(f"  budget: the MACs of {entry.match.method} {entry.match.params or ''} on {entry.model} → R = {ratio:.4f}")
    return config.model_copy(update={"ratio": ratio})


def load(path: str | Path) -> tuple[TrainFile, list[tuple[Entry, TrainConfig]]]:
    return entries(read_yaml(path, "training"), str(path))


def run(path: str | Path, only: list[str] | None = None) -> list[Path]:
    """Train (or resume, or re-export) every schedule of the file, or those whose ``out`` is in ``only``."""
    spec, todo = load(path)
    if only:
        known = {e.out for e, _ in todo}
        unknown = [o for o in only if o not in known]
        if unknown:
            raise ValueError(
                f"--only {', '.join(unknown)}: not an 'out' of {path} (its outputs: {', '.join(sorted(known))})"
            )
        todo = [(e, c) for e, c in todo if e.out in only]
    written = []
    shown = _relative(Path(path))  # the recorded command must not name this machine's folders
    for j, (entry, config) in enumerate(todo, 1):
        budget = f", {entry.minutes:g} min budget" if entry.minutes else ""
        print(f"{shown.stem}: schedule {j}/{len(todo)}: {entry.model} → {entry.out}{budget}", flush=True)
        command = f"dsbench train diffsparse {shown} --only {entry.out}"
        config = _resolve_budget(entry, config)
        written.append(
            train_and_evaluate(
                entry.model,
                Path(entry.out),
                config,
                minutes=entry.minutes,
                threads=spec.threads,
                evaluate_n=entry.evaluate,
                command=command,
            )
        )
    return written


def _relative(path: Path) -> Path:
    """``path`` relative to the working folder when it lies inside it (else as given)."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return path
