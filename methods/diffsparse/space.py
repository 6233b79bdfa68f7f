"""The DiffSparse level space: cells, levels, per-cell-level MACs, weights, budget.

See docs/methods/diffsparse.md#cells-levels-and-budget.

A cell is (step i, layer ℓ) for i = 1..T−1 over the model's cell layers; its level k ∈ 0..K
means "compute n_c(k) = ⌊k/K · N⌋ tokens" (REUSE at 0, FULL at K, TOPK in between). The MACs
of every (layer, level) are not computed from a formula: they are *measured* by running the
engine's own MAC counter (``dsbench.accounting``) on a meta-device copy of the transformer, one
call per level, so what the solver budgets is exactly what the executor will count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from dsbench.core import FULL, REUSE, Decision, Layer, topk

MODES = ("weighted", "paper")


def level_count(interval: float) -> int:
    """K for a level interval (0.25 → K = 4, |S| = 5); the interval must divide 1."""
    if not 0.0 < interval <= 1.0:
        raise ValueError(f"interval must be in (0, 1] (e.g. 0.1, 0.125, 0.25, 0.5, 1.0), got {interval}")
    K = round(1.0 / interval)
    if abs(K * interval - 1.0) > 1e-9:
        raise ValueError(f"interval must divide 1 (e.g. 0.1, 0.125, 0.25, 0.5, 1.0), got {interval}")
    return K


def tokens_at(level: int, K: int, n: int) -> int:
    """n_c(k) = ⌊k/K · N⌋ in exact integer arithmetic (so 0.3·10 never becomes 2.999…)."""
    return (int(level) * int(n)) // int(K)


def level_decision(level: int, K: int, n: int) -> Decision:
    """REUSE at level 0, FULL at level K, else TOPK(⌊k/K·N⌋) (REUSE if that rounds to 0 tokens)."""
    if level >= K:
        return FULL
    k = tokens_at(level, K, n)
    return topk(k) if k > 0 else REUSE


def is_cell_layer(family: str, layer: Layer) -> bool:
    """FLUX attention has no cell: computed at i = 0 and reused after.

    See docs/methods/diffsparse.md#cells-levels-and-budget."""
    return not (family == "flux" and layer.module == "attn")


