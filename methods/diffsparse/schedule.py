"""Export and import of a learned DiffSparse schedule.

See docs/methods/diffsparse.md#two-stage-training ("Export") and docs/concepts.md#schedules.

The main file is the generic Schedule JSON of ``dsbench.core`` (decisions at the training
resolution, kept-token counts via ``n_tokens``) whose ``meta`` carries what inference needs to
re-derive the decisions at any resolution: the level of every (step, layer) as a fraction of
tokens (k = ⌊ρN⌋ at run time), K, the layer names and the config hash. The cost tables P, C_f
and T_f go to an ``.npz`` side file next to it; inference never reads them.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dsbench.core import NORMAL, Decision, Schedule
from dsbench.methods.diffsparse.selector import IMPORTANCES, LAMBDAS, TERMS
from dsbench.methods.diffsparse.space import MODES, LevelSpace, level_decision
from dsbench.validation import is_file, one_line, show

FORMAT = "dsbench.diffsparse.v1"


def config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def export_schedule(
    path: str | Path,
    space: LevelSpace,
    levels_per_cell,
    *,
    config: dict[str, Any] | None = None,
    budget_ratio: float | None = None,
    tables: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write the schedule JSON (and ``<stem>.npz`` with ``tables``, e.g. P, C_f, T_f); returns the JSON path."""
    path = Path(path)
    grid = space.level_grid(levels_per_cell)
    config = dict(config or {})
    side = None
    if tables:
        side = path.with_suffix(".npz")
        np.savez(side, **{name: np.asarray(value) for name, value in tables.items()})
    schedule = Schedule(
        T=space.steps,
        layers=space.layers,
        directives=[NORMAL] * space.steps,
        decisions=space.decisions(levels_per_cell),
        meta={
            "method": "diffsparse",
            "format": FORMAT,
            "family": space.family,
            "T": space.steps,
            "L": len(space.layers),
            "K": space.K,
            "num_levels": space.K + 1,
            "mode": space.mode,
            "levels": (grid / space.K).tolist(),
            "n_tokens": space.n_tokens,
            "cell_layers": [space.layers[ell].name for ell in space.cell_layers],
            "macs": space.macs(levels_per_cell),
            "base_macs": space.base_macs,
            "cfg_counted": space.cfg_counted,
            "budget_ratio": budget_ratio,
            "config": config,
            "config_hash": config_hash(config),
            "tables": side.name if side else None,
        },
    )
    body = schedule.to_dict()
    body["meta"]["kept_tokens"] = schedule.counts()
    path.write_text(json.dumps(body, indent=1, sort_keys=True))
    return path


@dataclass(frozen=True)
class LearnedSchedule:
    """A loaded DiffSparse schedule: levels per (step, layer) as indices into 0..K."""

    path: Path
    T: int
    layers: list[str]
    K: int
    levels: np.ndarray  # T × L int
    meta: dict[str, Any]

    def decision(self, i: int, ell: int, n_tokens: int) -> Decision:
        return level_decision(int(self.levels[i, ell]), self.K, n_tokens)

    def check_run(self, num_steps: int, layer_names: list[str], family: str | None = None) -> None:
        """A schedule is tied to (T, L, layer names) and its model family: say which differs."""
        problems = []
        if num_steps != self.T:
            problems.append(f"the steps differ (schedule T={self.T}, run T={num_steps})")
        if len(layer_names) != len(self.layers):
            problems.append(f"the layer counts differ (schedule L={len(self.layers)}, run L={len(layer_names)})")
        elif layer_names != self.layers:
            ell = next(j for j, (a, b) in enumerate(zip(self.layers, layer_names)) if a != b)
            problems.append(
                f"the layer names differ (layer {ell} is {self.layers[ell]!r} in the schedule, "
                f"{layer_names[ell]!r} in this run)"
            )
        trained = self.meta.get("family")
        if family is not None and trained is not None and family != trained:
            problems.append(f"the model families differ (schedule {trained}, run {family})")
        if problems:
            raise ValueError(
                f"diffsparse: schedule {self.path} was trained for T={self.T} steps and L={len(self.layers)} "
                f"layers; this run has T={num_steps} steps and L={len(layer_names)} layers: {'; '.join(problems)}. "
                "A schedule is tied to (T, L, |S|): retrain it for this model and step count "
                "(the resolution may differ)"
            )

    def tables(self) -> dict[str, np.ndarray]:
        """The cost tables saved next to the schedule (P, C_f, T_f, ...)."""
        name = self.meta.get("tables")
        if not name:
            raise ValueError(f"schedule {self.path} was exported without cost tables")
        side = self.path.parent / name
        if not side.is_file():
            raise ValueError(f"schedule {self.path}: its cost tables {side} (field 'meta.tables') are missing")
        with np.load(side) as data:
            return {key: data[key] for key in data.files}


