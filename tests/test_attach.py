"""Attaching methods to real diffusers pipelines (DiT, PixArt): parity, isolation, reset, decisions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import PIPELINES, Fixed, dit_pipeline, pixart_pipeline, run_dit, run_pixart, tiny_dit

import dsbench
from dsbench import methods
from dsbench.methods import FULL, REUSE, topk


def _instance_overrides(pipe) -> list[str]:
    found = [f"transformer.{n}" for n in ("forward", "_dsbench_handle") if n in vars(pipe.transformer)]
    found += [f"block.{n}" for b in pipe.transformer.transformer_blocks for n in vars(b) if n == "forward"]
    found += ["scheduler.set_timesteps"] if "set_timesteps" in vars(pipe.scheduler) else []
    return found


def test_full_matches_plain_pipeline_and_detach_restores(family):
    make, run = PIPELINES[family]
    pipe = make()
    plain = run(pipe)
    with dsbench.attach(pipe, methods.build("full")) as handle:
        attached = run(pipe)
        assert handle.report()["cfg_batched"] is True
        assert _instance_overrides(pipe)
    assert np.abs(attached - plain).max() <= 1e-6
    assert _instance_overrides(pipe) == []
    assert np.array_equal(run(pipe), plain)  # bit-identical after detach


def test_two_pipelines_do_not_affect_each_other(family):
    make, run = PIPELINES[family]
    a, b = make(), make()
    reference = run(b, steps=8)
    with dsbench.attach(a, methods.build("fora", interval=2)):
        cached = run(a, steps=8)
        assert np.array_equal(run(b, steps=8), reference)
    assert not np.array_equal(cached, reference)  # the attached one really ran FORA
    assert _instance_overrides(b) == []


def test_same_call_twice_gives_identical_images(family):
    """State resets at every pipeline call (docs/guarantees.md#verification-checklist)."""
    make, run = PIPELINES[family]
    pipe = make()
    with dsbench.attach(pipe, methods.build("toca")) as handle:
        first = run(pipe, steps=8)
        second = run(pipe, steps=8)
        assert handle.report()["num_steps"] == 8
    assert np.array_equal(first, second)


def test_batch_size_change_starts_a_new_run():
    pipe = pixart_pipeline()
    with dsbench.attach(pipe, methods.build("toca")) as handle:
        run_pixart(pipe, steps=6, batch=2)
        alone = run_pixart(pipe, steps=6, batch=1)
        assert handle.report()["num_steps"] == 6
    with dsbench.attach(pipe, methods.build("toca")):
        fresh = run_pixart(pipe, steps=6, batch=1)
    assert np.array_equal(alone, fresh)


def test_pixart_toca_schedule_matches_reference():
    """PixArt ToCa N=3, 20 steps: full steps {0,4,6,9,12,15,18}; sa reused, ca/mlp partial (docs/methods/toca.md)."""
    pipe = pixart_pipeline(num_layers=4)
    with dsbench.attach(pipe, methods.build("toca", ratio=0.3, interval=3)) as handle:
        run_pixart(pipe, steps=20)
        rep = handle.report()
    assert rep["full_steps"] == [0, 4, 6, 9, 12, 15, 18]
    layers = rep["layers"]
    for i in set(range(20)) - set(rep["full_steps"]):
        for name, d in zip(layers, rep["decisions"][i]):
            if name.endswith(".sa"):
                assert d == "REUSE"
    # ca at step 19, block 3: r = 0.3·(1.9−1.8·19/20)·(1.6−1.2·3/3)·0.6 = 0.02214 → int(0.02214·16) = 0
    # mlp at step 1, block 3: r = 0.3·1.81·0.4·1.6 = 0.34752 → int(5.56) = 5
    assert rep["decisions"][1][layers.index("main3.mlp")] == "TOPK(5)"
    assert rep["decisions"][19][layers.index("main3.ca")] == "REUSE"


def test_dit_toca_ddim50_per_layer_rule():
    """DiT DDIM-50 ToCa: the published full steps, with layer-0-only full steps at 4 and 17 (docs/methods/toca.md)."""
    pipe = dit_pipeline(num_layers=3)
    with dsbench.attach(pipe, methods.build("toca")) as handle:
        run_dit(pipe, steps=50)
        rep = handle.report()
    assert rep["full_steps"] == [0, 5, 9, 13, 19, 22, 25, 28, 31, 33, 35, 37, 39, 41, 43, 45, 47, 49]
    for i in (4, 17):
        assert rep["decisions"][i][:2] == ["FULL", "FULL"]  # block 0: sa and mlp
        assert "FULL" not in rep["decisions"][i][2:]
    assert rep["config"]["cfg_selection"] == "per_half"


def test_toca_refresh_interval_rounds_as_the_reference_does():
    """θ = round(N / factor): the authors build the factor as a Python float (float64), convert it once with
    torch.tensor (float32) and divide and round in float32 (half to even). Every N in 2..6, T in {20, 50, 100,
    250} and step counter agree with that arithmetic, including the exact .5 ties."""
    from dsbench.methods.toca import refresh_interval

    for family in ("dit", "pixart"):
        for N in range(2, 7):
            for T in (20, 50, 100, 250):
                for s in range(T):
                    if family == "dit" and int(0.2 * T) <= s < int(0.4 * T):
                        assert refresh_interval(family, N, T, s) == 2  # the reference's forced window
                        continue
                    factor = 1 + 0.4 - 2 * 0.4 * s / T if family == "dit" else 1 - 0.2 + 2 * 0.2 * s / T
                    expected = max(1, int(torch.round(N / torch.tensor(factor))))
                    assert refresh_interval(family, N, T, s) == expected, (family, N, T, s)
    # DiT, N = 2, T = 20, s = 15: N / factor is 2.5 up to rounding; float32 throughout would give 3
    f32 = np.float32
    assert int(np.round(f32(2) / (f32(1.4) - f32(0.8) * f32(15) / f32(20)))) == 3
    assert refresh_interval("dit", 2, 20, 15) == 2 and refresh_interval("flux", 4, 20, 3) == 4


def test_fora_full_steps():
    pipe = dit_pipeline()
    with dsbench.attach(pipe, methods.build("fora")) as handle:
        run_dit(pipe, steps=50)
        assert handle.report()["full_steps"] == [0] + [i for i in range(50) if (49 - i) % 3 == 0]
    pipe = pixart_pipeline()
    with dsbench.attach(pipe, methods.build("fora")) as handle:
        run_pixart(pipe, steps=20)
        assert handle.report()["full_steps"] == list(range(0, 20, 2))


def test_steps_method_shortens_the_run_and_matches_fewer_steps(family):
    make, run = PIPELINES[family]
    pipe = make()
    direct = run(pipe, steps=5)
    with dsbench.attach(pipe, methods.build("steps", fraction=0.5)) as handle:
        reduced = run(pipe, steps=10)
        assert handle.report()["num_steps"] == 5
    assert np.abs(reduced - direct).max() <= 1e-6


# -- the executor's decisions on a bare transformer ---------------------------------------------------
def _dit_calls(model, steps, batch=4):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 4, 8, 8, generator=g)
    labels = torch.tensor([1, 2, 1000, 1000][:batch])
    return [(x + 0.1 * i, torch.full((batch,), 900 - 100 * i), labels) for i in range(steps)]


