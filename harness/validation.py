"""Reading and validating YAML files (experiments, sweeps, training files): one error style for all.

Every error names the file, the field (``methods[2].params``) and what it allows, on one line (several
problems are joined with "; "), before any work starts.
"""

from __future__ import annotations

import collections.abc
import re
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydantic
import pydantic_core
import yaml

MAX_SHOWN = 80  # characters of a bad value quoted in an error (a 10⁶-element list must not flood the terminal)


def one_line(text: str) -> str:
    """``text`` with its line breaks folded into spaces: a CLI error is one line."""
    return re.sub(r"\s*\n\s*", " ", str(text)).strip()


def show(value: Any) -> str:
    """``repr(value)``, shortened to MAX_SHOWN characters."""
    text = repr(value)
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."


def is_file(path: Any) -> bool:
    """Whether ``path`` names an existing file; a name the OS cannot take (a NUL byte, too long) is not one
    (``Path.is_file`` raises for those instead of answering False)."""
    try:
        return Path(path).is_file()
    except (OSError, ValueError, TypeError):
        return False


def read_yaml(path: str | Path, kind: str) -> Any:
    """The parsed file; a missing file, text that is not UTF-8 or invalid YAML is a ValueError naming it."""
    path = Path(path)
    if not is_file(path):
        raise ValueError(f"{kind} file {path} does not exist")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {one_line(err)}") from None
    except RecursionError:
        raise ValueError(f"{path}: not valid YAML: nested too deeply") from None
    except OSError as err:
        raise ValueError(f"{kind} file {path}: cannot read it ({err.strerror or err})") from None


# -- numbers are numbers ----------------------------------------------------------------------------------
def _takes_as_is(value: Any, annotation: Any) -> bool:
    """Whether a union member ``annotation`` takes a bool or a string ``value`` without coercing it."""
    if annotation is Any or annotation is object:
        return True
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return any(type(a) is type(value) and a == value for a in args)
    if isinstance(value, bool):
        return annotation is bool
    return (
        typing.get_origin(annotation) is None and isinstance(annotation, type) and issubclass(annotation, (str, Path))
    )


def number_problem(value: Any, annotation: Any) -> str | None:
    """Why ``value`` must not become the number ``annotation`` asks for, or None.

    pydantic's lax mode turns ``True`` into 1 and ``"3"`` into 3: a YAML ``interval: yes`` or ``ratio: "0.3"``
    would run silently as something else. Containers (lists, tuples, dicts, unions of them) are checked
    element by element."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return number_problem(value, args[0])
    if origin in (typing.Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        if any(_takes_as_is(value, a) for a in members):
            return None
        return next((p for a in members if (p := number_problem(value, a))), None)
    if isinstance(value, (list, tuple)) and origin in (list, tuple, set, frozenset, collections.abc.Sequence):
        if origin is tuple and args and args[-1] is not Ellipsis:
            pairs = zip(value, args)  # fixed-length tuple: one annotation per position
        else:
            pairs = ((v, args[0] if args else Any) for v in value)
        return next((p for v, a in pairs if (p := number_problem(v, a))), None)
    if isinstance(value, dict) and origin in (dict, collections.abc.Mapping) and len(args) == 2:
        return next((p for v in value.values() if (p := number_problem(v, args[1]))), None)
    numeric = annotation in (int, float) or (
        origin is typing.Literal and any(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args)
    )
    if not numeric:
        return None
    if isinstance(value, bool) and not (
        origin is typing.Literal and value in args and any(isinstance(a, bool) for a in args)
    ):
        return f"{value!r} is a boolean, not a number"
    if isinstance(value, str) and annotation in (int, float):
        try:
            float(value)
        except ValueError:
            return f"{show(value)} is text, not a number"
        return (
            f"{show(value)} is text, not a number (write the number without quotes; YAML reads 1e5 as text, "
            "write 100000 or 1.0e+5)"
        )
    return None


class StrictModel(pydantic.BaseModel):
    """Base of every validated file section and method config: unknown fields are errors, values are frozen,
    numbers must be finite, and a bool or a string is never taken for a number."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @pydantic.field_validator("*", mode="before")
    @classmethod
    def _numbers_are_numbers(cls, value: Any, info: pydantic.ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        problem = number_problem(value, field.annotation) if field is not None else None
        if problem:
            raise pydantic_core.PydanticCustomError("number_type", problem)
        return value


def field_path(loc: tuple, branch_labels: Callable[[Any], bool] = lambda part: False) -> str:
    """``("methods", 2, "params")`` → ``methods[2].params``; union-branch labels pydantic adds are dropped."""
    parts = []
    for part in loc:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        elif not branch_labels(part):
            parts.append(("." if parts else "") + str(part))
    return "".join(parts) or "(top level)"


def schema_errors(
    source: str,
    err: pydantic.ValidationError,
    allowed_fields: Callable[[tuple], list[str]],
    *,
    branch_labels: Callable[[Any], bool] = lambda part: False,
    explain: Callable[[dict, str], str | None] = lambda error, where: None,
) -> str:
    """One line: every error (joined by "; "), unknown fields with the fields allowed there (``allowed_fields(loc)``),
    other errors with pydantic's message and the value given. ``explain(error, where)`` may word an error
    itself (a string) or drop it (``""``, e.g. the failed branch of a union whose other branch says more)."""
    lines = []
    for e in err.errors():
        where = field_path(e["loc"], branch_labels)
        line = explain(e, where)
        if line is None:
            if e["type"] == "extra_forbidden":
                line = f"unknown field {where!r}; allowed fields: {', '.join(map(str, allowed_fields(e['loc'])))}"
            else:
                line = f"field {where!r}: {e['msg']} (got {show(e.get('input'))})"
        if line:
            lines.append(one_line(f"{source}: {line}"))
    return "; ".join(dict.fromkeys(lines))