# -- the file's schema -----------------------------------------------------------------------------------
GRID_TOLERANCE = 1e-6  # a level may differ from a multiple of 1/K by JSON float rounding only


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class _Fields:
    """Reads one schedule body field by field; every error names the file, the JSON field and what it allows."""

    def __init__(self, path: Path, body: dict[str, Any]):
        self.path, self.body = path, body

    def fail(self, field: str, message: str):
        raise ValueError(f"schedule {self.path}: field {field!r} {message}")

    def get(self, field: str, required: bool = True) -> Any:
        """The value at dotted ``field`` (``meta.K``); a missing required one is an error."""
        node: Any = self.body
        for part in field.split("."):
            if not isinstance(node, dict) or part not in node:
                if required:
                    self.fail(
                        field,
                        "is missing (files written by dsbench.methods.diffsparse.schedule.export_schedule "
                        "have it; re-export or retrain the schedule)",
                    )
                return None
            node = node[part]
        return node

    def integer(self, field: str, low: int, what: str, required: bool = True) -> int | None:
        value = self.get(field, required)
        if value is None and not required:
            return None
        if not _is_int(value) or value < low:
            self.fail(field, f"= {show(value)} is invalid: must be an integer >= {low} ({what})")
        return value

    def names(self, field: str, required: bool = True) -> list[str] | None:
        value = self.get(field, required)
        if value is None and not required:
            return None
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
            self.fail(field, f"= {show(value)} is invalid: must be a non-empty list of layer names (strings)")
        seen: dict[str, int] = {}
        for j, name in enumerate(value):
            if name in seen:
                self.fail(f"{field}[{j}]", f"= {name!r} repeats {field}[{seen[name]}]; layer names are unique")
            seen[name] = j
        return value

    def grid(self, field: str, rows: int, cols: int, check, allowed: str, required: bool = True) -> list | None:
        """A ``rows`` × ``cols`` list of lists whose cells all pass ``check``."""
        value = self.get(field, required)
        if value is None and not required:
            return None
        if not isinstance(value, list) or len(value) != rows:
            self.fail(field, f"must be a list of T={rows} rows (one per step), got {show(value)}")
        for i, row in enumerate(value):
            if not isinstance(row, list) or len(row) != cols:
                self.fail(f"{field}[{i}]", f"must be a list of L={cols} values (one per layer), got {show(row)}")
            for ell, cell in enumerate(row):
                if not check(cell):
                    self.fail(f"{field}[{i}][{ell}]", f"= {show(cell)} is invalid: must be {allowed}")
        return value


