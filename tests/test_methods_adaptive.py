"""The adaptive caches TeaCache, First-Block Cache and MagCache on the tiny pipelines of conftest.

See docs/methods/teacache.md, docs/methods/fbcache.md and docs/methods/magcache.md.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch
from conftest import PIPELINES, Fixed, tiny_dit

import dsbench
from dsbench import methods, runner
from dsbench.cli import main
from dsbench.core import FULL, NORMAL, RunInfo, block_residual
from dsbench.magcache_calibration import magnitude_ratios
from dsbench.methods.base import method_class
from dsbench.methods.magcache import nearest_ratios, reused_steps

ROOT = Path(__file__).resolve().parents[1]
ADAPTIVE = ("teacache", "fbcache", "magcache")
STEPS = 10


@pytest.fixture(scope="module")
def calibrations(tmp_path_factory):
    """A MagCache calibration file per family, from one plain run of its tiny pipeline."""
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("magcache")
    files = {}
    for family, (make, run) in PIPELINES.items():
        pipe = make(num_layers=4)
        ratios, _ = magnitude_ratios(pipe, functools.partial(run, pipe, steps=STEPS))
        files[family] = folder / f"{family}.json"
        files[family].write_text(json.dumps({"family": family, "ratios": ratios}))
    return files


def _build(name: str, family: str, calibrations, **params):
    extra = {"ratios": str(calibrations[family])} if name == "magcache" else {}
    extra |= {"warmup": 1} if name == "fbcache" else {}  # cache-dit's 8 warm-up steps would leave 1 of 10
    return methods.build(name, **extra, **params)


def _sample(family: str, method=None):
    make, run = PIPELINES[family]
    pipe = make(num_layers=4)
    if method is None:
        return run(pipe, steps=STEPS), None
    with torch.no_grad(), dsbench.attach(pipe, method) as handle:
        return run(pipe, steps=STEPS), handle.report()


def test_registered_with_float_threshold_budgets():
    for name in ADAPTIVE:
        cls = method_class(name)
        assert cls.budget_field == "threshold"
        low, high, is_int = runner._bounds(cls, "threshold", STEPS)
        assert low == 0.0 and high > low and not is_int


@pytest.mark.parametrize("name", ADAPTIVE)
def test_threshold_zero_is_the_plain_pipeline(name, family, calibrations):
    plain, _ = _sample(family)
    images, report = _sample(family, _build(name, family, calibrations, threshold=0.0))
    assert report["reused_steps"] == []
    assert report["directives"] == ["NORMAL"] * STEPS
    assert (images == plain).all()


@pytest.mark.parametrize("name", ADAPTIVE)
def test_raising_the_threshold_never_adds_macs(name, family, calibrations):
    macs, reused = [], []
    for threshold in (0.0, 0.02, 0.05, 0.1, 0.2, 0.4, 0.8):
        images, report = _sample(family, _build(name, family, calibrations, threshold=threshold))
        macs.append(report["macs_cfg_not_counted"])
        reused.append(report["reused_steps"])
        skipped = [i for i, d in enumerate(report["directives"]) if d.startswith("BLOCK_RESIDUAL")]
        assert report["reused_steps"] == skipped
    assert macs == sorted(macs, reverse=True), (macs, reused)
    assert macs[-1] < macs[0], "the largest threshold reuses some step"


def _run(family: str, steps: int) -> RunInfo:
    return RunInfo(
        family=family,
        num_steps=steps,
        layers=[],
        n_image=4,
        n_text=0,
        grid=(2, 2),
        batch=1,
        cfg_batched=False,
        blocks_per_stream={"main": 4},
    )


def _drive(method, family: str, signals: list[float], branch: str = "main") -> list[int]:
    """The steps ``method`` reuses when its probe sees ``signals[i]`` · ones at step i."""
    method.reset(_run(family, len(signals)))
    return [i for i, c in enumerate(signals) if method.reuse_after_probe(i, torch.full((1, 4, 2), c), branch)]


def test_teacache_decisions_by_hand():
    # each step changes the signal by 10 % (relative L1 0.1): the sum passes δ = 0.25 at the third step,
    # which computes and resets; the first and the last step always compute
    assert _drive(methods.build("teacache", threshold=0.25), "dit", [1.1**i for i in range(6)]) == [1, 2, 4]
    # a rescaling polynomial 2x: every change counts 0.2, so every second step computes
    doubled = methods.build("teacache", threshold=0.25, coefficients=[2.0, 0.0])
    assert _drive(doubled, "dit", [1.1**i for i in range(6)]) == [1, 3]
    # negative values of the polynomial count as no change: δ = 0 still never reuses
    negative = methods.build("teacache", threshold=0.0, coefficients=[1.0, -0.5])
    assert _drive(negative, "dit", [1.1**i for i in range(6)]) == []
    # FLUX takes the published polynomial by default, the other families the plain distance
    flux = methods.build("teacache")
    flux.reset(_run("flux", 6))
    assert flux.resolved_config() == {
        "threshold": 0.4,
        "coefficients": [4.98651651e02, -2.83781631e02, 5.58554382e01, -3.82021401e00, 2.64230861e-01],
    }
    flux.reset(_run("pixart", 6))
    assert flux.resolved_config() == {"threshold": 0.1, "coefficients": [1.0, 0.0]}


def test_teacache_keeps_one_accumulator_per_branch():
    method = methods.build("teacache", threshold=0.25)
    method.reset(_run("wan", 6))
    seen = {"cond": [], "uncond": []}
    for i in range(6):  # cond changes by 10 % per step, uncond by 30 %
        for branch, rate in (("cond", 1.1), ("uncond", 1.3)):
            if method.reuse_after_probe(i, torch.full((1, 4, 2), rate**i), branch):
                seen[branch].append(i)
    assert seen == {"cond": [1, 2, 4], "uncond": []}


def test_fbcache_decisions_by_hand():
    method = methods.build("fbcache", threshold=0.15, warmup=2, max_consecutive=2)
    signals = [1.0, 1.1, 1.15, 1.3, 1.32, 1.34, 1.36, 1.38]
    # 0 and 1 warm up (computed, 1.1 kept); 2: 0.05/1.1 reuses; 3: 0.2/1.1 > 0.15 computes (1.3 kept);
    # 4, 5 reuse (0.02/1.3, 0.04/1.3); 6 computes: two reuses in a row is the cap (1.36 kept); 7 reuses
    assert _drive(method, "dit", signals) == [2, 4, 5, 7]
    assert method.resolved_config()["front"] == 1  # a 4-block model: First-Block Cache, F1B0


def test_magcache_decisions_by_hand():
    ratios = [1.0, 1.0, 0.9, 1.0, 1.0, 1.0, 1.1, 1.0]
    # retention 0.25 of 8 steps computes 0 and 1; from 2 the product 0.9, 0.9, 0.9 gives errors
    # 0.1, 0.2 (reused), 0.3 (computed, reset); then 1.0, 1.1, 1.1: 0, 0.1 (reused), then a third skip > K = 2
    assert reused_steps(ratios, threshold=0.25, max_skips=2, retention=0.25) == [2, 3, 5, 6]
    assert reused_steps(ratios, threshold=0.0, max_skips=2, retention=0.25) == []
    assert nearest_ratios([1.0, 2.0, 3.0], 5) == [1.0, 1.0, 2.0, 3.0, 3.0]  # np.round, as MagCache: half to even


def test_probe_on_a_constructed_input():
    """A bare tiny DiT called with the same input at every step except step 3: the first block's modulated input
    does not change (TeaCache reuses), then changes twice (3 and 4 compute); the last step computes."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=g)
    t, y = torch.full((2,), 500), torch.tensor([1, 2])
    inputs = [x, x, x, x + 1.0, x, x]
    model = tiny_dit(num_layers=4)
    with torch.no_grad():
        plain = [model(h, t, y).sample for h in inputs]
        with dsbench.attach(model, methods.build("teacache", threshold=0.1), num_steps=len(inputs)) as handle:
            cached = [model(h, t, y).sample for h in inputs]
            report = handle.report()
    assert report["reused_steps"] == [1, 2]
    assert report["directives"] == ["NORMAL", "BLOCK_RESIDUAL(0,0)", "BLOCK_RESIDUAL(0,0)"] + ["NORMAL"] * 3
    assert all(d == "REUSE" for d in report["decisions"][1])
    for i in (0, 3, 4, 5):
        assert torch.equal(cached[i], plain[i])
    for i in (1, 2):  # the same input plus the residual it produced at step 0
        torch.testing.assert_close(cached[i], plain[i])
    # a reused step costs what a planned BLOCK_RESIDUAL(0, 0) step costs plus the probe: block 0's modulation
    planned = Fixed(
        lambda i, layer: FULL, directive=lambda i: block_residual(0, 0) if i else NORMAL, residual_spans=((0, 0),)
    )
    with torch.no_grad(), dsbench.attach(model, planned, num_steps=2) as handle:
        for h in inputs[:2]:
            model(h, t, y)
        skipped = handle.report()["macs_per_step"][1]
    assert report["macs_per_step"][1] - skipped == _linear_macs(model.transformer_blocks[0].norm1, tokens=1)


