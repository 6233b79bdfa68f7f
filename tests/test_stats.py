"""Intervals reach their nominal coverage, paired comparisons see what unpaired ones miss, rank groups follow
the intervals, and per-image values round-trip through the store into the leaderboard."""

import numpy as np
import pytest

from harness import report, stats
from harness.store import Store


def test_mean_interval_covers_the_true_mean_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    hits = 0
    for repetition in range(400):
        sample = rng.normal(3.0, 2.0, size=80)
        low, high = stats.mean_ci(sample, resamples=1000, seed=repetition)
        hits += low <= 3.0 <= high
    assert 0.92 <= hits / 400 <= 0.98, hits / 400


def test_weighted_mean_interval_covers_a_pooled_accuracy():
    """Objects per image vary; the pooled accuracy is the objects-weighted mean of per-image fractions."""
    rng = np.random.default_rng(1)
    hits = 0
    for repetition in range(400):
        objects = rng.integers(1, 4, size=60)
        right = rng.binomial(objects, 0.8)
        low, high = stats.mean_ci(right / objects, objects, resamples=1000, seed=repetition)
        hits += low <= 0.8 <= high
    assert 0.92 <= hits / 400 <= 0.98, hits / 400


def test_paired_difference_separates_what_the_shared_noise_hides():
    rng = np.random.default_rng(2)
    difficulty = rng.normal(0, 1.0, size=64)  # per-image noise both methods share
    a, b = difficulty + 0.10, difficulty + 0.05 + rng.normal(0, 0.01, size=64)
    low_a, high_a = stats.mean_ci(a)
    low_b, high_b = stats.mean_ci(b)
    assert low_a < high_b and low_b < high_a  # the two intervals overlap ...
    assert stats.excludes_zero(stats.paired_difference_ci(a, b))  # ... yet the paired difference is clear
    assert not stats.excludes_zero(stats.paired_difference_ci(a, a + rng.normal(0, 0.01, size=64)))


def test_ratio_of_medians_interval_holds_the_speedup():
    rng = np.random.default_rng(3)
    full = 2.0 + rng.normal(0, 0.02, size=9)
    method = 1.0 + rng.normal(0, 0.01, size=9)
    low, high = stats.ratio_of_medians_ci(full, method)
    assert low < np.median(full) / np.median(method) < high and 1.9 < low and high < 2.1


def test_too_few_units_give_no_interval():
    assert all(np.isnan(stats.mean_ci([1.0])))
    with pytest.raises(ValueError, match="same units"):
        stats.paired_difference_ci([1, 2], [1, 2, 3])


def test_rank_groups_are_competition_ranks_over_inseparable_neighbours():
    assert stats.rank_groups([True, False, True]) == [1, 2, 2, 4]
    assert stats.rank_groups([False, False]) == [1, 1, 1]
    assert stats.rank_groups([]) == [1]


def _row(run_id, method, values, seed=0, **kw):
    return {"run_id": run_id, "experiment": "e", "model": "m", "method": method, "label": method, "params": {},
            "seed": seed, "code_version": "v", "n_samples": len(values), "macs_ratio": 0.5, "speedup": 2.0,
            "latency_seconds": [1.0, 1.1, 0.9], "latency_full_seconds": [2.0, 2.1, 1.9],
            "lpips_alex": float(np.mean(values)), "per_sample": {"lpips_alex": {"values": list(values)}}, **kw}


def test_per_image_values_round_trip_and_decide_the_leaderboard_ranks(tmp_path):
    rng = np.random.default_rng(4)
    base = rng.uniform(0.05, 0.2, size=32)
    store = Store(tmp_path / "r.db")
    store.put(_row("a", "a", base))
    store.put(_row("b", "b", base + 1e-4 * rng.normal(size=32)))  # a tie with a
    store.put(_row("c", "c", base + 0.05))  # clearly worse
    assert store.get("a")["per_sample"]["lpips_alex"]["values"] == list(base)  # exact round trip
    records = {r["method"]: r for r in report.leaderboard(store.frame()).records()}
    assert records["a"]["rank"] == records["b"]["rank"] == 1 and records["c"]["rank"] == 3
    for r in records.values():
        assert r["lpips_alex_ci_low"] < r["lpips_alex"] < r["lpips_alex_ci_high"]
        assert r["speedup_ci_low"] <= 2.0 <= r["speedup_ci_high"]
    markdown = report.write(report.leaderboard(store.frame()), "md")
    assert "Rank" in markdown and "cannot be told apart" in markdown and " [" in markdown


def test_seeds_pool_their_images_for_the_interval(tmp_path):
    store = Store(tmp_path / "r.db")
    store.put(_row("s0", "a", [0.1, 0.2, 0.3], seed=0))
    store.put(_row("s1", "a", [0.4, 0.5, 0.6], seed=1))
    summary = report.summarise(store.frame())
    keys, values, weights = summary.iloc[0]["_units"]["lpips_alex"]
    assert keys == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)] and weights is None
    assert summary.iloc[0]["seeds"] == 2 and values.mean() == pytest.approx(0.35)


