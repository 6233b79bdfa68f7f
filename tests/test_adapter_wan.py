"""WanAdapter on a tiny random WanTransformer3DModel: exactness against diffusers, partial
computation, MAC accounting against FlopCounterMode and the separate cond/uncond caches of
the stock WanPipeline (which runs offline with prompt embeddings and no text encoder)."""

from __future__ import annotations

import pytest
import torch
from diffusers import (
    AutoencoderKLWan,
    FlowMatchEulerDiscreteScheduler,
    UniPCMultistepScheduler,
    WanPipeline,
    WanTransformer3DModel,
)
from diffusers.models.transformers.transformer_wan import WanTransformerBlock

import dsbench
from dsbench import methods
from dsbench.accounting import flop_counter, flop_counter_macs
from dsbench.adapters.wan import WanAdapter
from dsbench.core import CallInfo
from dsbench.methods import FULL, REUSE, Method, MethodConfig, topk
from dsbench.scores import CROSS_ENTROPY, SELF_ATTN, VALUE_NORM, ScoreSpec

CONFIG = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=12,
    in_channels=4,
    out_channels=4,
    text_dim=16,
    freq_dim=32,
    ffn_dim=32,
    num_layers=2,
    rope_max_seq_len=32,
)
N = 2 * 4 * 4  # image tokens of the inputs below: 2 latent frames of 8×8, patch 1×2×2
STATS = ScoreSpec(attention_received=1.0, cross_entropy=1.0)  # makes the engine record sa/ca statistics


def make_model(**overrides) -> WanTransformer3DModel:
    torch.manual_seed(0)
    return WanTransformer3DModel(**{**CONFIG, **overrides}).eval()


@pytest.fixture(scope="module")
def model():
    return make_model()


def inputs(batch=2, seed=1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, 2, 8, 8, generator=g).to(dtype)
    text = torch.randn(batch, 5, 16, generator=g).to(dtype)
    return x, text


def call(model, x, text, t=500.0):
    with torch.no_grad():
        return model(x, torch.full((x.shape[0],), t), text).sample


class Fixed(Method):
    """Test-only method: decisions from ``fn``; random (recorded) token subsets, distinct per row."""

    name = "fixed"

    def __init__(self, fn, score: ScoreSpec | None = None):
        super().__init__(MethodConfig())
        self.fn = fn
        self.score = score if score is not None else ScoreSpec()
        self.selected = {}

    def decide(self, i, layer):
        return self.fn(i, layer)

    def select(self, i, layer, k, ctx):
        g = torch.Generator().manual_seed(100 * i + layer.index)
        index = torch.stack([torch.randperm(ctx.n, generator=g)[:k] for _ in range(ctx.batch)])
        self.selected[(i, layer.index)] = index
        return index


def record_layers(handle) -> list:
    """Spy on Engine.layer: (branch, step, layer, output) of every layer evaluation."""
    engine, original = handle.engine, handle.engine.layer
    seen = []

    def layer(ell, h, compute):
        out = original(ell, h, compute)
        seen.append((engine.branch, engine.step, ell, out.clone()))
        return out

    engine.layer = layer
    return seen


def tiny_pipeline(model, scheduler=None) -> WanPipeline:
    torch.manual_seed(0)
    vae = AutoencoderKLWan(
        base_dim=3,
        z_dim=4,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=[0.0] * 4,
        latents_std=[1.0] * 4,
    ).eval()
    scheduler = scheduler or UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0
    )
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=vae, scheduler=scheduler, transformer=model)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, steps=3):
    """Latents of 5 frames of 64×64 (2 latent frames of 8×8: N tokens); CFG as two transformer calls."""
    g = torch.Generator().manual_seed(0)
    prompt, negative = torch.randn(1, 5, 16, generator=g), torch.randn(1, 5, 16, generator=g)
    with torch.no_grad():
        return pipe(
            prompt_embeds=prompt,
            negative_prompt_embeds=negative,
            height=64,
            width=64,
            num_frames=5,
            num_inference_steps=steps,
            guidance_scale=5.0,
            generator=torch.Generator().manual_seed(0),
            output_type="latent",
        ).frames


