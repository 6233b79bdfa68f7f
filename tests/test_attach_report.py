"""``handle.report()`` over every pipeline call since attach: MACs averaged over the calls, weighted by their
images, each call's own report under ``per_call``."""

from __future__ import annotations

import pytest
from conftest import dit_pipeline, run_dit

import dsbench
from dsbench import methods
from dsbench.engine import AVERAGED

# (labels, steps) of each call: FORA with interval 2 computes 2 of 4, 3 of 6 and 4 of 7 steps in full, so the
# calls' MACs per image differ; the last call has two images
CALLS = [((1,), 4), ((2,), 6), ((3,), 7), ((4, 5), 6)]


@pytest.fixture
def dit_pipe():
    return dit_pipeline()


def alone(pipe, labels, steps) -> dict:
    """The report of one call with a fresh attachment (the single-call meaning every key keeps)."""
    with dsbench.attach(pipe, methods.build("fora", interval=2)) as handle:
        run_dit(pipe, steps=steps, labels=labels)
        return handle.report()


def test_report_averages_every_call_weighted_by_images(dit_pipe):
    singles = [alone(dit_pipe, labels, steps) for labels, steps in CALLS]
    assert len({r["macs_cfg_counted"] for r in singles[:3]}) == 3  # the single-image calls' MACs differ
    with dsbench.attach(dit_pipe, methods.build("fora", interval=2)) as handle:
        for n, (labels, steps) in enumerate(CALLS, 1):
            run_dit(dit_pipe, steps=steps, labels=labels)
            report = handle.report()
            assert report["calls"] == n and len(report["per_call"]) == n
            for key in AVERAGED:
                expected = sum(r[key] * len(c[0]) for r, c in zip(singles, CALLS[:n])) / sum(
                    len(c[0]) for c in CALLS[:n]
                )
                assert report[key] == pytest.approx(expected, rel=1e-12)
    assert report["images"] == 5
    assert report["macs_cfg_counted"] != singles[-1]["macs_cfg_counted"]  # not the last call's alone
    for got, single in zip(report["per_call"], singles):
        for key in ("macs_cfg_counted", "macs_attention_cfg_counted", "num_steps", "full_steps", "decisions"):
            assert got[key] == single[key]
    # the per-step keys describe the most recent call
    assert report["num_steps"] == 6 and report["full_steps"] == singles[-1]["full_steps"]


def test_single_call_report_keeps_its_meaning(dit_pipe):
    with dsbench.attach(dit_pipe, methods.build("fora", interval=2)) as handle:
        run_dit(dit_pipe, steps=6, labels=(1, 2))
        report = handle.report()
    assert report["calls"] == 1 and report["images"] == 2
    assert report["macs_cfg_counted"] == sum(report["macs_per_step"]) * 2  # CFG batched: both halves charged
    assert report["per_call"][0]["macs_cfg_counted"] == report["macs_cfg_counted"]


def test_report_before_any_call_says_so(dit_pipe):
    with dsbench.attach(dit_pipe, methods.build("full")) as handle:
        with pytest.raises(RuntimeError, match="no run yet"):
            handle.report()