def _run_calls(model, method, calls, **attach_kw):
    outs = []
    with torch.no_grad(), dsbench.attach(model, method, num_steps=len(calls), **attach_kw) as handle:
        for x, t, y in calls:
            outs.append(model(x, t, y).sample)
        state = handle.engine.branches["main"]
        return outs, handle.report(), state


def test_topk_of_all_tokens_is_full():
    model = tiny_dit()
    calls = _dit_calls(model, 3)
    full, _, _ = _run_calls(model, methods.build("full"), calls)
    all_tokens, rep, _ = _run_calls(model, Fixed(lambda i, layer: topk(16)), calls)
    assert set(sum(rep["decisions"], [])) == {"FULL"}
    assert torch.equal(full[-1], all_tokens[-1])


def test_reuse_returns_exactly_the_cache():
    model = tiny_dit()
    calls = _dit_calls(model, 2)
    method = Fixed(lambda i, layer: FULL if i == 0 else REUSE)
    with torch.no_grad(), dsbench.attach(model, method, num_steps=2) as handle:
        model(*calls[0])
        state = handle.engine.branches["main"]
        cached = {ell: t.clone() for ell, t in state.cache.items()}
        seen = {}
        original = handle.engine.layer

        def spy(ell, h, compute):
            seen[ell] = original(ell, h, compute)
            return seen[ell]

        handle.engine.layer = spy
        model(*calls[1])
        del handle.engine.layer
        assert all(torch.equal(seen[ell], cached[ell]) for ell in cached)
        assert all(int(s.min()) == 1 for s in state.staleness.values())