def validate_body(path: Path, body: Any) -> LearnedSchedule:
    """Check a parsed schedule file as a whole (the Schedule JSON of ``dsbench.core`` plus the DiffSparse ``meta``)."""
    if not isinstance(body, dict):
        raise ValueError(
            f"schedule {path}: must be a JSON object with fields T, layers and meta (a schedule "
            f"written by export_schedule), got a JSON {type(body).__name__}"
        )
    f = _Fields(path, body)
    meta = f.get("meta")
    if not isinstance(meta, dict):
        f.fail("meta", f"= {show(meta)} is invalid: must be an object (the DiffSparse metadata of export_schedule)")
    if meta.get("format") != FORMAT:
        f.fail(
            "meta.format",
            f"= {show(meta.get('format'))} is invalid; allowed: {FORMAT!r} "
            "(a schedule written by dsbench.methods.diffsparse.schedule.export_schedule)",
        )
    if "method" in meta and meta["method"] != "diffsparse":
        f.fail("meta.method", f"= {show(meta['method'])} is invalid; allowed: 'diffsparse'")
    K = f.integer("meta.K", 1, "levels 0..K: K = 1/interval, 4 for interval 0.25")
    T = f.integer("T", 1, "denoiser calls per run")
    layers = f.names("layers")
    L = len(layers)
    for field, expected in (("meta.T", T), ("meta.L", L), ("meta.num_levels", K + 1)):
        value = f.get(field, required=False)
        if value is not None and (not _is_int(value) or value != expected):
            f.fail(field, f"= {show(value)} is invalid: must equal {expected} (from T, layers and meta.K)")

    def on_grid(x) -> bool:
        return _is_number(x) and 0.0 <= x <= 1.0 and abs(x * K - round(x * K)) <= GRID_TOLERANCE

    levels = f.grid("meta.levels", T, L, on_grid, f"a number in [0, 1] on the level grid k/K (K = {K})")
    grid = np.rint(np.asarray(levels, dtype=np.float64) * K).astype(np.int64)
    if (grid[0] != K).any():
        ell = int(np.flatnonzero(grid[0] != K)[0])
        f.fail(
            f"meta.levels[0][{ell}]",
            f"= {show(levels[0][ell])} is invalid: step 0 must be 1.0 for every layer "
            "(every layer is computed where the caches are created)",
        )

    family = f.get("meta.family", required=False)
    if family is not None and family not in LAMBDAS:
        f.fail("meta.family", f"= {show(family)} is invalid; allowed: {', '.join(sorted(LAMBDAS))}")
    mode = f.get("meta.mode", required=False)
    if mode is not None and mode not in MODES:
        f.fail("meta.mode", f"= {show(mode)} is invalid; allowed: {', '.join(MODES)}")
    cells = f.names("meta.cell_layers", required=False)
    if cells is not None:
        unknown = [name for name in cells if name not in layers]
        if unknown:
            f.fail("meta.cell_layers", f"names {unknown[0]!r}, which is not in field 'layers'")
        if cells != [name for name in layers if name in cells]:
            f.fail("meta.cell_layers", "must list its layers in the order of field 'layers'")
        if family is not None:
            expected = [name for name in layers if not (family == "flux" and name.rsplit(".", 1)[-1] == "attn")]
            if cells != expected:
                f.fail(
                    "meta.cell_layers",
                    f"= {show(cells)} is invalid for a {family} model: every layer but FLUX "
                    f"attention has cells, so expected {show(expected)}",
                )
        for ell, name in enumerate(layers):
            if name not in cells and (grid[1:, ell] != 0).any():
                i = 1 + int(np.flatnonzero(grid[1:, ell] != 0)[0])
                f.fail(
                    f"meta.levels[{i}][{ell}]",
                    f"= {show(levels[i][ell])} is invalid: layer {name!r} has no cells "
                    "(not in meta.cell_layers), so it is 0 after step 0",
                )
    n_tokens = f.get("meta.n_tokens", required=False)
    if n_tokens is not None and (
        not isinstance(n_tokens, list) or len(n_tokens) != L or not all(_is_int(n) and n >= 1 for n in n_tokens)
    ):
        f.fail("meta.n_tokens", f"= {show(n_tokens)} is invalid: must be a list of L={L} token counts >= 1")

    config = f.get("meta.config", required=False)
    if config is not None and not isinstance(config, dict):
        f.fail("meta.config", f"= {show(config)} is invalid: must be an object (the training config) or null")
    importance = (config or {}).get("importance")
    if importance is not None and importance not in IMPORTANCES:
        f.fail("meta.config.importance", f"= {show(importance)} is invalid; allowed: {', '.join(IMPORTANCES)}")
    drop = (config or {}).get("drop")
    if drop is not None and (not isinstance(drop, list) or not all(isinstance(t, str) and t in TERMS for t in drop)):
        f.fail("meta.config.drop", f"= {show(drop)} is invalid: must be a list of score terms among {', '.join(TERMS)}")
    ratio = f.get("meta.budget_ratio", required=False)
    if ratio is not None and not (_is_number(ratio) and 0.0 <= ratio < 1.0):
        f.fail("meta.budget_ratio", f"= {show(ratio)} is invalid: must be a MAC reduction R in [0, 1) or null")
    tables = f.get("meta.tables", required=False)
    if tables is not None and (not isinstance(tables, str) or Path(tables).name != tables or tables in ("", ".", "..")):
        f.fail(
            "meta.tables",
            f"= {show(tables)} is invalid: must be the file name of the .npz next to the schedule or null",
        )
    for field in ("codes", "k", "m"):  # the generic Schedule's decisions at the training resolution
        f.grid(field, T, L, lambda x: _is_int(x) and x >= 0, "an integer >= 0", required=False)
    directives = f.get("directives", required=False)
    if directives is not None and (
        not isinstance(directives, list) or len(directives) != T or not all(isinstance(d, str) for d in directives)
    ):
        f.fail("directives", f"= {show(directives)} is invalid: must be a list of T={T} directive names")
    return LearnedSchedule(path=path, T=T, layers=list(layers), K=K, levels=grid, meta=meta)


def load_schedule(path: str | Path) -> LearnedSchedule:
    """Read and validate a schedule written by ``export_schedule``: the whole file is checked against its
    schema here, so a bad file fails when the method is built, before any sampling."""
    path = Path(path)
    if not is_file(path):
        raise ValueError(
            f"schedule: no such file {str(path)!r} (a JSON written by export_schedule; "
            "committed ones are results/diffsparse/<model>/schedule.json)"
        )
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise ValueError(f"schedule: {path} is not a DiffSparse schedule JSON ({one_line(err)})") from None
    return validate_body(path, body)