def test_versus_gives_the_paired_difference_and_a_verdict(tmp_path, capsys):
    from harness.cli import main as cli_main

    rng = np.random.default_rng(5)
    base = rng.uniform(0.05, 0.2, size=32)
    with Store(tmp_path / "r.db") as store:
        store.put(_row("t", "toca", base))
        store.put(_row("a", "fora", base + 0.02))
        store.put(_row("b", "steps", base + 1e-4 * rng.normal(size=32)))
    records = {r["method"]: r for r in report.leaderboard(Store(tmp_path / "r.db").frame(), versus="toca").records()}
    assert records["fora"]["lpips_alex_vs_toca_verdict"] == "worse"
    assert records["fora"]["lpips_alex_vs_toca"] == pytest.approx(0.02)
    assert records["steps"]["lpips_alex_vs_toca_verdict"] == "not separable"
    assert records["toca"]["lpips_alex_vs_toca_verdict"] == "reference"
    assert cli_main(["table", "--store", str(tmp_path / "r.db"), "--versus", "toca"]) == 0
    assert "Δ lpips_alex vs toca" in capsys.readouterr().out
    assert cli_main(["table", "--store", str(tmp_path / "r.db"), "--versus", "duca"]) == 2
    assert "no runs of method 'duca'" in capsys.readouterr().err


def test_interpolation_at_the_budget_is_exact_on_linear_data(tmp_path):
    """Quality linear in MAC ratio: the leaderboard's value at the budget is the line's, image by image."""
    rng = np.random.default_rng(6)
    intercept, slope = rng.uniform(0.1, 0.2, size=16), rng.uniform(-0.2, -0.1, size=16)
    store = Store(tmp_path / "r.db")
    for ratio, bracket in ((0.40, None), (0.60, "above")):
        store.put(_row(f"f{ratio}", "fora", intercept + slope * ratio, macs_ratio=ratio, budget_macs_ratio=0.5,
                       bracket=bracket, budget_note=None if bracket else "interval is an integer",
                       tuned={"interval": 3 if bracket is None else 2}, label="fora_N3" if bracket is None else "fora_N2"))
    record = report.leaderboard(store.frame()).records()[0]
    assert record["at_budget"] == "interpolated" and record["macs_ratio"] == 0.5
    assert record["lpips_alex"] == pytest.approx(float(np.mean(intercept + slope * 0.5)), abs=1e-12)
    assert record["method"] == "fora_N3 ↔ interval=2" and len(report.leaderboard(store.frame()).rows) == 1


def test_a_budget_list_runs_each_budgeted_method_at_every_budget():
    from harness import experiment

    exp = experiment.parse({"name": "curves", "models": ["mnist-dit"], "budget": {"macs_ratio": [0.6, 0.3]},
                            "methods": [{"name": "toca"}, {"name": "full"}]}, "curves.yaml")
    entries = exp.method_entries()
    assert [(e.name, exp.budget_for(e) and exp.budget_for(e).macs_ratio) for e in entries] == \
        [("toca", 0.3), ("toca", 0.6), ("full", None)]
    with pytest.raises(ValueError, match="budget.macs_ratio"):
        experiment.parse({"name": "x", "models": ["mnist-dit"], "budget": {"macs_ratio": [0.5, 1.5]},
                          "methods": [{"name": "toca"}]}, "x.yaml")


def test_ranks_are_per_budget_and_one_budget_keeps_full_and_fixed_cost_runs(tmp_path):
    rng = np.random.default_rng(7)
    base = rng.uniform(0.05, 0.2, size=16)
    store = Store(tmp_path / "r.db")
    store.put(_row("t3", "toca", base + 0.05, budget_macs_ratio=0.3, macs_ratio=0.3))
    store.put(_row("t6", "toca", base + 0.01, budget_macs_ratio=0.6, macs_ratio=0.6))
    store.put(_row("s6", "steps", base + 0.03, budget_macs_ratio=0.6, macs_ratio=0.6))
    store.put(_row("d", "diffsparse", base + 0.02, budget_macs_ratio=None, macs_ratio=0.595))
    store.put(_row("f", "full", base * 0, budget_macs_ratio=None, macs_ratio=1.0))
    every = report.leaderboard(store.frame()).records()
    assert {(r["method"], r["budget_macs_ratio"]): r["rank"] for r in every if r["budget_macs_ratio"] > 0} == \
        {("toca", 0.3): 1, ("toca", 0.6): 1, ("steps", 0.6): 2}  # ranked within each budget
    at_06 = report.leaderboard(store.frame(), budget=0.6).records()
    assert [r["method"] for r in at_06] == ["full", "toca", "diffsparse", "steps"]
    with pytest.raises(ValueError, match="no runs at a MAC-ratio budget of 0.45"):
        report.leaderboard(store.frame().query("method != 'full'"), budget=0.45)