# -- 1. full ≡ plain -------------------------------------------------------------------------------
def test_pipeline_full_identical_and_detach_restores(model):
    pipe = tiny_pipeline(model)
    plain = generate(pipe)
    handle = dsbench.attach(pipe, methods.build("full"))
    attached = generate(pipe)
    assert handle.report()["branches"] == ["cond", "uncond"]
    handle.detach()
    after = generate(pipe)
    assert (attached - plain).abs().max() <= 1e-6
    assert torch.equal(after, plain)
    assert all("forward" not in vars(block) for block in model.blocks)
    assert "forward" not in vars(model) and "cache_context" not in vars(model)
    assert "set_timesteps" not in vars(pipe.scheduler)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_full_bit_identical_to_diffusers(dtype):
    model = make_model().to(dtype)
    x, text = inputs(dtype=dtype)
    plain = call(model, x, text)
    with dsbench.attach(model, methods.build("full"), num_steps=1):
        attached = call(model, x, text)
    assert torch.equal(attached, plain)


def test_full_per_token_timestep(model):
    """Wan2.2 TI2V passes a B×N timestep, giving per-token modulation (temb.ndim == 4)."""
    x, text = inputs()
    t = torch.linspace(100, 900, N).expand(2, N)
    with torch.no_grad():
        plain = model(x, t, text).sample
        with dsbench.attach(model, methods.build("full"), num_steps=1):
            attached = model(x, t, text).sample
    assert torch.equal(attached, plain)


def test_block_forward_positional_and_keyword(model):
    x, text = inputs()
    with torch.no_grad():
        hidden = model.patch_embedding(x).flatten(2).transpose(1, 2).contiguous()
        _, proj, text_emb, _ = model.condition_embedder(torch.full((2,), 500.0), text)
        args = (hidden, text_emb, proj.unflatten(1, (6, -1)), model.rope(x))
        block = model.blocks[0]
        expected = WanTransformerBlock.forward(block, *args)
        with dsbench.attach(model, methods.build("full"), num_steps=2) as handle:
            handle.engine.begin_call(CallInfo(batch=2, n_image=N, n_text=5, grid=(8, 4)))
            positional = block(*args)
            keyword = block(**dict(zip(("hidden_states", "encoder_hidden_states", "temb", "rotary_emb"), args)))
            handle.engine.end_call(positional)
    assert torch.equal(positional, expected) and torch.equal(keyword, expected)


# -- 2. decisions ----------------------------------------------------------------------------------
def run_steps(model, method, steps=2):
    """(outputs, layer records, handle) of ``steps`` calls on one latent at decreasing timesteps."""
    x, text = inputs()
    with dsbench.attach(model, method, num_steps=steps) as handle:
        seen = record_layers(handle)
        outs = [call(model, x, text, t=900.0 - 300 * i) for i in range(steps)]
    return outs, seen, handle


def test_topk_all_tokens_equals_full(model):
    full, _, _ = run_steps(model, methods.build("full"))
    every, _, handle = run_steps(model, Fixed(lambda i, layer: FULL if i == 0 else topk(N)))
    assert (every[1] - full[1]).abs().max() <= 1e-5
    assert set(handle.report()["decisions"][1]) == {"FULL"}  # TOPK(N) ≡ FULL


def test_reuse_returns_cached_step0_outputs(model):
    _, seen, handle = run_steps(model, Fixed(lambda i, layer: FULL if i == 0 else REUSE))
    step = {s: {ell: out for _, s2, ell, out in seen if s2 == s} for s in (0, 1)}
    assert len(step[1]) == len(handle.engine.layers) == 6
    assert all(torch.equal(step[1][ell], step[0][ell]) for ell in step[0])
    record = handle.engine.latest()[1]["main"].steps[1]
    assert record.macs_per_layer == {} and record.macs_attention == 0  # nothing computed in the blocks


