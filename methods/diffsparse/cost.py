"""DiffSparse's learnable costs (docs/methods/diffsparse.md: #cost-table, #straight-through-estimator,
#two-stage-training): the cell cost table P, its
ToCa initialisation, the straight-through gates, and the step-cost table C_f of stage 1b.

The DP picks one level per cell from the *centred* costs C = P − mean_k P; the STE gate
G = H + p − stopgrad(p), p = softmax(−C/τ), has the forward value of the DP's hard choice H while
its gradient reaches P through p. The training forward (``train.py``) turns G into token masks.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from dsbench.methods.diffsparse.space import LevelSpace


class CostTable(nn.Module):
    """P ∈ R^{cells × levels}, one row per cell (i, ℓ), i = 1..T−1 step-major (``LevelSpace.cells``)."""

    def __init__(self, n_cells: int, n_levels: int):
        super().__init__()
        if n_cells < 1 or n_levels < 2:
            raise ValueError(f"a cost table needs n_cells >= 1 and n_levels >= 2, got {n_cells} × {n_levels}")
        self.P = nn.Parameter(torch.zeros(n_cells, n_levels, dtype=torch.float64))

    def centred(self) -> torch.Tensor:
        """C = P − mean_k P [PD]: the DP solution does not change, and δ keeps one meaning for every row."""
        return self.P - self.P.mean(dim=1, keepdim=True)

    def costs(self) -> np.ndarray:
        """C as a numpy array, for the solver."""
        return self.centred().detach().cpu().numpy()

    @torch.no_grad()
    def init_from_ratios(self, ratios: np.ndarray, alpha: float = 1.0) -> None:
        """P[c, k] = α·|k/K − ρ(c)| (ToCa initialisation, mapping [PD]): the cheapest level is the one
        nearest to the cell's ToCa fresh ratio."""
        ratios = torch.as_tensor(np.asarray(ratios, dtype=np.float64))
        if ratios.shape != (self.P.shape[0],):
            raise ValueError(
                f"ratios must have one value per cell ({self.P.shape[0]}), got shape {tuple(ratios.shape)}"
            )
        levels = torch.linspace(0.0, 1.0, self.P.shape[1], dtype=torch.float64)
        self.P.copy_(alpha * (levels[None, :] - ratios[:, None]).abs())

    @torch.no_grad()
    def warm_start(self, cell_mask: np.ndarray, delta: float) -> None:
        """Eq. 9: P[c, K] −= δ for the cells of the chosen full steps (the keep-all level gets cheaper)."""
        self.P[torch.as_tensor(np.asarray(cell_mask, dtype=bool)), -1] -= delta


class StepCosts(nn.Module):
    """C_f ∈ R^{(T−1) × 2}, columns [partial, full] for steps i = 1..T−1 (stage 1b).

    Initialised [PD] to 0 for the chosen column and 1 for the other: full at the steps of T_f⁰.
    The step-DP over it is ``dp.step_dp``.
    """

    PARTIAL, FULL = 0, 1

    def __init__(self, steps: int, full_steps: list[int]):
        super().__init__()
        bad = [i for i in full_steps if not 1 <= i < steps]
        if bad:
            raise ValueError(f"full_steps must be in 1..{steps - 1} (step 0 is always full), got {bad}")
        table = torch.ones(steps - 1, 2, dtype=torch.float64)
        table[:, self.PARTIAL] = 0.0
        for i in full_steps:
            table[i - 1] = torch.tensor([1.0, 0.0], dtype=torch.float64)
        self.C = nn.Parameter(table)


def ste_gates(costs: torch.Tensor, hard: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """G = H + p − stopgrad(p), p = softmax(−C/τ) (DiP-GO estimator, no Gumbel
    noise [PD]; docs/methods/diffsparse.md#straight-through-estimator).

    ``hard``: one level index per row. Forward value: exactly one_hot(hard); gradient: that of p.
    """
    if tau <= 0:
        raise ValueError(f"tau (softmax temperature) must be > 0, got {tau}")
    p = torch.softmax(-costs / tau, dim=-1)
    H = torch.nn.functional.one_hot(torch.as_tensor(hard, dtype=torch.long), costs.shape[-1]).to(p.dtype)
    return H + (p - p.detach())  # p − p is exactly 0: the forward value is exactly H


def toca_fresh_ratios(schedule, space: LevelSpace) -> tuple[np.ndarray, list[int]]:
    """ρ_ToCa(c) per cell (tokens computed / N) and ToCa's full steps excluding step 0, from the
    ``Schedule`` of a ToCa run of the same model and steps (``handle.report()["schedule"]``)."""
    if schedule.T != space.steps or len(schedule.layers) != len(space.layers):
        raise ValueError(
            f"the ToCa schedule has T={schedule.T}, L={len(schedule.layers)}; the level space has "
            f"T={space.steps}, L={len(space.layers)}"
        )
    counts = np.asarray(schedule.counts(), dtype=np.float64)  # T × L tokens computed
    ratios = counts / np.asarray(schedule.meta["n_tokens"], dtype=np.float64)[None, :]
    per_cell = ratios[1:, space.cell_layers].reshape(-1)
    return per_cell, [i for i in schedule.full_steps() if i > 0]
