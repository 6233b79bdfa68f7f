"""The learned-vs-search comparison end to end on the embedded text-conditional model, tiny setting."""

from __future__ import annotations

import json

import pytest

from dsbench.methods.diffsparse.schedule import load_schedule
from dsbench.training.compare import main

LABELS = [
    "uncached model (teacher)",
    "ToCa (its default configuration)",
    "ToCa-initialised costs, DP at the same MACs (untrained)",
    "DiffSparse (learned)",
    "GA search",
    "random search",
]


def test_compare_tiny_run_writes_the_table(tmp_path):
    out = tmp_path / "compare"
    main(
        [
            "--model",
            "shapes-pixart",
            "--minutes",
            "0.05",
            "--out",
            str(out),
            "--eval-n",
            "4",
            "--fitness-n",
            "2",
            "--conditions",
            "2",
            "--batch",
            "2",
            "--val-conditions",
            "2",
        ]
    )
    result = json.loads((out / "results.json").read_text())
    rows = {r["schedule"]: r for r in result["rows"]}
    assert list(rows) == LABELS
    ratio = result["ratio"]
    assert rows["ToCa (its default configuration)"]["macs_ratio"] == pytest.approx(1 - ratio)
    for label in LABELS[2:]:  # every searched or learned schedule sits at ToCa's MACs (budget window Δ)
        assert rows[label]["macs_ratio"] == pytest.approx(1 - ratio, abs=0.01)
        assert rows[label]["lpips_alex"] > 0 and rows[label]["fid"] > 0
        low, high = rows[label]["lpips_alex_ci"]
        assert low <= rows[label]["lpips_alex"] <= high and len(rows[label]["fid_ci"]) == 2  # 95 % intervals
    assert rows["uncached model (teacher)"]["lpips_alex"] == pytest.approx(0.0, abs=1e-6)
    for arm in ("diffsparse", "ga", "random"):
        assert load_schedule(out / arm / "schedule.json").meta["budget_ratio"] == pytest.approx(ratio)
    assert min(result["search_evaluations"].values()) >= 1
    assert result["validation"]["history"][0]["label"] == "ToCa init"
    table = (out / "table.md").read_text()
    assert all(f"| {label} |" in table for label in LABELS)
    assert (out / "command.txt").read_text().startswith("python -m dsbench.training.compare --model shapes-pixart")
    assert "budget R" in (out / "log.txt").read_text()


def test_compare_bad_settings_fail_before_work(tmp_path):
    with pytest.raises(ValueError, match="--minutes"):
        main(["--model", "shapes-pixart", "--minutes", "0", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="--lr-scale"):
        main(["--model", "shapes-pixart", "--minutes", "1", "--out", str(tmp_path), "--lr-scale", "-1"])
    assert not list(tmp_path.iterdir())
