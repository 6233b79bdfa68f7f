"""DuCa, DeepCache and TaylorSeer on the tiny pipelines of conftest.

See docs/methods/duca.md, docs/methods/deepcache.md and docs/methods/taylorseer.md.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import Fixed, dit_pipeline, pixart_pipeline, run_dit, run_pixart, tiny_dit

import dsbench
from dsbench import methods
from dsbench.methods import FULL, REUSE
from dsbench.methods.base import method_class


def _calls(steps, batch=4, same=False):
    """Fixed inputs of a bare tiny DiT for ``steps`` calls (independent of the outputs)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 4, 8, 8, generator=g)
    labels = torch.tensor([1, 2, 1000, 1000][:batch])
    return [(x + 0.1 * i * (not same), torch.full((batch,), 900 - 40 * i * (not same)), labels) for i in range(steps)]


def _run_bare(model, method, calls, spy=False):
    """Outputs, report, per-step MAC records and (with ``spy``) every layer output by (step, layer)."""
    outs, seen = [], {}
    with torch.no_grad(), dsbench.attach(model, method, num_steps=len(calls)) as handle:
        if spy:
            original = handle.engine.layer
            handle.engine.layer = lambda ell, h, compute: seen.setdefault(
                (handle.engine.step, ell), original(ell, h, compute)
            )
        for x, t, y in calls:
            outs.append(model(x, t, y).sample)
        return outs, handle.report(), handle.engine.branches["main"].steps, seen


def _psnr(a, b):
    return float(10 * np.log10(1.0 / np.mean((a - b) ** 2)))


def _blocks_of(rep, step):
    """Per block: the set of decisions of its layers at ``step``."""
    out = {}
    for name, d in zip(rep["layers"], rep["decisions"][step]):
        out.setdefault(int(name.split(".")[0].removeprefix("main")), set()).add(d)
    return out


def test_registered_with_budget_fields():
    assert {"duca", "deepcache", "taylorseer"} <= set(methods.available())
    for name, field in (("duca", "ratio"), ("deepcache", "interval"), ("taylorseer", "interval")):
        cls = method_class(name)
        assert cls.budget_field == field and field in cls.Config.model_fields


# -- DuCa ----------------------------------------------------------------------------------------------
def test_duca_pixart_alternates_full_partial_and_aggressive_steps():
    pipe = pixart_pipeline()
    with dsbench.attach(pipe, methods.build("duca")) as handle:
        run_pixart(pipe, steps=20)
        rep = handle.report()
        records = handle.engine.branches["main"].steps
    assert rep["config"]["ratio"] == 0.75 and rep["config"]["bonus"] == 0.4 and rep["config"]["interval"] == 3
    assert rep["full_steps"] == list(range(0, 20, 3))
    aggressive = [i for i, d in enumerate(rep["directives"]) if d == "REUSE_OUTPUT"]
    assert aggressive == list(range(2, 20, 3))
    full_cost = rep["macs_per_step"][0]
    for i in aggressive:  # every block skipped: only embedders and the final layer run
        assert set(rep["decisions"][i]) == {"REUSE"}
        assert records[i].macs_per_layer == {} and rep["macs_per_step"][i] < 0.2 * full_cost
    layers = rep["layers"]
    for i in range(1, 20, 3):  # conservative: ToCa partial steps (sa reused; ca/mlp top-k, skipped, or all
        row = dict(zip(layers, rep["decisions"][i]))  # tokens where the clamped ratio reaches 1)
        assert any(d.startswith("TOPK") for d in row.values())
        assert all(d == "REUSE" for name, d in row.items() if name.endswith(".sa"))
        assert rep["macs_per_step"][i] < full_cost
    # ca at step 19, block 1: r = 0.75·(1.9 − 1.8·19/20)·(1.6 − 1.2)·0.6 = 0.0342 → int(0.547) = 0 tokens:
    # the module is skipped entirely, its text K/V included
    ca = layers.index("main1.ca")
    assert rep["decisions"][19][ca] == "REUSE" and ca not in records[19].macs_per_layer
    # mlp at step 1, block 1: r = 0.75·1.81·0.4·1.6 = 0.8688 → int(13.9) = 13 of 16 tokens
    assert rep["decisions"][1][layers.index("main1.mlp")] == "TOPK(13)"


