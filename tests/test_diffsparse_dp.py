"""DiffSparse solvers against brute force, and the level space's MACs against the engine.

See docs/methods/diffsparse.md#dp-solver.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from dsbench.methods.diffsparse.dp import solve, solve_no_dp, step_dp


def brute_force(costs, weights, budget, window=0):
    """Best (cost, -total) over every assignment; the order mirrors solve's tie rules."""
    n, levels = costs.shape
    best = None
    for combo in itertools.product(range(levels), repeat=n):
        idx = np.array(combo)
        total = weights[np.arange(n), idx].sum()
        if not budget - window <= total <= budget:
            continue
        cost = costs[np.arange(n), idx].sum()
        if best is None or cost < best[0] - 1e-12:
            best = (cost, total, idx)
    return best


def random_instance(rng, n, K, integer_costs=False):
    levels = K + 1
    costs = rng.integers(0, 3, size=(n, levels)).astype(float) if integer_costs else rng.normal(size=(n, levels))
    weights = np.sort(rng.integers(0, 6, size=(n, levels)), axis=1)
    return costs, weights


def check_against_brute_force(costs, weights, budget, window):
    """``solve`` raises "infeasible budget" exactly when brute force finds nothing, else reaches its
    optimal cost; returns (brute-force result, solve's total weight), or None when infeasible."""
    expected = brute_force(costs, weights, budget, window)
    if expected is None:
        with pytest.raises(ValueError, match="infeasible budget"):
            solve(costs, weights, budget, window=window)
        return None
    got = solve(costs, weights, budget, window=window)
    rows = np.arange(len(costs))
    assert costs[rows, got].sum() == pytest.approx(expected[0])
    return expected, weights[rows, got].sum()


@pytest.mark.parametrize("seed", range(40))
def test_solve_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n, K = int(rng.integers(1, 9)), int(rng.integers(1, 4))
    n = min(n, 6) if K == 3 else n  # keep 4^n small
    costs, weights = random_instance(rng, n, K, integer_costs=seed % 2 == 0)
    window = int(rng.integers(0, 3))
    budget = int(rng.integers(weights.min(axis=1).sum(), weights.max(axis=1).sum() + 1))
    checked = check_against_brute_force(costs, weights, budget, window)
    if checked is not None:
        total = checked[1]
        assert budget - window <= total <= budget


def test_ties_prefer_smaller_level_and_are_deterministic():
    costs = np.zeros((3, 3))
    weights = np.tile(np.array([0, 1, 1]), (3, 1))  # levels 1 and 2 weigh the same and cost the same
    got = solve(costs, weights, 2)
    # strict < in the recurrence: the last cell keeps level 0 (reached first), level 2 never beats level 1
    assert list(got) == [1, 1, 0] and list(solve(costs, weights, 2)) == list(got)


def test_window_takes_best_total_in_range():
    costs = np.array([[0.0, -1.0, 5.0], [0.0, -1.0, 5.0]])
    weights = np.array([[0, 1, 2], [0, 1, 2]])
    assert list(solve(costs, weights, 4)) == [2, 2]  # exact: forced to the expensive top level
    assert list(solve(costs, weights, 4, window=2)) == [1, 1]  # window: total 2 is cheaper


def test_infeasible_budget_raises_before_work():
    weights = np.array([[0, 2], [0, 2]])
    with pytest.raises(ValueError, match=r"infeasible budget.*exactly 5.*\[0, 4\]"):
        solve(np.zeros((2, 2)), weights, 5)
    with pytest.raises(ValueError, match="infeasible budget"):  # odd total unreachable with even weights
        solve(np.zeros((2, 2)), weights, 3)
    with pytest.raises(ValueError, match="weights must have the shape"):
        solve(np.zeros((2, 2)), np.zeros((2, 3), dtype=int), 1)
    with pytest.raises(ValueError, match="non-negative integers"):
        solve(np.zeros((2, 2)), weights * 0.5, 1)


def test_inf_cost_forbids_a_level():
    costs = np.array([[np.inf, 0.0, 1.0], [0.0, 0.0, 0.0]])
    weights = np.array([[0, 1, 2], [0, 1, 2]])
    got = solve(costs, weights, 1)
    assert list(got) == [1, 0]


def test_step_dp_picks_cheapest_full_steps():
    c = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.5], [0.0, 0.0], [2.0, 0.0]])
    mask = step_dp(c, 2)
    assert list(np.flatnonzero(mask)) == [0, 4]  # full − partial: −1, 1, −0.5, 0, −2
    brute = min(itertools.combinations(range(5), 2), key=lambda s: sum(c[i, 1 if i in s else 0] for i in range(5)))
    assert set(brute) == set(np.flatnonzero(mask))
    with pytest.raises(ValueError, match="n_full must be"):
        step_dp(c, 6)


@pytest.mark.parametrize("seed", range(10))
def test_no_dp_is_feasible_and_no_better_than_dp(seed):
    rng = np.random.default_rng(seed)
    n, K = 30, 4
    costs = rng.normal(size=(n, K + 1))
    weights = np.tile(np.array([0, 3, 5, 8, 10]), (n, 1))
    budget, window = 150, 3
    got = solve_no_dp(costs, weights, budget, window=window)
    rows = np.arange(n)
    assert budget - window <= weights[rows, got].sum() <= budget
    best = solve(costs, weights, budget, window=window)
    assert costs[rows, best].sum() <= costs[rows, got].sum() + 1e-9


@pytest.mark.parametrize("seed", range(12))
def test_solve_in_budget_units_matches_brute_force(seed):
    """Weights with a common divisor g (as LevelSpace's are): solved in units of g, same optimum."""
    rng = np.random.default_rng(100 + seed)
    g = int(rng.integers(2, 5))
    costs, weights = random_instance(rng, int(rng.integers(1, 7)), 2)
    weights = weights * g
    window = int(rng.integers(0, 2 * g))
    budget = int(rng.integers(weights.min(axis=1).sum(), weights.max(axis=1).sum() + 1))
    checked = check_against_brute_force(costs, weights, budget, window)
    if checked is not None:
        expected, total = checked
        assert expected[1] == total  # the same (largest) total among equal costs


def test_budget_off_the_gcd_grid_is_infeasible():
    weights = np.tile(np.array([0, 4, 8]), (3, 1))
    with pytest.raises(ValueError, match="multiple of 4"):
        solve(np.zeros((3, 3)), weights, 10)
    assert weights[np.arange(3), solve(np.zeros((3, 3)), weights, 10, window=2)].sum() == 8
