"""MAC accounting: FlopCounterMode cross-check on real models, and the METHODS §0.9 calibration."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import Fixed, tiny_dit, tiny_pixart

import methods
from harness.accounting import (CALIBRATION, CALIBRATION_TOLERANCE, architecture_macs, flop_counter,
                                flop_counter_macs)
from harness.cli import main
from methods import FULL, topk


def _inputs(family, batch=4):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 4, 8, 8, generator=g)
    t = torch.full((batch,), 500)
    if family == "dit":
        return {"hidden_states": x, "timestep": t, "class_labels": torch.tensor([3, 4, 1000, 1000][:batch])}
    mask = torch.ones(batch, 6)
    mask[0, 4:] = 0
    return {"hidden_states": x, "timestep": t, "encoder_hidden_states": torch.randn(batch, 6, 12, generator=g),
            "encoder_attention_mask": mask, "added_cond_kwargs": {"resolution": None, "aspect_ratio": None}}


@pytest.mark.parametrize("family", ["dit", "pixart"])
@pytest.mark.parametrize("score", [None, "attention"])
def test_executor_macs_equal_flop_counter(family, score):
    """Per-row M_lin and M_attn counted by the executor equal FlopCounterMode's (FLOPs / 2 / batch)."""
    model = (tiny_dit if family == "dit" else tiny_pixart)(num_layers=3)
    kw = _inputs(family)
    batch = kw["hidden_states"].shape[0]
    method = Fixed(lambda i, layer: FULL if i == 0 else topk(5))
    if score:  # explicit attention probabilities instead of SDPA
        from harness.scores import ScoreSpec

        method.score = ScoreSpec(attention_received=1.0, cross_entropy=float(family == "pixart"))
    counted = []
    with torch.no_grad(), methods.attach(model, method, num_steps=2) as handle:
        for _ in range(2):
            with flop_counter() as mode:
                model(**kw)
            counted.append(flop_counter_macs(mode))
        state = handle.engine.branches["main"]
    for step, (linear, attention) in enumerate(counted):
        record = state.steps[step]
        assert record.macs_linear == pytest.approx(linear / batch, rel=1e-9)
        assert record.macs_attention == pytest.approx(attention / batch, rel=1e-9)
    assert state.steps[1].macs_linear < state.steps[0].macs_linear


# -- METHODS §0.9 calibration on the real architectures (meta device) --------------------------------
@pytest.mark.parametrize("model, method, params, steps, expected, published", CALIBRATION)
def test_calibration_table(model, method, params, steps, expected, published):
    result = architecture_macs(model, methods.build(method, **params), steps=steps)
    assert result["macs"] / 1e12 == pytest.approx(expected, abs=CALIBRATION_TOLERANCE)


def test_dit_xl_forward_macs_match_fvcore_count():
    """One DiT-XL/2 forward: M_lin 114.4 G + M_attn 4.2 G ≈ 118.6 G per image (SparseDiT's 118.64 G)."""
    one = architecture_macs("dit-xl-2-256", methods.build("full"), steps=1, cfg_counted=False)
    assert one["macs"] / 1e9 == pytest.approx(114.4, abs=0.1)
    assert (one["macs"] + one["macs_attention"]) / 1e9 == pytest.approx(118.6, abs=0.1)


def test_cli_macs_json(capsys):
    assert main(["macs", "--model", "dit-xl-2-256", "--method", "steps", "--set", "num_steps=2", "--steps", "50",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["cfg_counted"] is True and out["steps"] == 2
    assert out["macs"] / 1e12 == pytest.approx(11.44 * 2 / 50, abs=0.005)
    assert out["macs_attention"] > 0 and out["macs_cfg_not_counted"] == pytest.approx(out["macs"] / 2)


def test_cli_rejects_bad_parameters(capsys):
    assert main(["macs", "--model", "pixart-alpha-256", "--method", "toca", "--set", "ratio=2"]) == 2
    assert "'ratio'" in capsys.readouterr().err
    assert main(["macs", "--model", "pixart-alpha-256", "--method", "nope"]) == 2
    assert "available methods" in capsys.readouterr().err
