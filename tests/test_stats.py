"""Intervals reach their nominal coverage, paired comparisons see what unpaired ones miss, rank groups follow
the intervals, and per-image values round-trip through the store into the leaderboard."""

import json

import numpy as np
import pytest

from dsbench import report, stats
from dsbench.store import Store


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
    return {
        "run_id": run_id,
        "experiment": "e",
        "model": "m",
        "method": method,
        "label": method,
        "params": {},
        "seed": seed,
        "code_version": "v",
        "n_samples": len(values),
        "macs_ratio": 0.5,
        "speedup": 2.0,
        "latency_seconds": [1.0, 1.1, 0.9],
        "latency_full_seconds": [2.0, 2.1, 1.9],
        "lpips_alex": float(np.mean(values)),
        "per_sample": {"lpips_alex": {"values": list(values)}},
        **kw,
    }


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
    from dsbench.cli import main as cli_main

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
        store.put(
            _row(
                f"f{ratio}",
                "fora",
                intercept + slope * ratio,
                macs_ratio=ratio,
                budget_macs_ratio=0.5,
                bracket=bracket,
                budget_note=None if bracket else "interval is an integer",
                tuned={"interval": 3 if bracket is None else 2},
                label="fora_N3" if bracket is None else "fora_N2",
            )
        )
    record = report.leaderboard(store.frame()).records()[0]
    assert record["at_budget"] == "interpolated" and record["macs_ratio"] == 0.5
    assert record["lpips_alex"] == pytest.approx(float(np.mean(intercept + slope * 0.5)), abs=1e-12)
    assert record["method"] == "fora_N3 ↔ interval=2" and len(report.leaderboard(store.frame()).rows) == 1


def test_a_budget_list_runs_each_budgeted_method_at_every_budget():
    from dsbench import experiment

    exp = experiment.parse(
        {
            "name": "curves",
            "models": ["mnist-dit"],
            "budget": {"macs_ratio": [0.6, 0.3]},
            "methods": [{"name": "toca"}, {"name": "full"}],
        },
        "curves.yaml",
    )
    entries = exp.method_entries()
    assert [(e.name, exp.budget_for(e) and exp.budget_for(e).macs_ratio) for e in entries] == [
        ("toca", 0.3),
        ("toca", 0.6),
        ("full", None),
    ]
    with pytest.raises(ValueError, match="budget.macs_ratio"):
        experiment.parse(
            {"name": "x", "models": ["mnist-dit"], "budget": {"macs_ratio": [0.5, 1.5]}, "methods": [{"name": "toca"}]},
            "x.yaml",
        )


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
    assert {(r["method"], r["budget_macs_ratio"]): r["rank"] for r in every if r["budget_macs_ratio"] > 0} == {
        ("toca", 0.3): 1,
        ("toca", 0.6): 1,
        ("steps", 0.6): 2,
    }  # ranked within each budget
    at_06 = report.leaderboard(store.frame(), budget=0.6).records()
    assert [r["method"] for r in at_06] == ["full", "toca", "diffsparse", "steps"]
    with pytest.raises(ValueError, match="no runs at a MAC-ratio budget of 0.45"):
        report.leaderboard(store.frame().query("method != 'full'"), budget=0.45)


def test_replicate_interval_covers_the_true_mean_over_three_training_seeds():
    """Three replicates (training seeds): the Student-t interval keeps its 95 %, where a bootstrap of 3 cannot."""
    rng = np.random.default_rng(8)
    hits = 0
    for _ in range(400):
        low, high = stats.replicate_mean_ci(rng.normal(0.5, 0.2, size=3))
        hits += low <= 0.5 <= high
    assert 0.92 <= hits / 400 <= 0.98, hits / 400
    assert all(np.isnan(stats.replicate_mean_ci([0.1])))


def test_units_to_separate_predicts_the_size_that_separates():
    """The estimate is the size at which the expected half-width equals the difference; at 4× that size the
    interval of a real difference excludes 0 in nearly every repetition."""
    rng = np.random.default_rng(9)
    pilot = rng.normal(0.1, 1.0, size=100)
    interval = stats.paired_difference_ci(pilot, np.zeros(100))
    needed = stats.units_to_separate(float(pilot.mean()), interval, 100)
    assert needed == pytest.approx(100 * ((interval[1] - interval[0]) / 2 / abs(pilot.mean())) ** 2)
    big = int(4 * 1.0 / 0.1**2 * 1.96**2)  # 4× the size whose half-width is the true difference
    separated = sum(
        stats.excludes_zero(stats.mean_ci(rng.normal(0.1, 1.0, size=big), resamples=500, seed=k)) for k in range(40)
    )
    assert separated >= 36  # 97.5 % expected
    assert stats.units_to_separate(0.0, (-0.1, 0.1), 50) == float("inf")
    assert stats.units_to_separate(0.2, (0.1, 0.3), 50) < 50  # already separated: fewer would do