def test_duca_dit_follows_tocas_threshold_with_the_per_layer_quirk():
    pipe = dit_pipeline(num_layers=3)
    with dsbench.attach(pipe, methods.build("duca")) as handle:
        run_dit(pipe, steps=50)
        rep = handle.report()
    assert rep["config"]["cfg_selection"] == "per_half" and rep["config"]["bonus"] == 0.8
    assert rep["full_steps"] == [0, 5, 9, 13, 19, 22, 25, 28, 31, 33, 35, 37, 39, 41, 43, 45, 47, 49]
    # s = 49 − i with θ = 5 (steps 1-3), then 4 (6-16): s mod θ even → aggressive; θ = 2 for s in [10, 20)
    assert [i for i, d in enumerate(rep["directives"]) if d == "REUSE_OUTPUT"] == [2, 7, 11, 15, 20, 23, 26, 29]
    # step 17 (s = 32): block 0 full under θ = 4, which becomes 3 there; blocks 1-2 see 32 mod 3 = 2
    # (aggressive inside a computed step): as in the reference they are skipped and the last block
    # returns the previous step's final hidden state (REUSE_OUTPUT(1); D-1 of issue 21)
    assert _blocks_of(rep, 17) == {0: {"FULL"}, 1: {"REUSE"}, 2: {"REUSE"}}
    assert rep["directives"][17] == "REUSE_OUTPUT(1)"
    # step 30 (s = 19, θ = 2): partial, sa reused and mlp top-k (step factor 3 − 4·19/50 = 1.48)
    row = dict(zip(rep["layers"], rep["decisions"][30]))
    assert all(d == "REUSE" for name, d in row.items() if name.endswith(".sa"))
    assert all(d.startswith("TOPK") for name, d in row.items() if name.endswith(".mlp"))


def test_duca_at_zero_ratio_keeps_the_interval_constant():
    """D-3 of issue 21: with R = 0 the reference's force_scheduler keeps θ = N (no step weight, no forced
    θ = 2 window), so DiT full steps fall at s = 49 − i ≡ 0 mod N (with R > 0 they follow ToCa's weighted
    θ: test_duca_dit_follows_tocas_threshold_with_the_per_layer_quirk)."""
    pipe = dit_pipeline(num_layers=2)
    with dsbench.attach(pipe, methods.build("duca", ratio=0.0, interval=3)) as handle:
        run_dit(pipe, steps=50)
        rep = handle.report()
    assert rep["full_steps"] == [0] + [i for i in range(1, 50) if (49 - i) % 3 == 0]
    aggressive = [i for i, d in enumerate(rep["directives"]) if d == "REUSE_OUTPUT"]
    assert aggressive == [i for i in range(1, 50) if (49 - i) % 3 == 2]


def test_duca_vnorm_score_runs_without_attention_probabilities():
    pipe = pixart_pipeline()
    with dsbench.attach(pipe, methods.build("duca", importance="vnorm")) as handle:
        first = run_pixart(pipe, steps=8)
        second = run_pixart(pipe, steps=8)
        rep = handle.report()
        wants = set().union(*handle.engine._wants.values())
    assert rep["config"]["importance"] == "vnorm" and wants == {"value_norm"}
    assert any(d.startswith("TOPK") for row in rep["decisions"] for d in row)
    assert np.array_equal(first, second)  # state resets at every pipeline call


# -- DeepCache -----------------------------------------------------------------------------------------
def test_deepcache_refresh_steps_equal_the_full_model():
    model = tiny_dit(num_layers=4)
    calls = _calls(6)
    full, _, _, _ = _run_bare(model, methods.build("full"), calls)
    cached, rep, records, _ = _run_bare(model, methods.build("deepcache"), calls)
    assert rep["directives"] == ["NORMAL", "BLOCK_RESIDUAL(1,0)"] * 3
    for i in (0, 2, 4):
        assert torch.equal(cached[i], full[i])
    for i in (1, 3, 5):
        assert not torch.allclose(cached[i], full[i], atol=1e-4)
        assert _blocks_of(rep, i) == {0: {"FULL"}, 1: {"REUSE"}, 2: {"REUSE"}, 3: {"REUSE"}}
        assert set(records[i].macs_per_layer) == {0, 1}  # only block 0's sa and mlp ran


