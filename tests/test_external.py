"""The arms that run another library (``cachedit``: cache-dit, ``diffusers_hook``: diffusers' cache hooks) on both
embedded pipelines: the "off" threshold is the plain pipeline bit for bit, a higher threshold never costs more
MACs (counted by dsbench's engine beside the library), detach restores the pipeline, and the refusals."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from conftest import PIPELINES

import dsbench
from dsbench import methods
from dsbench.core import NotApplicable

STEPS = 10
THRESHOLDS = [0.0, 0.05, 0.2, 0.5, 1.0]
ARMS = {
    # cache-dit's default warm-up (8 steps) would leave nothing to reuse in a 10-step run
    "cachedit": ("residual_diff_threshold", {"max_warmup_steps": 0}),
    "diffusers_hook": ("threshold", {"hook": "first_block_cache"}),
}


@pytest.fixture(params=sorted(ARMS))
def arm(request):
    if request.param == "cachedit":
        pytest.importorskip("cache_dit")
    return request.param


def test_threshold_zero_is_the_plain_pipeline_and_higher_thresholds_cost_less(family, arm):
    make, run = PIPELINES[family]
    pipe = make(num_layers=4)
    plain = run(pipe, steps=STEPS)
    with dsbench.attach(pipe, methods.build("full")) as handle:
        run(pipe, steps=STEPS)
        full = handle.report()["macs_cfg_counted"]
    field, params = ARMS[arm]
    macs = []
    for threshold in THRESHOLDS:
        with dsbench.attach(pipe, methods.build(arm, **params, **{field: threshold})) as handle:
            images = run(pipe, steps=STEPS)
            macs.append(handle.report()["macs_cfg_counted"])
        if threshold == 0.0:
            assert np.array_equal(images, plain)
        assert np.array_equal(run(pipe, steps=STEPS), plain)  # detached: the plain pipeline again
    assert macs[0] == full
    assert all(a >= b for a, b in zip(macs, macs[1:])), macs
    assert macs[-1] < full  # the library really skipped blocks, and dsbench counted it


def test_arm_results_repeat_across_pipeline_calls(family, arm):
    """The library's state resets at every pipeline call, as every method's does."""
    make, run = PIPELINES[family]
    pipe = make(num_layers=4)
    field, params = ARMS[arm]
    with dsbench.attach(pipe, methods.build(arm, **params, **{field: 0.5})) as handle:
        first, second = run(pipe, steps=STEPS), run(pipe, steps=STEPS)
        report = handle.report()
    assert np.array_equal(first, second)
    assert report["per_call"][0]["macs_cfg_counted"] == report["per_call"][1]["macs_cfg_counted"]


def test_missing_extra_fails_at_validation_with_the_pip_command(monkeypatch):
    from dsbench.experiment import Experiment, validate

    monkeypatch.setitem(sys.modules, "cache_dit", None)  # what an environment without the extra finds
    with pytest.raises(
        ValueError, match=r'^cachedit needs the optional package .cache_dit.*pip install -e "\.\[external\]"'
    ):
        methods.build("cachedit")
    exp = Experiment.model_validate({"name": "x", "models": ["mnist-dit"], "methods": [{"name": "cachedit"}]})
    with pytest.raises(ValueError, match=r"methods\[0\].*pip install") as err:
        validate(exp)
    assert "\n" not in str(err.value)


def test_a_hook_that_changes_nothing_is_refused_and_the_pipeline_is_untouched(family):
    make, run = PIPELINES[family]
    pipe = make()
    plain = run(pipe, steps=4)
    with pytest.raises(NotApplicable, match="sea_cache changes nothing"):
        dsbench.attach(pipe, methods.build("diffusers_hook", hook="sea_cache"))
    assert not hasattr(pipe.transformer, "_dsbench_handle")
    assert np.array_equal(run(pipe, steps=4), plain)


def test_unknown_hook_options_name_the_allowed_ones():
    with pytest.raises(ValueError, match=r"options \['cache_interval'\] are not fields of FirstBlockCacheConfig"):
        methods.build("diffusers_hook", options={"cache_interval": 2})
    with pytest.raises(ValueError, match=r"'hook' .*first_block_cache.*not offered: taylorseer_cache"):
        methods.build("diffusers_hook", hook="taylorseer_cache")


def test_cachedit_on_a_bare_transformer_is_refused():
    pytest.importorskip("cache_dit")
    make, _run = PIPELINES["dit"]
    pipe = make()
    with pytest.raises(ValueError, match="attach to the pipeline"):
        dsbench.attach(pipe.transformer, methods.build("cachedit"), num_steps=4)
    assert not hasattr(pipe.transformer, "_dsbench_handle")


def test_the_runner_tunes_samples_and_stores_both_arms_at_a_budget(tmp_path, teachers):
    """Like any method: the budget search bisects the threshold, the rows are scored and stored."""
    pytest.importorskip("cache_dit")
    from conftest import run_quietly

    from dsbench import experiment
    from dsbench.store import Store

    exp = experiment.parse(
        {
            "name": "external",
            "models": ["mnist-dit"],
            "steps": 10,
            "eval": {"size": 4},
            "metrics": ["psnr"],
            "latency": {"repeats": 1, "warmup": 0},
            "budget": {"macs_ratio": 0.5},
            "methods": [{"name": "cachedit", "params": {"max_warmup_steps": 2}}, {"name": "diffusers_hook"}],
        },
        "external.yaml",
    )
    store = Store(tmp_path / "r.db")
    run_quietly(exp, store, tmp_path, teachers)
    frame = store.frame("external")
    rows = frame[frame["bracket"] != "above"].set_index("method")
    for arm, field in (("cachedit", "residual_diff_threshold"), ("diffusers_hook", "threshold")):
        row = rows.loc[arm]
        assert 0 < row.tuned[field] <= 1 and row.macs_ratio <= 0.5 and row.n_samples == 4
        assert np.isfinite(row.psnr)


def test_the_quickstart_leaves_out_the_arms_whose_extra_is_missing_and_says_how_to_install_it(monkeypatch):
    from dsbench import quickstart

    everything, none_missing = quickstart.quickstart_experiment()
    assert none_missing == [] and "cachedit" in [m.name for m in everything.methods]
    monkeypatch.setitem(sys.modules, "cache_dit", None)  # what an environment without the extra finds
    exp, unavailable = quickstart.quickstart_experiment()
    assert [m.name for m in exp.methods] == [m.name for m in everything.methods if m.name != "cachedit"]
    assert len(unavailable) == 1 and 'pip install -e ".[external]"' in unavailable[0]