def test_partial_attention_is_exact_for_the_selected_rows():
    """Exact-query TOPK: recomputed rows equal full computation; the others keep the cache.

    See docs/concepts.md#the-token-cache."""
    model = tiny_dit()
    calls = _dit_calls(model, 2)
    _, _, full_state = _run_calls(model, methods.build("full"), calls)
    chosen = torch.tensor([[0, 3, 5, 9, 12]] * 4)
    method = Fixed(
        lambda i, layer: FULL if i == 0 or layer.index > 0 else topk(5), select=lambda i, layer, k, ctx: chosen
    )
    with torch.no_grad(), dsbench.attach(model, method, num_steps=2) as handle:
        model(*calls[0])
        state = handle.engine.branches["main"]
        step0 = state.cache[0].clone()
        model(*calls[1])
        partial = state.cache[0]
    rows = chosen[0]
    assert torch.allclose(partial[:, rows], full_state.cache[0][:, rows], atol=1e-6)
    others = torch.tensor([r for r in range(16) if r not in rows.tolist()])
    assert torch.equal(partial[:, others], step0[:, others])
    assert state.staleness[0][:, rows].eq(0).all() and state.staleness[0][:, others].eq(1).all()


def test_taylor_order_zero_is_reuse_and_order_one_extrapolates():
    from dsbench.methods import taylor

    model = tiny_dit()
    calls = _dit_calls(model, 4)
    plan = {0: FULL, 1: FULL, 2: taylor(0), 3: taylor(1)}
    with torch.no_grad(), dsbench.attach(model, Fixed(lambda i, layer: plan[i], taylor_order=1), num_steps=4) as h:
        model(*calls[0])
        state = h.engine.branches["main"]
        y0 = state.cache[0].clone()
        model(*calls[1])
        y1 = state.cache[0].clone()
        seen = {}
        original = h.engine.layer
        h.engine.layer = lambda ell, x, compute: seen.setdefault((h.engine.step, ell), original(ell, x, compute))
        model(*calls[2])
        model(*calls[3])
    assert torch.equal(seen[(2, 0)], y1)  # order 0 == reuse
    assert torch.allclose(seen[(3, 0)], y1 + (y1 - y0) * 2, atol=1e-6)  # Δ = 2 steps since the last full


def test_reuse_output_directive_skips_every_block():
    from dsbench.methods import NORMAL, REUSE_OUTPUT

    model = tiny_dit()
    calls = _dit_calls(model, 2)
    method = Fixed(lambda i, layer: FULL, directive=lambda i: NORMAL if i == 0 else REUSE_OUTPUT)
    outs, rep, _ = _run_calls(model, method, calls)
    assert rep["directives"] == ["NORMAL", "REUSE_OUTPUT"]
    assert rep["macs_per_step"][1] < 0.2 * rep["macs_per_step"][0]  # only embedders and final layer
    # the final layer is recomputed with the current timestep: the output still changes
    assert not torch.equal(outs[0], outs[1])


def test_reuse_output_after_front_blocks_refreshes_their_caches_and_discards_their_output():
    """REUSE_OUTPUT(1) (DuCa-DiT's full step whose later blocks turn aggressive): block 0 runs and refreshes
    its caches, but the output is the previous step's final hidden state, as under a plain REUSE_OUTPUT."""
    from dsbench.methods import NORMAL, REUSE_OUTPUT, reuse_output

    model = tiny_dit(num_layers=3)
    calls = _dit_calls(model, 3)

    def run(skip):
        plan = {0: NORMAL, 1: skip, 2: NORMAL}
        block0_reused_at_2 = lambda i, layer: REUSE if i == 2 and layer.block == 0 else FULL  # noqa: E731
        return _run_calls(model, Fixed(block0_reused_at_2, directive=plan.get), calls)

    front, rep, _ = run(reuse_output(1))
    plain, plain_rep, _ = run(REUSE_OUTPUT)
    assert rep["directives"] == ["NORMAL", "REUSE_OUTPUT(1)", "NORMAL"]
    assert rep["decisions"][1] == ["FULL", "FULL"] + ["REUSE"] * 4  # blocks 1-2 skipped
    assert torch.equal(front[1], plain[1])  # the computed block 0 does not reach the output
    assert rep["macs_per_step"][1] > plain_rep["macs_per_step"][1]  # but it was computed ...
    assert not torch.equal(front[2], plain[2])  # ... and step 2 reuses its step-1 outputs


def test_block_residual_directive_applies_the_cached_residual_once():
    from dsbench.methods import NORMAL, block_residual

    model = tiny_dit(num_layers=4)
    calls = _dit_calls(model, 2)
    calls[1] = calls[0]  # same input: the cached residual reproduces the skipped blocks exactly
    method = Fixed(
        lambda i, layer: FULL, directive=lambda i: NORMAL if i == 0 else block_residual(1, 1), residual_spans=((1, 1),)
    )
    outs, rep, _ = _run_calls(model, method, calls)
    assert rep["directives"][1] == "BLOCK_RESIDUAL(1,1)"
    assert torch.allclose(outs[0], outs[1], atol=1e-5)


