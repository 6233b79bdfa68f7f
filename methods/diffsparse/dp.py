"""The DiffSparse solvers (docs/methods/diffsparse.md#dp-solver): the exact knapsack DP of Eq. 6/7, the step-DP of
stage 1b and the no-DP ablation.

``solve`` picks one level per cell minimising the summed cost subject to the summed integer
weights hitting the budget exactly (or anywhere in [budget − window, budget]). It loops over
cells and is vectorised over the budget axis r, in units of the weights' gcd (budget units),
with an int8 choice table; the minimum over levels is taken with strict `<` (the first, i.e.
smallest, level wins ties), so the result is deterministic. T = 20, L = 84, |S| = 5 takes about
0.1 s (benchmarks/dp_speed.py).
"""

from __future__ import annotations

import numpy as np


def _check(costs, weights, budget: int, window: int) -> tuple[np.ndarray, np.ndarray]:
    costs = np.asarray(costs, dtype=np.float64)
    weights = np.asarray(weights)
    if costs.ndim != 2 or costs.shape[0] == 0 or costs.shape[1] == 0:
        raise ValueError(f"costs must be a non-empty 2-D array (cells × levels), got shape {costs.shape}")
    if weights.shape != costs.shape:
        raise ValueError(f"weights must have the shape of costs {costs.shape}, got {weights.shape}")
    if not np.issubdtype(weights.dtype, np.integer) or weights.min() < 0:
        raise ValueError("weights must be non-negative integers")
    if np.isnan(costs).any():
        raise ValueError("costs must not contain NaN")
    if int(budget) != budget or budget < 0:
        raise ValueError(f"budget must be a non-negative integer, got {budget}")
    if int(window) != window or window < 0:
        raise ValueError(f"window must be a non-negative integer, got {window}")
    return costs, weights.astype(np.int64)


def _infeasible(budget: int, window: int, low: int, high: int, g: int = 1) -> ValueError:
    target = f"exactly {budget}" if window == 0 else f"in [{budget - window}, {budget}]"
    step = f"; every total is a multiple of {g}, the weights' gcd" if g > 1 else ""
    return ValueError(
        f"infeasible budget: the summed weights must be {target}, but the cells can only "
        f"reach totals in [{low}, {high}] (with gaps where no level combination lands{step})"
    )


def solve(costs, weights, budget: int, *, window: int = 0) -> np.ndarray:
    """One level index per cell: argmin Σ costs[c, k_c] s.t. Σ weights[c, k_c] ∈ [budget − window, budget].

    Within the window the lowest total cost wins; [PD] among equal costs the larger total
    weight (closer to the budget) wins. Cells with cost +inf at a level never take it. Raises
    ValueError when no assignment reaches the window.
    """
    costs, weights = _check(costs, weights, budget, window)
    n, levels = costs.shape
    wmax, wmin = weights.max(axis=1), weights.min(axis=1)
    if wmin.sum() > budget or wmax.sum() < budget - window:
        raise _infeasible(budget, window, int(wmin.sum()), int(wmax.sum()))
    # budget units: every total is a multiple of the weights' gcd g, so solve in units of g
    # (LevelSpace weights are multiples of 4: a 4× shorter budget axis, same optimum)
    g = max(int(np.gcd.reduce(weights.ravel())), 1)
    weights, wmax, wmin = weights // g, wmax // g, wmin // g
    top, lo_target = budget // g, -(-max(0, budget - window) // g)
    if lo_target > top:
        raise _infeasible(budget, window, int(wmin.sum()) * g, int(wmax.sum()) * g, g)
    # pre-pruning: after cell j, r must still be able to reach the window and cannot exceed it
    prefix_max = np.cumsum(wmax)
    suffix_max = np.concatenate([np.cumsum(wmax[::-1])[::-1][1:], [0]])
    prefix_min = np.cumsum(wmin)

    size = top + 1
    F = np.full(size, np.inf)
    F[0] = 0.0
    choice = np.zeros((n, size), dtype=np.int8 if levels <= 127 else np.int16)
    shifted, less = np.empty(size), np.empty(size, dtype=bool)
    for j in range(n):
        lo = max(int(prefix_min[j]), lo_target - int(suffix_max[j]), 0)
        hi = min(top, int(prefix_max[j]))
        new = np.full(size, np.inf)
        if lo <= hi:
            # running minimum over the levels; strict < keeps the first, i.e. smaller, level on ties
            best, pick = new[lo : hi + 1], choice[j, lo : hi + 1]
            cand, better = shifted[: hi + 1 - lo], less[: hi + 1 - lo]
            for k in range(levels):  # F[r − w_j(k)] + C[j, k] for r in [lo, hi]
                w = int(weights[j, k])
                start = max(lo, w)
                if start > hi:
                    continue
                seg = slice(start - lo, None)
                np.add(F[start - w : hi + 1 - w], costs[j, k], out=cand[seg])
                np.less(cand[seg], best[seg], out=better[seg])
                np.copyto(best[seg], cand[seg], where=better[seg])
                np.copyto(pick[seg], k, where=better[seg])
        F = new
    window_costs = F[lo_target : top + 1]
    if not np.isfinite(window_costs).any():
        raise _infeasible(budget, window, int(wmin.sum()) * g, int(wmax.sum()) * g, g)
    # the last minimum in the window: the largest total among equal costs
    r = lo_target + len(window_costs) - 1 - int(np.argmin(window_costs[::-1]))
    picked = np.empty(n, dtype=np.int64)
    for j in range(n - 1, -1, -1):
        k = int(choice[j, r])
        picked[j] = k
        r -= int(weights[j, k])
    return picked


