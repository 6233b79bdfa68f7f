"""Export and import of a learned DiffSparse schedule (METHODS §1.1.7 "Export", §0.6).

The main file is the generic Schedule JSON of ``methods.schedule`` (decisions at the training
resolution, kept-token counts via ``n_tokens``) whose ``meta`` carries what inference needs to
re-derive the decisions at any resolution: the level of every (step, layer) as a fraction of
tokens (k = ⌊ρN⌋ at run time), K, the layer names and the config hash. The cost tables P, C_f
and T_f go to an ``.npz`` side file next to it; inference never reads them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from methods.base import NORMAL, Decision
from methods.diffsparse.space import LevelSpace, level_decision
from methods.schedule import Schedule

FORMAT = "dsbench.diffsparse.v1"


def config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def export_schedule(path: str | Path, space: LevelSpace, levels_per_cell, *, config: dict[str, Any] | None = None,
                    budget_ratio: float | None = None, tables: dict[str, np.ndarray] | None = None) -> Path:
    """Write the schedule JSON (and ``<stem>.npz`` with ``tables``, e.g. P, C_f, T_f); returns the JSON path."""
    path = Path(path)
    grid = space.level_grid(levels_per_cell)
    config = dict(config or {})
    side = None
    if tables:
        side = path.with_suffix(".npz")
        np.savez(side, **{name: np.asarray(value) for name, value in tables.items()})
    schedule = Schedule(
        T=space.steps, layers=space.layers, directives=[NORMAL] * space.steps, decisions=space.decisions(levels_per_cell),
        meta={"method": "diffsparse", "format": FORMAT, "family": space.family, "T": space.steps,
              "L": len(space.layers), "K": space.K, "num_levels": space.K + 1, "mode": space.mode,
              "levels": (grid / space.K).tolist(), "n_tokens": space.n_tokens,
              "cell_layers": [space.layers[ell].name for ell in space.cell_layers],
              "macs": space.macs(levels_per_cell), "base_macs": space.base_macs, "cfg_counted": space.cfg_counted,
              "budget_ratio": budget_ratio, "config": config, "config_hash": config_hash(config),
              "tables": side.name if side else None})
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

    def check_run(self, num_steps: int, layer_names: list[str]) -> None:
        """A schedule is tied to (T, L): say which differs."""
        if num_steps != self.T or layer_names != self.layers:
            raise ValueError(
                f"diffsparse: schedule {self.path} was trained for T={self.T} steps and L={len(self.layers)} "
                f"layers; this run has T={num_steps} steps and L={len(layer_names)} layers"
                + ("" if len(layer_names) != len(self.layers) or layer_names == self.layers
                   else " with different layer names")
                + ". A schedule is tied to (T, L, |S|): retrain it for this model and step count "
                "(the resolution may differ)")

    def tables(self) -> dict[str, np.ndarray]:
        """The cost tables saved next to the schedule (P, C_f, T_f, ...)."""
        name = self.meta.get("tables")
        if not name:
            raise ValueError(f"schedule {self.path} was exported without cost tables")
        with np.load(self.path.parent / name) as data:
            return {key: data[key] for key in data.files}


def load_schedule(path: str | Path) -> LearnedSchedule:
    """Read and validate a schedule written by ``export_schedule``."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"schedule: no such file {str(path)!r} (a JSON written by export_schedule)")
    try:
        body = json.loads(path.read_text())
        meta = body["meta"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise ValueError(f"schedule: {path} is not a DiffSparse schedule JSON") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"schedule: {path} has format {meta.get('format')!r}, expected {FORMAT!r}")
    K = int(meta["K"])
    levels = np.rint(np.asarray(meta["levels"], dtype=np.float64) * K).astype(np.int64)
    T, layers = int(body["T"]), list(body["layers"])
    if levels.shape != (T, len(layers)) or levels.min() < 0 or levels.max() > K:
        raise ValueError(f"schedule: {path} has a level grid of shape {levels.shape} / range "
                         f"{levels.min()}..{levels.max()}, expected ({T}, {len(layers)}) in 0..{K}")
    if (levels[0] != K).any():
        raise ValueError(f"schedule: {path} must compute every layer at step 0 (caches are created there)")
    return LearnedSchedule(path=path, T=T, layers=layers, K=K, levels=levels, meta=meta)