def _linear_macs(module: torch.nn.Module, tokens: int) -> int:
    return sum(m.weight.numel() * tokens for m in module.modules() if isinstance(m, torch.nn.Linear))


def _block_macs(block) -> int:
    """Linear MACs of one tiny DiT block per batch row: its modulation once per row, the rest per image token."""
    return _linear_macs(block, tokens=16) - _linear_macs(block.norm1, tokens=15)


def test_fbcache_probe_counts_the_first_blocks():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=g)
    t, y = torch.full((2,), 500), torch.tensor([1, 2])
    model = tiny_dit(num_layers=4)
    method = methods.build("fbcache", threshold=0.1, warmup=1, front=1, back=1)
    with torch.no_grad(), dsbench.attach(model, method, num_steps=4) as handle:
        for _ in range(4):
            model(x, t, y)
        report = handle.report()
    assert report["reused_steps"] == [1, 2, 3]
    assert report["directives"][1] == "BLOCK_RESIDUAL(1,1)"
    skipped = sum(_block_macs(model.transformer_blocks[b]) for b in (1, 2))
    assert report["macs_per_step"][0] - report["macs_per_step"][1] == skipped


def test_magcache_needs_its_calibration(tmp_path):
    with pytest.raises(ValueError, match=r"^magcache: parameter 'ratios' is required: .*dsbench calibrate magcache"):
        methods.build("magcache")
    with pytest.raises(ValueError, match=r"^magcache: no calibration file .*dsbench calibrate magcache --model MODEL"):
        methods.build("magcache", ratios=str(tmp_path / "missing.json"))
    wrong = tmp_path / "pixart.json"
    wrong.write_text(json.dumps({"family": "pixart", "ratios": [1.0] * STEPS}))
    with pytest.raises(ValueError, match=r"calibrates a pixart model, not this dit model"):
        _sample("dit", methods.build("magcache", ratios=str(wrong)))