def step_dp(step_costs, n_full: int) -> np.ndarray:
    """Stage-1b step choice: exactly ``n_full`` full steps minimising Σ C_f[i, choice_i].

    ``step_costs`` has one row per step and columns [partial, full]. Equivalent to taking the
    n_full steps with the smallest C_f[i, full] − C_f[i, partial]; ties go to the earlier step.
    Returns a boolean mask (True = full step).
    """
    c = np.asarray(step_costs, dtype=np.float64)
    if c.ndim != 2 or c.shape[1] != 2:
        raise ValueError(f"step_costs must have shape (steps, 2) with columns [partial, full], got {c.shape}")
    if int(n_full) != n_full or not 0 <= n_full <= c.shape[0]:
        raise ValueError(f"n_full must be an integer in [0, {c.shape[0]}], got {n_full}")
    order = np.argsort(c[:, 1] - c[:, 0], kind="stable")
    mask = np.zeros(c.shape[0], dtype=bool)
    mask[order[:n_full]] = True
    return mask


def solve_no_dp(costs, weights, budget: int, *, window: int = 0) -> np.ndarray:
    """No-DP ablation ([PD], docs/methods/diffsparse.md#dp-solver):
    per-cell argmin level, scaled by a bisected α to fit the
    budget, then a greedy fix into [budget − window, budget].

    Levels are the column indices 0..K (fraction k/K); weights must be non-decreasing in k.
    """
    costs, weights = _check(costs, weights, budget, window)
    n, levels = costs.shape
    K = levels - 1
    if (np.diff(weights, axis=1) < 0).any():
        raise ValueError("solve_no_dp needs weights non-decreasing in the level")
    if weights[:, 0].sum() > budget or weights[:, -1].sum() < budget - window:
        raise _infeasible(budget, window, int(weights[:, 0].sum()), int(weights[:, -1].sum()))
    rows = np.arange(n)
    rho = np.argmin(costs, axis=1) / max(K, 1)

    def quantised(alpha: float) -> np.ndarray:
        return np.clip(np.rint(alpha * rho * K), 0, K).astype(np.int64)

    def total(levels_: np.ndarray) -> int:
        return int(weights[rows, levels_].sum())

    low, high = 0.0, float(K + 1)  # α = K+1 lifts any positive ρ ≥ 1/K to the top level
    for _ in range(60):
        mid = 0.5 * (low + high)
        low, high = (mid, high) if total(quantised(mid)) <= budget else (low, mid)
    picked = quantised(low)
    used = total(picked)
    while used > budget:  # lower the cell whose decrement raises the cost least
        down = picked > 0
        delta = np.where(down, costs[rows, np.maximum(picked - 1, 0)] - costs[rows, picked], np.inf)
        c = int(np.argmin(delta))
        used -= int(weights[c, picked[c]] - weights[c, picked[c] - 1])
        picked[c] -= 1
    while used < budget - window:  # raise the cell whose increment lowers the cost most, staying ≤ budget
        up_level = np.minimum(picked + 1, K)
        step = weights[rows, up_level] - weights[rows, picked]
        can = (picked < K) & (used + step <= budget)
        if not can.any():
            raise _infeasible(budget, window, int(weights[:, 0].sum()), int(weights[:, -1].sum()))
        delta = np.where(can, costs[rows, up_level] - costs[rows, picked], np.inf)
        c = int(np.argmin(delta))
        used += int(step[c])
        picked[c] += 1
    return picked