@pytest.mark.parametrize("score", [ScoreSpec(), STATS], ids=["sdpa", "probs"])
def test_topk_rows_exact(model, score):
    """TOPK at one layer (all earlier layers FULL, so same inputs) gives FULL's rows for the selection."""
    k = 7
    _, seen, _ = run_steps(model, Fixed(lambda i, layer: FULL, score))
    full = {ell: out for _, s, ell, out in seen if s == 1}
    for ell in range(6):
        method = Fixed(lambda i, layer, ell=ell: topk(k) if i == 1 and layer.index == ell else FULL, score)
        _, seen, _ = run_steps(model, method)
        got = {(s, e): out for _, s, e, out in seen}
        index = method.selected[(1, ell)]
        assert not torch.equal(index[0], index[1])  # rows select differently (per-row rotary gathers)
        chosen = torch.zeros(2, N, dtype=torch.bool).scatter_(1, index, True)
        assert torch.allclose(got[1, ell][chosen], full[ell][chosen], rtol=0, atol=1e-6), ell
        assert torch.equal(got[1, ell][~chosen], got[0, ell][~chosen]), ell


def test_statistics_shapes(model):
    _, _, handle = run_steps(model, Fixed(lambda i, layer: FULL if i == 0 else topk(5), STATS))
    stats = handle.engine.latest()[1]["main"].block_stats[0]
    assert stats[SELF_ATTN].shape == (2, N, N) and stats[CROSS_ENTROPY].shape == (2, N)
    _, _, handle = run_steps(model, methods.build("toca"), steps=3)  # Wan ToCa scores by value norm
    assert handle.engine.latest()[1]["main"].block_stats[0][VALUE_NORM].shape == (2, 2, N)


# -- 3. MACs ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("score", [ScoreSpec(), STATS], ids=["sdpa", "probs"])
@pytest.mark.parametrize("step1", [FULL, topk(5)], ids=str)
def test_macs_match_flop_counter(model, step1, score):
    x, text = inputs()
    with dsbench.attach(model, Fixed(lambda i, layer: FULL if i == 0 else step1, score), num_steps=2) as handle:
        call(model, x, text)
        with flop_counter() as mode:
            call(model, x, text, t=600.0)
    record = handle.engine.latest()[1]["main"].steps[1]
    linear, attention = flop_counter_macs(mode)
    assert record.macs_linear == pytest.approx(linear / 2, rel=1e-9)
    assert record.macs_attention == pytest.approx(attention / 2, rel=1e-9)
    if step1 != FULL:
        assert record.macs_attention < handle.engine.latest()[1]["main"].steps[0].macs_attention


# -- 4. CFG branches -------------------------------------------------------------------------------
def test_cfg_branches_separate_caches_and_mac_totals(model):
    pipe = tiny_pipeline(model, FlowMatchEulerDiscreteScheduler(shift=3.0))
    method = Fixed(lambda i, layer: {0: FULL, 1: REUSE}.get(i, topk(5)))
    with dsbench.attach(pipe, method) as handle:
        seen = record_layers(handle)
        with flop_counter() as mode:  # no VAE decode: only the transformer multiplies
            generate(pipe)
        report = handle.report()
    out = {(branch, s, ell): o for branch, s, ell, o in seen}
    for ell in range(6):  # step 1 reuses each branch's own step-0 outputs
        assert torch.equal(out["uncond", 1, ell], out["uncond", 0, ell])
        assert torch.equal(out["cond", 1, ell], out["cond", 0, ell])
    assert not torch.equal(out["uncond", 0, 1], out["cond", 0, 1])  # ca sees different text
    branches = handle.engine.latest()[1]
    assert report["branches"] == ["cond", "uncond"] and not report["cfg_batched"]
    assert [len(b.steps) for b in branches.values()] == [3, 3]
    linear, attention = flop_counter_macs(mode)  # batch 1 per call: per-row = raw counts
    cond = sum(s.macs_linear for s in branches["cond"].steps)
    assert report["macs_cfg_not_counted"] == pytest.approx(cond, rel=1e-12)
    assert report["macs_cfg_counted"] == pytest.approx(linear, rel=1e-9)
    assert report["macs_attention_cfg_counted"] == pytest.approx(attention, rel=1e-9)
    assert report["macs_cfg_counted"] == pytest.approx(2 * report["macs_cfg_not_counted"], rel=1e-12)