def test_deepcache_front_and_back_blocks_run_and_the_residual_is_added_once():
    model = tiny_dit(num_layers=5)
    calls = _calls(2, same=True)  # same input twice: R reproduces the skipped blocks exactly
    outs, rep, _, _ = _run_bare(model, methods.build("deepcache", front=2, back=1), calls)
    assert _blocks_of(rep, 1) == {0: {"FULL"}, 1: {"FULL"}, 2: {"REUSE"}, 3: {"REUSE"}, 4: {"FULL"}}
    assert torch.allclose(outs[1], outs[0], atol=1e-5)


def test_deepcache_psnr_against_the_uncached_pipeline():
    """The residual is applied exactly once per skipped step (a pitfall in docs/methods/deepcache.md): high PSNR,
    falling as more steps are cached."""
    pipe = pixart_pipeline(num_layers=6)
    reference = run_pixart(pipe, steps=20)
    psnr = {}
    for interval in (2, 4):
        with dsbench.attach(pipe, methods.build("deepcache", interval=interval)):
            psnr[interval] = _psnr(run_pixart(pipe, steps=20), reference)
    assert psnr[2] > 45 and psnr[2] > psnr[4] + 2


def test_deepcache_quadratic_schedule():
    from dsbench.methods.deepcache import quadratic_refresh

    for steps, interval in ((20, 2), (50, 3), (50, 5), (7, 1)):
        refresh = quadratic_refresh(steps, interval, center=0.3)
        assert len(refresh) == -(-steps // interval) and refresh[0] == 0
        assert refresh == sorted(set(refresh)) and refresh[-1] <= steps - 1
    gaps = np.diff(quadratic_refresh(50, 3, center=0.3))
    centre = int(np.argmin(np.abs(np.array(quadratic_refresh(50, 3, center=0.3)) - 15)))
    assert gaps[centre] < gaps[0] and gaps[centre] < gaps[-1]  # denser around the centre
    pipe = pixart_pipeline()
    with dsbench.attach(pipe, methods.build("deepcache", schedule="quadratic")) as handle:
        run_pixart(pipe, steps=20)
        rep = handle.report()
    assert rep["full_steps"] == rep["config"]["refresh_steps"] == quadratic_refresh(20, 2, 0.3)


def test_deepcache_needs_a_cached_middle_block():
    model = tiny_dit(num_layers=2)
    with pytest.raises(ValueError, match="front \\+ back"):
        _run_bare(model, methods.build("deepcache", front=1, back=1), _calls(2))


# -- TaylorSeer ----------------------------------------------------------------------------------------
def test_taylorseer_full_steps_per_model():
    pipe = pixart_pipeline()
    with dsbench.attach(pipe, methods.build("taylorseer")) as handle:
        run_pixart(pipe, steps=20)
        rep = handle.report()
    assert rep["config"] == {"interval": 2, "order": 1, "warmup": 2}
    assert rep["full_steps"] == [0, 1] + list(range(3, 20, 2))
    assert all(set(rep["decisions"][i]) == {"TAYLOR(1)"} for i in range(2, 20, 2))
    pipe = dit_pipeline()
    with dsbench.attach(pipe, methods.build("taylorseer")) as handle:
        run_dit(pipe, steps=50)
        rep = handle.report()
    assert rep["config"] == {"interval": 4, "order": 4, "warmup": 2}
    assert rep["full_steps"] == [0, 1] + list(range(5, 50, 4)) and len(rep["full_steps"]) == 14


def test_taylorseer_order_zero_is_plain_reuse():
    full_steps = {0, 1, 3, 5, 7}
    reuse = Fixed(lambda i, layer: FULL if i in full_steps else REUSE)
    pipe = pixart_pipeline()
    with dsbench.attach(pipe, reuse):
        reused = run_pixart(pipe, steps=8)
    with dsbench.attach(pipe, methods.build("taylorseer", order=0)):
        order0 = run_pixart(pipe, steps=8)
    with dsbench.attach(pipe, methods.build("taylorseer", order=1)):
        order1 = run_pixart(pipe, steps=8)
    assert np.array_equal(order0, reused)
    assert not np.array_equal(order1, reused)


def test_taylorseer_forecast_uses_step_index_distances():
    """Full at 0, 1, 4, 7 (N = 3, W = 2); at step 6: ŷ = y4 + (y4 − y1)/3 · 2."""
    model = tiny_dit()
    calls = _calls(7)
    _, rep, _, seen = _run_bare(model, methods.build("taylorseer", interval=3, order=1, warmup=2), calls, spy=True)
    assert rep["full_steps"] == [0, 1, 4]
    for ell in range(len(rep["layers"])):
        y1, y4 = seen[(1, ell)], seen[(4, ell)]
        assert torch.allclose(seen[(6, ell)], y4 + (y4 - y1) / 3 * 2, atol=1e-6)


def test_taylorseer_differences_start_at_the_last_warmup_step():
    """TS-1 of issue 21: with W = 3 the authors form finite differences from step W − 1 = 2 on, so the
    forecast at step 3 extrapolates from steps 1 and 2 only (order 1), not from 0, 1, 2 (order 2)."""
    model = tiny_dit()
    calls = _calls(4)
    _, rep, _, seen = _run_bare(model, methods.build("taylorseer", interval=3, order=2, warmup=3), calls, spy=True)
    assert rep["full_steps"] == [0, 1, 2]
    for ell in range(len(rep["layers"])):
        y0, y1, y2 = seen[(0, ell)], seen[(1, ell)], seen[(2, ell)]
        assert torch.allclose(seen[(3, ell)], 2 * y2 - y1, atol=1e-6)
        second_order = 2 * y2 - y1 + ((y2 - y1) - (y1 - y0)) / 2
        assert not torch.allclose(seen[(3, ell)], second_order, atol=1e-6)


def test_taylorseer_history_starts_empty_each_run():
    """With one full step so far the forecast has order 0, in the first run and in the next."""
    pipe = pixart_pipeline()
    with dsbench.attach(pipe, methods.build("taylorseer", warmup=1, interval=3, order=1)):
        first = run_pixart(pipe, steps=2)
        again = run_pixart(pipe, steps=2)
    with dsbench.attach(pipe, methods.build("taylorseer", warmup=1, interval=3, order=0)):
        reuse = run_pixart(pipe, steps=2)
    assert np.array_equal(first, reuse) and np.array_equal(again, reuse)


# -- MAC accounting and validation --------------------------------------------------------------------
@pytest.mark.parametrize("name", ["duca", "deepcache", "taylorseer"])
def test_mac_accounting_counts_what_ran(name):
    model = tiny_dit(num_layers=4)
    calls = _calls(6)
    _, full, _, _ = _run_bare(model, methods.build("full"), calls)
    _, rep, records, _ = _run_bare(model, methods.build(name), calls)
    per_step = full["macs_per_step"][0]
    assert rep["macs_cfg_counted"] < full["macs_cfg_counted"]
    assert sum(rep["macs_per_step"]) == pytest.approx(rep["macs_cfg_not_counted"])
    for i, record in enumerate(records):
        if i in rep["full_steps"]:
            assert record.macs_linear == pytest.approx(per_step)
        else:  # a step only pays for the layers it computed, plus the per-call fixed part
            assert record.macs_linear < per_step
            computed = [ell for ell, d in enumerate(rep["decisions"][i]) if d != "REUSE" and not d.startswith("TAY")]
            assert set(record.macs_per_layer) == set(computed)


def test_cli_macs_json_for_deepcache(capsys):
    from dsbench.cli import main

    assert main(["macs", "--model", "pixart-alpha-256", "--steps", "20", "--method", "deepcache", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["full_steps"] == list(range(0, 20, 2)) and result["macs"] / 1e12 == pytest.approx(1.48, abs=0.01)


@pytest.mark.parametrize(
    "name, params, field",
    [
        ("duca", {"ratio": 5.0}, "ratio"),
        ("duca", {"ratio": -0.1}, "ratio"),
        ("duca", {"interval": 0}, "interval"),
        ("duca", {"importance": "norm"}, "importance"),
        ("duca", {"warmup": 2}, "warmup"),
        ("deepcache", {"front": 5}, "front"),
        ("deepcache", {"back": -1}, "back"),
        ("deepcache", {"interval": 0}, "interval"),
        ("deepcache", {"schedule": "cubic"}, "schedule"),
        ("deepcache", {"center": 1.5}, "center"),
        ("taylorseer", {"order": 5}, "order"),
        ("taylorseer", {"warmup": 0}, "warmup"),
        ("taylorseer", {"interval": 0}, "interval"),
    ],
)
def test_bad_parameters_name_the_field(name, params, field):
    with pytest.raises(ValueError, match=f"'{field}'"):
        methods.build(name, **params)
