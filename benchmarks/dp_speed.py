"""DiffSparse DP solver speed (docs/methods/diffsparse.md#dp-solver).

Issue 5 acceptance: T = 20, L = 84, |S| = 5 "well under a second".

The instance is PixArt-α 256's real level space (``level_space("pixart-alpha-256", steps=20)``:
19 × 84 = 1,596 cells, |S| = 5, weighted-mode integer weights proportional to each cell's measured
MACs, budget at R = 0.5 with its window Δ), costs drawn N(0, 1) per cell and level. Both arms solve
the same instance in the same run:

* ``solve``: ``dsbench.methods.diffsparse.solve`` (numpy, vectorised over the budget axis, in units of the
  weights' gcd, pre-pruned, int8 choice table);
* ``python``: a plain-Python loop transcription of the same recurrence (the same pre-pruning and
  tie rules, in the weights' own units), timed ``--python-repeats`` times.

Both must return the same total cost; the headline is the ratio of median times.

    python benchmarks/dp_speed.py                       # writes results/benchmarks/dp_speed.*

Not a test: nothing is asserted about wall-clock time.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import Report, machine_lines, median, spread  # noqa: E402


def python_dp(costs: list[list[float]], weights: list[list[int]], budget: int, window: int) -> list[int]:
    """Eq. 6/7 as plain Python loops: F(j, r) = min_k F(j−1, r − w_j(k)) + C[j, k], then backtracking."""
    n, levels = len(costs), len(costs[0])
    lo_target = max(0, budget - window)
    wmax = [max(row) for row in weights]
    wmin = [min(row) for row in weights]
    suffix = [0] * (n + 1)
    for j in range(n - 1, -1, -1):
        suffix[j] = suffix[j + 1] + wmax[j]
    inf = math.inf
    F = [inf] * (budget + 1)
    F[0] = 0.0
    choice = [bytearray(budget + 1) for _ in range(n)]
    pmax = pmin = 0
    for j in range(n):
        pmax, pmin = pmax + wmax[j], pmin + wmin[j]
        lo, hi = max(pmin, lo_target - suffix[j + 1], 0), min(budget, pmax)
        new = [inf] * (budget + 1)
        row_c, row_w, pick = costs[j], weights[j], choice[j]
        for r in range(lo, hi + 1):
            best, arg = inf, 0
            for k in range(levels):
                w = row_w[k]
                if w <= r:
                    value = F[r - w] + row_c[k]
                    if value < best:
                        best, arg = value, k
            new[r] = best
            pick[r] = arg
        F = new
    r = max(range(lo_target, budget + 1), key=lambda x: (-F[x], x))  # lowest cost, then largest total
    if F[r] == inf:
        raise ValueError("infeasible budget")
    picked = [0] * n
    for j in range(n - 1, -1, -1):
        picked[j] = choice[j][r]
        r -= weights[j][picked[j]]
    return picked


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="pixart-alpha-256", help="architecture of the level space (meta device)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--ratio", type=float, default=0.5, help="budget R (fractional MAC reduction)")
    p.add_argument("--repeats", type=int, default=7, help="timed runs of solve (median reported)")
    p.add_argument("--python-repeats", type=int, default=1, help="timed runs of the plain-Python loop")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="dp_speed", help="basename under results/benchmarks/")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    from dsbench.macs import level_space
    from dsbench.methods.diffsparse import solve

    report = Report(args.out)
    report("# DiffSparse DP solver: dsbench.methods.diffsparse.solve vs a plain-Python loop of the same DP")
    for line in machine_lines(args):
        report(line)
    space = level_space(args.model, steps=args.steps)
    weights = space.weights
    budget = space.budget(args.ratio)
    window = space.window(budget)
    costs = np.random.default_rng(args.seed).normal(size=weights.shape)
    gcd = int(np.gcd.reduce(weights.ravel()))
    report(
        f"instance: {args.model}, T = {space.steps}, L = {len(space.cell_layers)} cell layers, "
        f"{space.n_cells} cells × |S| = {space.K + 1} levels; weights {weights.min()}..{weights.max()} "
        f"(gcd {gcd}), Σ max = {int(weights.max(axis=1).sum())}; budget B = {budget} (R = {args.ratio}), "
        f"window Δ = {window}; costs N(0, 1), seed {args.seed}"
    )

    solve(costs, weights, budget, window=window)  # warm-up
    fast = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        levels = solve(costs, weights, budget, window=window)
        fast.append(time.perf_counter() - t0)
    slow = []
    cost_lists, weight_lists = costs.tolist(), weights.tolist()
    for _ in range(args.python_repeats):
        t0 = time.perf_counter()
        reference = python_dp(cost_lists, weight_lists, budget, window)
        slow.append(time.perf_counter() - t0)
    rows = np.arange(space.n_cells)
    total_fast, total_slow = costs[rows, levels].sum(), costs[rows, reference].sum()
    used = int(weights[rows, levels].sum())
    same = bool(np.isclose(total_fast, total_slow, rtol=0, atol=1e-9))
    report(f"solve (numpy):       {spread(fast)}")
    report(f"plain-Python loop:   {spread(slow)}")
    report(
        f"same optimum: {same} (total cost {total_fast:.6f} vs {total_slow:.6f}); "
        f"summed weights {used} in [{budget - window}, {budget}]"
    )
    ratio = median(slow) / median(fast)
    report(
        f"HEADLINE: solve takes {median(fast):.3f} s, {ratio:.0f}× faster than the plain-Python loop "
        f"({median(slow):.1f} s); the paper quotes ≈ 30 s"
    )
    report.save(
        {
            "args": vars(args),
            "cells": space.n_cells,
            "levels": space.K + 1,
            "budget": budget,
            "window": window,
            "gcd": gcd,
            "solve_seconds": fast,
            "python_seconds": slow,
            "ratio": ratio,
            "same_optimum": same,
            "total_cost": float(total_fast),
            "summed_weights": used,
        }
    )


if __name__ == "__main__":
    main()
