"""The method registry: ``register`` a Method subclass, ``build`` one from validated parameters."""

from __future__ import annotations

import importlib.util
from typing import Any

import pydantic

from dsbench.core import Method, MethodConfig
from dsbench.validation import one_line, show

_REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    if not cls.name:
        raise TypeError(f"{cls.__name__} needs a non-empty `name`")
    if cls.name in _REGISTRY:
        raise ValueError(f"method {cls.name!r} is registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def available() -> list[str]:
    """Names of all registered methods, sorted."""
    return sorted(_REGISTRY)


def method_class(name: str) -> type[Method]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; available methods: {', '.join(available())}") from None


def missing_package(name: str) -> str | None:
    """Why method ``name`` cannot run here (an optional package it needs is not installed, with the pip command
    that installs it), or None."""
    cls = method_class(name)
    if cls.requires is not None and importlib.util.find_spec(cls.requires[0]) is None:
        return f"{name} needs the optional package {cls.requires[0]!r}, not installed: {cls.requires[1]}"
    return None


def config(name: str, **params: Any) -> MethodConfig:
    """The validated config of method ``name`` without building the method (which may read files, e.g. a
    learned schedule); a bad field raises ValueError naming it."""
    cls = method_class(name)
    missing = missing_package(name)
    if missing is not None:
        raise ValueError(missing)
    try:
        return cls.Config(**params)
    except pydantic.ValidationError as err:
        raise ValueError(_format_validation_error(name, cls.Config, err)) from None


def build(name: str, **params: Any) -> Method:
    """Build a method from validated parameters; a bad field raises ValueError naming it."""
    return method_class(name)(config(name, **params))


def _format_validation_error(method: str, config_cls: type[MethodConfig], err: pydantic.ValidationError) -> str:
    """One line: every problem, joined by "; " (the CLI prints errors on one line)."""
    lines = []
    for e in err.errors():
        field_name = ".".join(str(p) for p in e["loc"]) or "(config)"
        if e["type"] == "extra_forbidden":
            allowed = ", ".join(config_cls.model_fields) or "(none)"
            lines.append(f"{method}: unknown parameter {field_name!r}; allowed parameters: {allowed}")
            continue
        if e["type"] == "missing":
            hint = config_cls.required_hint(field_name)
            lines.append(f"{method}: parameter {field_name!r} is required" + (f": {hint}" if hint else ""))
            continue
        info = config_cls.model_fields.get(field_name)
        allowed = f" ({info.description})" if info is not None and info.description else ""
        lines.append(f"{method}: parameter {field_name!r} = {show(e.get('input'))} is invalid: {e['msg']}{allowed}")
    return one_line("; ".join(lines))


# model families a method runs on (``dsbench.models``: dit, pixart, flux, wan); a method class may say so itself
# with a ``families`` attribute. Elsewhere it is skipped at run time with its reason (core.NotApplicable).
ALL_FAMILIES = ("dit", "pixart", "flux", "wan")
APPLIES_TO = {
    "cat": ("dit", "pixart"),  # BasicTransformerBlock models
    "dato": ("dit", "pixart"),  # BasicTransformerBlock models
    "sparsedit": ("dit",),  # transforms a DiTTransformer2DModel
}


def families(name: str) -> tuple[str, ...]:
    """The model families method ``name`` applies to."""
    cls = method_class(name)
    return tuple(getattr(cls, "families", None) or APPLIES_TO.get(name, ALL_FAMILIES))
