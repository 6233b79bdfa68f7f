"""The file-format reference ``docs/reference/files.md``, generated from the pydantic schemas.

Every field of the experiment file (:mod:`dsbench.experiment`), the sweep file (:mod:`dsbench.sweep`) and the
DiffSparse training file (:mod:`dsbench.training.train_file`, with its ``params`` from
:class:`dsbench.training.diffsparse.TrainConfig`) becomes a table row: type, default, allowed values or range,
description. Nested sections get their own tables; each file format gets a short introduction and a real
example copied from ``experiments/``. ``tests/test_schema_docs.py`` fails when the committed page is stale::

    python -m dsbench.schema_docs           # rewrite docs/reference/files.md
    python -m dsbench.schema_docs --check   # exit 1 if it differs from what the schemas give
"""

from __future__ import annotations

import argparse
import json
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import annotated_types
import pydantic
from pydantic.fields import FieldInfo

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "docs" / "reference" / "files.md"
COMMAND = "python -m dsbench.schema_docs"


@dataclass
class Section:
    """One table: the fields of ``model`` found at ``path`` of the file."""

    path: str  # e.g. "eval", "methods[]", "(top level)"
    model: type[pydantic.BaseModel]
    intro: str = ""
    extra: dict[str, str] = field(default_factory=dict)  # field name → allowed values checked outside the schema
    notes: dict[str, str] = field(default_factory=dict)  # field name → description where the schema has none

    @property
    def anchor(self) -> str:
        return anchor_of(self.title)

    @property
    def title(self) -> str:
        name = self.model.__name__
        return f"Top level ({name})" if self.path == "(top level)" else f"`{self.path}` ({name})"


@dataclass
class FileFormat:
    title: str
    intro: str
    examples: list[str]  # paths relative to the repository root
    sections: list[Section]