def test_shared_cfg_selection_is_identical_across_halves():
    model = tiny_dit()
    calls = _dit_calls(model, 2)
    chosen = {}

    def select(i, layer, k, ctx):
        from dsbench.scores import ScoreSpec, select_tokens

        idx = select_tokens(
            ctx, ScoreSpec(attention_received=1.0, staleness=0.1, bonus=0.6, bonus_grid=2, cfg_selection="shared"), k
        )
        chosen[layer.index] = idx
        return idx

    method = Fixed(lambda i, layer: FULL if i == 0 else topk(6), select=select)
    method.score = __import__("dsbench.scores", fromlist=["ScoreSpec"]).ScoreSpec(attention_received=1.0)
    _run_calls(model, method, calls)
    for idx in chosen.values():
        assert torch.equal(idx[:2], idx[2:])


# -- bad input ---------------------------------------------------------------------------------------
def test_unknown_method_lists_the_available_ones():
    with pytest.raises(ValueError, match="available methods: .*fora.*full.*steps.*toca"):
        methods.build("tocca")


@pytest.mark.parametrize(
    "name, params, field",
    [
        ("toca", {"ratio": 1.5}, "ratio"),
        ("toca", {"ratio": -0.1}, "ratio"),
        ("toca", {"interval": 0}, "interval"),
        ("fora", {"interval": 0}, "interval"),
        ("steps", {"fraction": 0.0}, "fraction"),
        ("toca", {"threshold_rule": "sometimes"}, "threshold_rule"),
        ("toca", {"speed": 2}, "speed"),
    ],
)
def test_out_of_range_parameters_name_the_field(name, params, field):
    with pytest.raises(ValueError, match=f"'{field}'"):
        methods.build(name, **params)


def test_unsupported_transformer_names_the_supported_classes():
    from diffusers import UNet2DModel

    unet = UNet2DModel(
        sample_size=8,
        block_out_channels=(8,),
        down_block_types=("DownBlock2D",),
        up_block_types=("UpBlock2D",),
        norm_num_groups=4,
        layers_per_block=1,
    )
    with pytest.raises(TypeError, match="DiTTransformer2DModel.*PixArtTransformer2DModel.*Flux.*Wan"):
        dsbench.attach(unet, methods.build("full"), num_steps=2)
    assert "forward" not in vars(unet)


def test_attaching_twice_is_an_error_and_leaves_the_first_attachment():
    pipe = dit_pipeline()
    with dsbench.attach(pipe, methods.build("toca")):
        with pytest.raises(RuntimeError, match="already attached"):
            dsbench.attach(pipe, methods.build("fora"))
        with pytest.raises(RuntimeError, match="already attached"):
            dsbench.attach(pipe.transformer, methods.build("fora"), num_steps=3)
    assert _instance_overrides(pipe) == []


def test_bare_transformer_without_num_steps_fails_clearly():
    model = tiny_dit()
    x, t, y = _dit_calls(model, 1)[0]
    with dsbench.attach(model, methods.build("toca")), pytest.raises(RuntimeError, match="num_steps"):
        model(x, t, y)


def test_similarity_importance_compares_with_the_input_at_last_computation():
    from dsbench.scores import ScoreSpec, similarity_score

    model = tiny_dit()
    calls = _dit_calls(model, 3)
    scores = []

    def select(i, layer, k, ctx):
        assert ctx.reference_input is not None and not torch.equal(ctx.reference_input, ctx.layer_input)
        scores.append(similarity_score(ctx))
        return torch.argsort(scores[-1], dim=-1, descending=True)[:, :k]

    method = Fixed(lambda i, layer: FULL if i == 0 else topk(4), select=select)
    method.score = ScoreSpec(importance="similarity")
    _run_calls(model, method, calls)
    assert len(scores) == 2 * 2 * 2  # 2 partial steps × 2 blocks × (sa, mlp)
    assert all(float(s.std()) > 1e-3 for s in scores)  # a real signal, not 1 − cos(x, x) noise


def test_pixart_toca_error_shrinks_as_more_tokens_are_recomputed():
    """Distance to the uncached output falls and MACs rise with R.

    A spot check of docs/guarantees.md#verification-checklist."""
    pipe = pixart_pipeline(num_layers=4, sample_size=16)
    reference = run_pixart(pipe, steps=20)
    errors, macs = [], []
    for ratio in (0.05, 0.2, 0.5):
        with dsbench.attach(pipe, methods.build("toca", ratio=ratio)) as handle:
            errors.append(float(((run_pixart(pipe, steps=20) - reference) ** 2).mean()))
            macs.append(handle.report()["macs_cfg_not_counted"])
    assert errors[0] > errors[1] > errors[2] > 0
    assert macs[0] < macs[1] < macs[2]