@dataclass
class LevelSpace:
    """Cells × levels with their MACs (per generated image) and integer solver weights.

    ``layer_macs[ℓ, k]``: M_lin of layer ℓ at level k in one call; ``fixed_call``: M_lin of one
    call outside every layer; ``step0``: M_lin of the all-FULL step 0. All per image, CFG
    counted or not as ``cfg_counted`` says (the ratio R does not depend on it).
    """

    family: str
    steps: int
    K: int
    mode: str
    layers: list[Layer]
    n_tokens: list[int]  # per layer, at the resolution the space was built for
    cell_layers: list[int]  # layer indices that have cells, in execution order
    layer_macs: np.ndarray  # L × (K+1)
    fixed_call: float
    step0: float
    cfg_counted: bool

    # -- the space ----------------------------------------------------------------------------
    @property
    def levels(self) -> np.ndarray:
        """The level set S as fractions of tokens computed: 0, 1/K, ..., 1."""
        return np.arange(self.K + 1) / self.K

    @property
    def cells(self) -> list[tuple[int, int]]:
        """(step, layer index), step-major, i = 1..T−1."""
        return [(i, ell) for i in range(1, self.steps) for ell in self.cell_layers]

    @property
    def n_cells(self) -> int:
        return (self.steps - 1) * len(self.cell_layers)

    @property
    def cell_macs(self) -> np.ndarray:
        """m_c(k), cells × levels (MACs per image)."""
        return np.tile(self.layer_macs[self.cell_layers], (self.steps - 1, 1))

    @property
    def unit(self) -> float:
        """u: a quarter of the smallest positive per-level MAC increment over all cells (weighted mode)."""
        inc = np.diff(self.layer_macs[self.cell_layers], axis=1)
        return float(inc[inc > 0].min()) / 4

    @property
    def weights(self) -> np.ndarray:
        """w_c(k): round(m_c(k)/u) (weighted) or k (paper-literal); int64, cells × levels."""
        if self.mode == "paper":
            return np.tile(np.arange(self.K + 1, dtype=np.int64), (self.n_cells, 1))
        return np.rint(self.cell_macs / self.unit).astype(np.int64)

    @property
    def base_macs(self) -> float:
        """M_base: the uncached run (every step like step 0)."""
        return self.steps * self.step0

    @property
    def fixed_macs(self) -> float:
        """M_fixed: step 0 plus, at every later step, everything outside the layers (non-cell layers
        such as FLUX attention are REUSEd after step 0 and cost nothing)."""
        return self.step0 + (self.steps - 1) * self.fixed_call

    def macs(self, levels_per_cell) -> float:
        """M_lin per image of the whole run when cell c runs at level ``levels_per_cell[c]``."""
        levels = self._check_levels(levels_per_cell)
        return self.fixed_macs + float(self.cell_macs[np.arange(self.n_cells), levels].sum())

    def budget_macs(self, R: float) -> float:
        """B_MAC = (1 − R)·M_base − M_fixed: the MACs the cells may spend at reduction R."""
        if not 0.0 <= R < 1.0:
            raise ValueError(f"R (fractional MAC reduction) must be in [0, 1), got {R}")
        return (1.0 - R) * self.base_macs - self.fixed_macs

    def budget(self, R: float) -> int:
        """Integer cell budget B in weight units. [PD] weighted mode floors B_MAC/u so the solution
        does not exceed the MAC budget by more than the weights' rounding."""
        if self.mode == "paper":
            B = round((1.0 - R) * self.n_cells * self.K)
        else:
            B = math.floor(self.budget_macs(R) / self.unit)
        low, high = int(self.weights.min(axis=1).sum()), int(self.weights.max(axis=1).sum())
        if not low <= B <= high:
            lo_R, hi_R = self.ratio_range()
            raise ValueError(
                f"R = {R} is outside what the {self.n_cells} cells can reach: R must be in "
                f"[{lo_R:.4f}, {hi_R:.4f}] (all cells FULL .. all cells REUSE)"
            )
        return B

    def ratio_range(self) -> tuple[float, float]:
        """(R with every cell FULL, R with every cell REUSE)."""
        m = self.cell_macs
        full = self.fixed_macs + m[:, -1].sum()
        none = self.fixed_macs + m[:, 0].sum()
        return 1.0 - full / self.base_macs, 1.0 - none / self.base_macs

    def window(self, budget: int) -> int:
        """Δ: ⌈0.005·B⌉ in weighted mode, at least 3, and 0 (exact budget) in paper-literal mode [PD].

        [PD] The floor of 3: the smallest per-level increment is 4 units by construction of u, so
        on small models (B of a few hundred) a narrower window may contain no reachable total."""
        return 0 if self.mode == "paper" else max(3, math.ceil(0.005 * budget))

    # -- levels ↔ decisions -----------------------------------------------------------------------
    def _check_levels(self, levels_per_cell) -> np.ndarray:
        levels = np.asarray(levels_per_cell, dtype=np.int64).reshape(-1)
        if levels.shape[0] != self.n_cells:
            raise ValueError(f"levels_per_cell must have one level per cell ({self.n_cells}), got {levels.shape[0]}")
        if levels.min(initial=0) < 0 or levels.max(initial=0) > self.K:
            raise ValueError(f"levels must be in 0..{self.K}, got {levels.min()}..{levels.max()}")
        return levels

    def level_grid(self, levels_per_cell) -> np.ndarray:
        """Levels per (step, layer), T × L: step 0 at K (FULL); non-cell layers at 0 after step 0."""
        levels = self._check_levels(levels_per_cell)
        grid = np.zeros((self.steps, len(self.layers)), dtype=np.int64)
        grid[0] = self.K
        grid[1:, self.cell_layers] = levels.reshape(self.steps - 1, len(self.cell_layers))
        return grid

    def decisions(self, levels_per_cell) -> list[list[Decision]]:
        """The executed decision of every (step, layer) at this space's token counts."""
        grid = self.level_grid(levels_per_cell)
        return [
            [level_decision(grid[i, ell], self.K, self.n_tokens[ell]) for ell in range(len(self.layers))]
            for i in range(self.steps)
        ]

    def describe(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "steps": self.steps,
            "K": self.K,
            "mode": self.mode,
            "cells": self.n_cells,
            "cell_layers": [self.layers[ell].name for ell in self.cell_layers],
            "base_macs": self.base_macs,
            "fixed_macs": self.fixed_macs,
            "cfg_counted": self.cfg_counted,
        }