# -- 5. registered methods -------------------------------------------------------------------------
@pytest.mark.parametrize("name, partial", [("toca", "TOPK"), ("fora", "REUSE")])
def test_methods_run(model, name, partial):
    pipe = tiny_pipeline(model)
    with dsbench.attach(pipe, methods.build("full")) as handle:
        generate(pipe, steps=6)
        full = handle.report()["macs_cfg_counted"]
    with dsbench.attach(pipe, methods.build(name)) as handle:
        latents = generate(pipe, steps=6)
        report = handle.report()
    assert torch.isfinite(latents).all()
    assert report["num_steps"] == 6 and report["branches"] == ["cond", "uncond"]
    assert any(d.startswith(partial) for step in report["decisions"] for d in step)
    assert report["macs_cfg_counted"] < full


# -- shapes and rejections -------------------------------------------------------------------------
def test_call_info_on_meta_device():
    with torch.device("meta"):
        model = WanTransformer3DModel(**CONFIG)
        x, text = torch.empty(3, 4, 5, 6, 10), torch.empty(3, 7, 16)
    adapter = WanAdapter(model)
    info = adapter.call_info((x,), dict(timestep=torch.empty(3, device="meta"), encoder_hidden_states=text))
    assert info.key() == (3, 5 * 3 * 5, 7, (15, 5))
    assert [layer.name for layer in adapter.layers] == [f"main{b}.{m}" for b in range(2) for m in ("sa", "ca", "mlp")]
    with dsbench.attach(model, methods.build("toca"), num_steps=3):
        for _ in range(3):
            assert model(x, torch.empty(3, device="meta"), text).sample.shape == x.shape


def test_rejects_image_conditioning(model):
    with pytest.raises(TypeError, match="I2V"):
        dsbench.attach(make_model(added_kv_proj_dim=16, image_dim=16), methods.build("full"), num_steps=1)
    x, text = inputs()
    with dsbench.attach(model, methods.build("full"), num_steps=1):
        with pytest.raises(ValueError, match="encoder_hidden_states_image"):
            model(x, torch.full((2,), 500.0), text, encoder_hidden_states_image=torch.zeros(2, 3, 16))


def test_shared_selection_is_reused_by_the_second_cfg_pass(model):
    """Separate cond / uncond passes: the first pass selects, the second reuses its indices.

    See docs/concepts.md#classifier-free-guidance."""
    pipe = tiny_pipeline(model)
    calls = []

    class Counting(Fixed):
        def select(self, i, layer, k, ctx):
            calls.append((i, layer.index))
            return super().select(i, layer, k, ctx)

    method = Counting(lambda i, layer: FULL if i == 0 else topk(5))  # ScoreSpec default: shared
    with dsbench.attach(pipe, method) as handle:
        seen = record_layers(handle)
        generate(pipe, steps=3)
    assert sorted(calls) == sorted({(i, ell) for i in (1, 2) for ell in range(6)})  # once per (step, layer)
    per_half = Counting(lambda i, layer: FULL if i == 0 else topk(5), ScoreSpec(cfg_selection="per_half"))
    calls.clear()
    with dsbench.attach(pipe, per_half):
        generate(pipe, steps=3)
    assert len(calls) == 2 * 2 * 6
    assert seen  # the spy saw both passes