def _schedule(folder, **changes):
    """A schedule file recording its training settings, as `dsbench train diffsparse` writes them."""
    config = {
        "interval": 0.25,
        "delta": 10.0,
        "loss": "lpips",
        "importance": "attention",
        "drop": [],
        "stages": "two",
        "ratio": 0.43,
        "condition_seed": 1,
        "noise_seed": 1,
        **changes,
    }
    folder.mkdir(parents=True)
    (folder / "schedule.json").write_text(json.dumps({"meta": {"config": config}}))
    return str(folder / "schedule.json")


def test_ablations_decide_each_claim_over_training_seeds(tmp_path, capsys):
    from dsbench.cli import main as cli_main

    rng = np.random.default_rng(10)
    shifts = {
        "base": [0, 0, 0],
        "no_s2": [0.010, 0.012, 0.009],
        "norm": [-0.005, -0.006, -0.004],
        "delta_0": [0, 0, 0],
        "ssim": [0.010, -0.010, 0.002],
        "r54": [0.02, 0.02, 0.02],
    }
    changes = {
        "base": {},
        "no_s2": {"drop": ["s2"]},
        "norm": {"importance": "norm"},
        "delta_0": {"delta": 0.0},
        "ssim": {"loss": "ssim"},
        "r54": {"ratio": 0.54},
    }
    with Store(tmp_path / "r.db") as store:
        for t, seed in enumerate((1, 3, 4)):
            images = rng.uniform(0.02, 0.08, size=24)  # each training seed's base has its own quality
            for name, shift in shifts.items():
                path = _schedule(tmp_path / f"{name}-t{seed}", condition_seed=seed, noise_seed=seed, **changes[name])
                values = images + shift[t] + (0 if name in ("base", "delta_0") else rng.normal(0, 1e-4, size=24))
                store.put(
                    _row(
                        f"{name}{seed}",
                        "diffsparse",
                        values,
                        params={"schedule": path},
                        label=f"diffsparse_{name}-t{seed}",
                    )
                )
    table = report.ablations(Store(tmp_path / "r.db", readonly=True).frame())
    records = {r["variant"]: r for r in table.records()}
    assert records["drop = s2"]["verdict"] == "reproduces" and records["drop = s2"]["training_seeds"] == 3
    assert records["drop = s2"]["lpips_alex_difference"] == pytest.approx(np.mean([0.010, 0.012, 0.009]), abs=1e-4)
    assert records["importance = norm"]["verdict"] == "does not reproduce (the variant is better)"
    assert records["delta = 0"]["verdict"] == "cannot be separated (identical outputs)"
    assert records["loss = ssim"]["verdict"] == "cannot be separated at this size"
    assert "ratio = 0.54" not in records and "diffsparse_r54-t1" in " ".join(table.notes)
    assert records["loss = ssim"]["paper_fid"] == "26.91 → 27.46"
    assert cli_main(["table", "--layout", "ablations", "--store", str(tmp_path / "r.db")]) == 0
    assert "| Table 10 |" in capsys.readouterr().out
    (tmp_path / "ssim-t3" / "schedule.json").unlink()
    assert cli_main(["table", "--layout", "ablations", "--store", str(tmp_path / "r.db")]) == 2
    assert "ssim-t3/schedule.json is not there" in capsys.readouterr().err


def test_sample_size_table_says_how_many_images_separate_neighbours(tmp_path):
    rng = np.random.default_rng(11)
    base = rng.uniform(0.05, 0.2, size=32)
    with Store(tmp_path / "r.db") as store:
        store.put(_row("a", "a", base))
        store.put(_row("b", "b", base + 0.0005 + rng.normal(0, 0.002, size=32)))  # close: needs more images
        store.put(_row("c", "c", base + 0.05 + rng.normal(0, 0.002, size=32)))  # clearly apart already
    records = report.sample_size(Store(tmp_path / "r.db", readonly=True).frame()).records()
    assert [(r["better"], r["next"], r["separated"]) for r in records] == [("a", "b", "no"), ("b", "c", "yes")]
    assert records[0]["units"] == 32 and records[0]["units_needed"] > 32 > records[1]["units_needed"]
