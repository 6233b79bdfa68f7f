"""The paper's claims decided from a store of synthetic analogue runs with per-image values."""

from __future__ import annotations

import numpy as np
import pytest
from test_report import run_row

from dsbench import claims
from dsbench.store import Store

SCHEDULE = "results/paper/schedules/shapes-pixart/r43/schedule.json"


def _put(store, run_id, method, values, params=None, ratio=0.57):
    store.put(
        run_row(
            run_id,
            method,
            0,
            params=params,
            model="shapes-pixart",
            experiment="paper_table1",
            macs_ratio=ratio,
            lpips_alex=float(np.mean(values)),
            per_sample={"lpips_alex": {"values": list(values)}},
        )
    )


def test_main_comparison_verdicts_follow_the_paired_interval(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.uniform(0.01, 0.02, 64)
    with Store(tmp_path / "r.db") as store:
        _put(store, "d", "diffsparse", base, {"schedule": SCHEDULE})
        _put(store, "t", "toca", base + 0.005 + rng.normal(0, 0.001, 64))  # clearly worse: the claim holds
        _put(store, "u", "duca", base + rng.normal(0, 0.002, 64), {"ratio": 1.0})  # the same up to noise
        _put(store, "f", "fora", base - 0.004 + rng.normal(0, 0.001, 64), {"interval": 2}, ratio=0.5)  # better
        rows = {
            r["compared"].split(" in ")[0].replace("DiffSparse (R=43%) − ", "vs "): r
            for r in claims.claims(store.frame()).records()
            if r["source"] == "Table 1"
        }
    assert rows["vs ToCa"]["verdict"] == "reproduces"
    assert rows["vs ToCa"]["difference"] == pytest.approx(-0.005, abs=5e-4)
    assert rows["vs ToCa"]["difference_ci_high"] < 0
    assert rows["vs DuCa"]["verdict"] == "cannot be separated at this size"
    assert rows["vs FORA (N=2)"]["verdict"] == "does not reproduce (the other is better)"
    assert rows["vs FORA (N=2)"]["macs_ratio"] == "0.570 vs 0.500"
    assert rows["vs TaylorSeer"]["verdict"].startswith("not measured")
    assert rows["vs ToCa"]["paper_fid"] == "28.35 → 26.91"  # the paper's evidence: ToCa's FID → DiffSparse's


@pytest.mark.parametrize("wrong, verdict", [(2, "reproduces"), (120, "does not reproduce (0.300 below")])
def test_keeping_quality_within_a_margin_is_decided_by_the_whole_interval(tmp_path, wrong, verdict):
    with Store(tmp_path / "r.db") as store:
        for run_id, method, misses in (("f", "full", 0), ("s", "sparsedit", wrong)):
            values = [0.0] * misses + [1.0] * (400 - misses)
            store.put(
                run_row(
                    run_id,
                    method,
                    0,
                    model="mnist-dit",
                    experiment="paper_sparsedit",
                    macs_ratio=0.756,
                    class_accuracy=float(np.mean(values)),
                    per_sample={"class_accuracy": {"values": values}},
                )
            )
        (row,) = [r for r in claims.claims(store.frame(), ["others"]).records()]
    assert row["verdict"].startswith(verdict)
    assert row["difference"] == pytest.approx(-wrong / 400)
    assert row["macs_ratio"] == "0.756"