def anchor_of(title: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    out = []
    for ch in title.lower():
        if ch.isalnum() or ch in "-_":
            out.append(ch)
        elif ch == " ":
            out.append("-")
    return "".join(out)


# -- rendering of types, defaults and constraints ------------------------------------------------------------


def _scalar(value: Any) -> str:
    """A value as it is written in YAML."""
    if isinstance(value, pydantic.BaseModel):
        return "(section defaults)"
    if isinstance(value, tuple):
        value = list(value)
    return json.dumps(value, ensure_ascii=False).replace('"', "") if not isinstance(value, str) else value


def _bound(meta: list) -> str:
    """``[a, b]``, ``(a, b]``, ``≥ a`` … from annotated-types bounds; length limits as ``length …``."""
    lo = hi = None
    lo_open = hi_open = False
    lengths = []
    for m in meta:
        if isinstance(m, annotated_types.Ge):
            lo = m.ge
        elif isinstance(m, annotated_types.Gt):
            lo, lo_open = m.gt, True
        elif isinstance(m, annotated_types.Le):
            hi = m.le
        elif isinstance(m, annotated_types.Lt):
            hi, hi_open = m.lt, True
        elif isinstance(m, annotated_types.MinLen):
            lengths.append(f"length ≥ {m.min_length}")
        elif isinstance(m, annotated_types.MaxLen):
            lengths.append(f"length ≤ {m.max_length}")
    parts = []
    if lo is not None and hi is not None:
        parts.append(f"{'(' if lo_open else '['}{_num(lo)}, {_num(hi)}{')' if hi_open else ']'}")
    elif lo is not None:
        parts.append(f"{'>' if lo_open else '≥'} {_num(lo)}")
    elif hi is not None:
        parts.append(f"{'<' if hi_open else '≤'} {_num(hi)}")
    return ", ".join(parts + lengths)


def _num(value: Any) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def type_name(annotation: Any, links: dict[type, str]) -> str:
    """A readable type: ``int``, ``float | null``, ``list of int in [0, 4 294 967 295]``, a link to a section."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is type(None):
        return "null"
    if annotation is Any:
        return "any"
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return f"[{annotation.__name__}](#{links[annotation]})" if annotation in links else annotation.__name__
    if origin is typing.Annotated:
        inner, *meta = args
        constraint = []
        for m in meta:
            constraint += m.metadata if isinstance(m, FieldInfo) else [m]
        bound = _bound(constraint)
        return type_name(inner, links) + (f" in {bound}" if bound.startswith(("[", "(")) else f" {bound}" * bool(bound))
    if origin is typing.Literal:
        return " \\| ".join(f"`{_scalar(a)}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(type_name(a, links) for a in args)
    if origin is list:
        return f"list of {type_name(args[0], links)}"
    if origin is tuple:
        return f"list of {type_name(args[0], links)}"
    if origin is dict:
        return f"mapping {type_name(args[0], links)} → {type_name(args[1], links)}"
    return getattr(annotation, "__name__", str(annotation))


def default_of(info: FieldInfo) -> str:
    if info.is_required():
        return "required"
    value = info.default_factory() if info.default_factory is not None else info.default
    return f"`{_scalar(value)}`" if not isinstance(value, pydantic.BaseModel) else "its defaults"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def field_rows(section: Section, links: dict[type, str]) -> list[str]:
    rows = ["| field | type | default | allowed | description |", "|---|---|---|---|---|"]
    for name, info in section.model.model_fields.items():
        allowed = [_bound(info.metadata)] if _bound(info.metadata) else []
        if name in section.extra:
            allowed.append(section.extra[name])
        description = info.description or section.notes.get(name, "")
        if not description and _nested(info.annotation):
            description = "a section: see its table"
        rows.append(
            f"| `{name}` | {type_name(info.annotation, links)} | {default_of(info)} | "
            f"{_cell('; '.join(allowed)) or '—'} | {_cell(description)} |"
        )
    return rows


def _nested(annotation: Any) -> bool:
    """Whether ``annotation`` is (or is an optional) pydantic model."""
    candidates = (annotation, *typing.get_args(annotation))
    return any(isinstance(a, type) and issubclass(a, pydantic.BaseModel) for a in candidates)


def render_format(fmt: FileFormat, level: int = 2) -> list[str]:
    links = {s.model: s.anchor for s in fmt.sections}
    lines = [f"{'#' * level} {fmt.title}", "", fmt.intro.strip(), ""]
    for example in fmt.examples:
        lines += [f"Example (`{example}`):", "", "```yaml", (ROOT / example).read_text().rstrip(), "```", ""]
    for section in fmt.sections:
        lines += [f"{'#' * (level + 1)} {section.title}", ""]
        if section.intro:
            lines += [section.intro.strip(), ""]
        elif section.model.__doc__ and section.model.__doc__ is not pydantic.BaseModel.__doc__:
            doc = " ".join(section.model.__doc__.split())
            if not doc.startswith(("Unknown fields", "Base of", "A base class")):
                lines += [doc, ""]
        lines += field_rows(section, links) + [""]
    return lines


# -- the three formats ----------------------------------------------------------------------------------------


def formats() -> list[FileFormat]:
    from dsbench import experiment, methods, sweep
    from dsbench.metrics import NEEDS
    from dsbench.models import zoo
    from dsbench.training import train_file
    from dsbench.training.diffsparse import TrainConfig

    space_notes = {
        "type": "the kind of search space",
        "low": "lowest value",
        "high": "highest value",
    }
    entry_notes = {
        name: f"default of every entry's `{name}`: {info.description}"
        for name, info in train_file.Entry.model_fields.items()
        if info.description
    }
    one_of = lambda names: "one of " + ", ".join(f"`{n}`" for n in names)  # noqa: E731
    exp = FileFormat(
        title="Experiment files",
        intro="""
An experiment file (`experiments/*.yaml`, run with `dsbench run FILE`) names the models, the sampler
settings, the evaluation set, the seeds, the metrics and the methods, with their parameters and per-model
overrides, and optionally a compute budget. One run is made per (model, method, seed, budget).
Unknown fields are errors, and every error names the file, the field and the values it allows; the whole
file is checked before any sampling. Beyond the ranges below, loading checks that every model is in the zoo,
the sampler is known, every metric exists and has enough samples, and every method's parameters validate
against that method's own config (see [the method pages](../methods/index.md)). The schema is
`dsbench.experiment.Experiment` in `harness/experiment.py`.
""",
        examples=["experiments/quickstart.yaml"],
        sections=[
            Section(
                "(top level)",
                experiment.Experiment,
                intro="The top-level mapping of the file.",
                extra={
                    "models": one_of(zoo.available()),
                    "sampler": one_of(experiment.SAMPLERS) + ", or null",
                    "metrics": one_of(sorted(NEEDS)),
                    "methods": "`all` or a list of entries",
                    "name": "defaults to the file name",
                },
            ),
            Section("eval", experiment.EvalSet, intro="The evaluation set: which conditions, how many samples."),
            Section(
                "budget",
                experiment.Budget,
                intro="A compute budget: each method's budget field is tuned (bisected) until its MACs come "
                "closest to, without exceeding, this fraction of the full model's. Also allowed on one method entry.",
                extra={"macs_ratio": "each in (0, 1], no repeats"},
            ),
            Section("latency", experiment.Latency, intro="How latency is timed."),
            Section(
                "methods[]",
                experiment.MethodEntry,
                intro="One entry of `methods`. `params` are validated by the method's own config class.",
                extra={"name": one_of(methods.available())},
            ),
        ],
    )
    swp = FileFormat(
        title="Sweep files",
        intro="""
A sweep file (`dsbench sweep FILE`) makes many experiments from one base experiment (a file, relative to the
sweep file, or the experiment inline): either a `grid` (field values, one experiment per point: each method's
own axes crossed with the other fields' axes, so methods vary independently) or an `optuna` study. Field paths
are the dotted paths of experiment fields (`seeds`, `eval.size`); `methods.<name>.<param>` sets a parameter of
that method. Every point or trial is an ordinary experiment run into the results store, so a rerun skips what
is stored. The schema is `dsbench.sweep.Sweep` in `harness/sweep.py`.
""",
        examples=["experiments/sweep_toca_ratio.yaml", "experiments/sweep_optuna_pareto.yaml"],
        sections=[
            Section(
                "(top level)",
                sweep.Sweep,
                intro="The top-level mapping. Give exactly one of `grid` and `optuna`.",
                extra={"name": "defaults to the file name"},
                notes={"optuna": "an Optuna study (instead of `grid`)"},
            ),
            Section(
                "optuna",
                sweep.Study,
                intro="An Optuna study over a search space.",
                notes={"sampler": "Optuna sampler: TPE, random search, or NSGA-II (multi-objective)"},
            ),
            Section(
                "optuna.space.<path> (float)",
                sweep.FloatParam,
                intro="A float search space; `low` ≤ `high`, and with `step`, `high − low` is a multiple of it.",
                notes=space_notes,
            ),
            Section(
                "optuna.space.<path> (int)",
                sweep.IntParam,
                intro="An integer search space; `low` ≤ `high`.",
                notes=space_notes,
            ),
            Section(
                "optuna.space.<path> (categorical)",
                sweep.CategoricalParam,
                intro="A choice among numbers, strings, booleans or null.",
                notes=space_notes,
            ),
            Section(
                "optuna.objectives[]",
                sweep.Objective,
                intro="One metric the study optimises.",
                notes={"direction": "minimize or maximize the metric"},
            ),
        ],
    )
    train = FileFormat(
        title="DiffSparse training files",
        intro="""
A training file (`dsbench train diffsparse FILE`) lists DiffSparse schedules to learn; each entry is one
training run (model, output folder, training parameters, optional wall-clock budget) and, optionally, its
evaluation against the teacher. `defaults` apply to every entry (an entry's `params` are merged over the
defaults'). The whole file is validated before any training; a finished entry is not retrained, an
interrupted one resumes from its checkpoint. `match` trains for exactly the MACs of another method. The
schema is `dsbench.training.train_file.TrainFile` in `harness/training/train_file.py`.
""",
        examples=["experiments/train_paper.yaml"],
        sections=[
            Section(
                "(top level)",
                train_file.TrainFile,
                intro="The top-level mapping.",
                extra={"schedules": "each entry as in [`schedules[]`](#schedules-entry)"},
                notes={"name": "training file name (default: the file name)"},
            ),
            Section(
                "defaults",
                train_file.Defaults,
                intro="Values every entry of `schedules` starts from.",
                notes=entry_notes,
            ),
            Section(
                "schedules[]",
                train_file.Entry,
                extra={"model": "a zoo model with a dit or pixart pipeline"},
            ),
            Section("match", train_file.Match, extra={"method": one_of(methods.available())}),
            Section(
                "params",
                TrainConfig,
                intro="The training parameters of an entry (`params` of `defaults` or of a `schedules[]` entry).",
            ),
        ],
    )
    return [exp, swp, train]


def render() -> str:
    lines = [
        "# File formats: experiment, sweep and training files",
        "",
        f"<!-- Generated by `{COMMAND}` from the pydantic schemas; do not edit by hand. -->",
        "",
        "This page lists every field of the three YAML files dsbench reads, with its type, default, allowed",
        "values and description, generated from the schemas that validate them (so it cannot drift:",
        f"`tests/test_schema_docs.py` fails when it is stale; `{COMMAND}` rewrites it). Unknown fields are",
        "errors, numbers must be finite, and a bool or a string is never taken for a number.",
        "",
    ]
    fmts = formats()
    for fmt in fmts:
        lines.append(f"- [{fmt.title}](#{anchor_of(fmt.title)})")
    lines.append("")
    for fmt in fmts:
        lines += render_format(fmt)
    text = "\n".join(lines).rstrip() + "\n"
    return text.replace("#schedules-entry", "#" + anchor_of("`schedules[]` (Entry)"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed page is stale")
    parser.add_argument("--output", type=Path, default=OUTPUT, help=f"default: {OUTPUT.relative_to(ROOT)}")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is stale; run `{COMMAND}`", file=sys.stderr)
            return 1
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