def test_calibration_command_writes_the_file(tmp_path, capsys):
    out = tmp_path / "ratios.json"
    assert main(["calibrate", "magcache", "--model", "mnist-dit", "--steps", "4", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["model"] == "mnist-dit" and record["family"] == "dit" and record["steps"] == 4
    assert len(record["ratios"]) == 4 and record["ratios"][0] == 1.0 and all(r > 0 for r in record["ratios"])
    assert record["command"] == "dsbench calibrate magcache --model mnist-dit --steps 4 --seed 0"
    assert "cores" in record["machine"]
    assert str(out) in capsys.readouterr().out


def test_committed_calibrations_build():
    for model in ("mnist-dit", "shapes-pixart"):
        path = str(ROOT / "results" / "magcache" / model / "ratios.json")
        method = methods.build("magcache", ratios=path)
        assert method.calibration["model"] == model and len(method.calibration["ratios"]) == 20


def _flux_pipeline():
    from test_adapter_flux import tiny_pipeline

    return tiny_pipeline()


def _recording(method, shapes: list):
    """``method`` with the shape and branch of every probe signal appended to ``shapes``."""
    answer = method.reuse_after_probe
    method.reuse_after_probe = lambda i, signal, branch: (
        shapes.append((tuple(signal.shape), branch)) or answer(i, signal, branch)
    )
    return method


@pytest.mark.parametrize("name", ["teacache", "fbcache"])
def test_flux_and_wan_probe_image_rows_per_cfg_pass(name):
    """Separate CFG passes probe each on its own; the signal holds the image tokens only (FLUX: not the text)."""
    from test_adapter_flux import N as FLUX_TOKENS
    from test_adapter_flux import generate as flux_generate
    from test_adapter_wan import generate as wan_generate
    from test_adapter_wan import make_model, tiny_pipeline

    flux = _flux_pipeline()
    wan = tiny_pipeline(make_model())
    cases = (
        (flux, lambda: flux_generate(flux, true_cfg=True), 4, FLUX_TOKENS),
        (wan, lambda: wan_generate(wan, steps=6), 6, 2 * 8 * 8 // 4),  # 2 latent frames of 8×8, patches 2×2
    )
    for pipe, generate, steps, tokens in cases:
        with torch.no_grad(), dsbench.attach(pipe, methods.build("full")) as handle:
            full = generate()
        shapes: list = []
        with torch.no_grad(), dsbench.attach(pipe, _recording(methods.build(name, threshold=0.0), shapes)) as handle:
            assert torch.equal(generate(), full)
            assert handle.report()["reused_steps"] == []
        assert [branch for _, branch in shapes] == ["cond", "uncond"] * steps
        assert {shape[:2] for shape, _ in shapes} == {(1, tokens)}
        loose = methods.build(name, threshold=1.0, **({"warmup": 1} if name == "fbcache" else {}))
        with torch.no_grad(), dsbench.attach(pipe, loose) as handle:
            assert torch.isfinite(generate()).all()
            report = handle.report()
        assert report["branches"] == ["cond", "uncond"] and report["reused_steps"]


@pytest.mark.parametrize("name", ADAPTIVE)
def test_budget_search_tunes_the_threshold(name, calibrations):
    """The runner's bisection over a float threshold whose MACs fall as it grows."""
    params = {"ratios": str(calibrations["dit"])} if name == "magcache" else {}
    params |= {"warmup": 1} if name == "fbcache" else {}

    def macs_of(method):
        return _sample("dit", method)[1]["macs_cfg_not_counted"]

    full = macs_of(methods.build("full"))
    result = runner.tune(name, params, "threshold", 0.6 * full, macs_of, steps=STEPS)
    assert 0 < result["value"] and result["macs"] <= 0.6 * full
    measured = dict(result["evaluations"])
    assert measured[0.0] == full  # threshold 0 reuses nothing
    assert result["macs"] == max(m for m in measured.values() if m <= 0.6 * full)
