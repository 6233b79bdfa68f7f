"""Reading and validating YAML files (experiments, sweeps, training files): one error style for all.

Every error names the file, the field (``methods[2].params``) and what it allows, one line per problem,
before any work starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pydantic
import yaml


def read_yaml(path: str | Path, kind: str) -> Any:
    """The parsed file; a missing file or invalid YAML is a ValueError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{kind} file {path} does not exist")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from None


def field_path(loc: tuple, branch_labels: Callable[[Any], bool] = lambda part: False) -> str:
    """``("methods", 2, "params")`` → ``methods[2].params``; union-branch labels pydantic adds are dropped."""
    parts = []
    for part in loc:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        elif not branch_labels(part):
            parts.append(("." if parts else "") + str(part))
    return "".join(parts) or "(top level)"


def schema_errors(source: str, err: pydantic.ValidationError, allowed_fields: Callable[[tuple], list[str]], *,
                  branch_labels: Callable[[Any], bool] = lambda part: False,
                  explain: Callable[[dict, str], str | None] = lambda error, where: None) -> str:
    """One line per error: unknown fields with the fields allowed there (``allowed_fields(loc)``), other
    errors with pydantic's message and the value given. ``explain(error, where)`` may word an error
    itself (a string) or drop it (``""``, e.g. the failed branch of a union whose other branch says more)."""
    lines = []
    for e in err.errors():
        where = field_path(e["loc"], branch_labels)
        line = explain(e, where)
        if line is None:
            if e["type"] == "extra_forbidden":
                line = f"unknown field {where!r}; allowed fields: {', '.join(allowed_fields(e['loc']))}"
            else:
                line = f"field {where!r}: {e['msg']} (got {e.get('input')!r})"
        if line:
            lines.append(f"{source}: {line}")
    return "\n".join(dict.fromkeys(lines))
