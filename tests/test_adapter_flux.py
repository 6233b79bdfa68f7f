"""FLUX adapter: exactness of ``full``, cache semantics of REUSE / TOPK, MAC accounting and
the ToCa / FORA schedules, on a tiny random-weight FluxTransformer2DModel (CPU, offline)."""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from diffusers.models.transformers.transformer_flux import FluxIPAdapterAttnProcessor

import dsbench
from dsbench import methods
from dsbench.accounting import flop_counter, flop_counter_macs
from dsbench.adapters.flux import FluxAdapter
from dsbench.methods import FULL, REUSE, Method, MethodConfig, topk
from dsbench.scores import ScoreSpec

TINY = dict(
    patch_size=1,
    in_channels=16,
    num_layers=2,
    num_single_layers=2,
    attention_head_dim=16,
    num_attention_heads=2,
    joint_attention_dim=32,
    pooled_projection_dim=32,
    axes_dims_rope=(4, 6, 6),
)
C, ROWS, COLS, N, N_TEXT, BATCH = 32, 8, 8, 64, 8, 2
TIMESTEPS = (1.0, 0.75, 0.5, 0.25)
S1 = ScoreSpec(attention_received=1.0, cross_entropy=1.0)  # materialised attention, per-sample selections


def tiny_transformer(**overrides) -> FluxTransformer2DModel:
    torch.manual_seed(0)
    return FluxTransformer2DModel(**{**TINY, **overrides}).eval()


def image_ids(rows: int, cols: int) -> torch.Tensor:
    ids = torch.zeros(rows * cols, 3)
    ids[:, 1] = torch.arange(rows * cols) // cols
    ids[:, 2] = torch.arange(rows * cols) % cols
    return ids


def inputs(dtype=torch.float32, **extra) -> dict:
    g = torch.Generator().manual_seed(1)
    return dict(
        hidden_states=torch.randn(BATCH, N, 16, generator=g).to(dtype),
        encoder_hidden_states=torch.randn(BATCH, N_TEXT, 32, generator=g).to(dtype),
        pooled_projections=torch.randn(BATCH, 32, generator=g).to(dtype),
        img_ids=image_ids(ROWS, COLS),
        txt_ids=torch.zeros(N_TEXT, 3),
        **extra,
    )


def denoise(model, t: float, x: dict) -> torch.Tensor:
    h = x["hidden_states"]
    with torch.no_grad():
        return model(**x, timestep=torch.full((BATCH,), t, dtype=h.dtype, device=h.device)).sample


def sample(model, steps: int = 2, **extra) -> list[torch.Tensor]:
    x = inputs(**extra)
    return [denoise(model, t, x) for t in TIMESTEPS[:steps]]


def assert_detached(model) -> None:
    assert "forward" not in vars(model) and not hasattr(model, "_dsbench_handle")
    for block in [*model.transformer_blocks, *model.single_transformer_blocks]:
        assert "forward" not in vars(block)


class Fixed(Method):
    """Test-only method: decisions from ``fn``; remembers the token indices it selected."""

    name = "fixed"

    def __init__(self, fn, score: ScoreSpec = S1):
        super().__init__(MethodConfig())
        self.fn, self.score, self.picked = fn, score, {}

    def decide(self, i, layer):
        return self.fn(i, layer)

    def select(self, i, layer, k, ctx):
        self.picked[i, layer.index] = index = super().select(i, layer, k, ctx)
        return index


def run(model, method, steps: int = 2):
    """Outputs, the (input, output) of every (step, layer) and the report of an attached run."""
    seen = {}
    with dsbench.attach(model, method, num_steps=steps) as handle:
        engine, layer = handle.engine, handle.engine.layer

        def spy(ell, h, compute):
            out = layer(ell, h, compute)
            seen[engine.step, ell] = h.clone(), out.clone()
            return out

        engine.layer = spy
        outs = sample(model, steps)
        report = handle.report()
    return outs, seen, report


def layer_index(report, name: str) -> int:
    return report["layers"].index(name)


@pytest.fixture(scope="module")
def transformer():
    return tiny_transformer()


@pytest.fixture(scope="module")
def all_full(transformer):
    """Every layer FULL through the same (materialised) attention path as the partial runs."""
    return run(transformer, Fixed(lambda i, layer: FULL))


def tiny_pipeline() -> FluxPipeline:
    """A real FluxPipeline around the tiny transformer and a tiny VAE (no text encoders: prompt embeddings given)."""
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        shift_factor=0.0,
        scaling_factor=1.0,
    )
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        transformer=tiny_transformer(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


def generate(pipe, width: int = 32, true_cfg: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    text = dict(
        prompt_embeds=torch.randn(1, N_TEXT, 32, generator=g), pooled_prompt_embeds=torch.randn(1, 32, generator=g)
    )
    if true_cfg:  # separate cond / uncond transformer calls under cache_context
        text.update(
            negative_prompt_embeds=torch.randn(1, N_TEXT, 32, generator=g),
            negative_pooled_prompt_embeds=torch.randn(1, 32, generator=g),
            true_cfg_scale=2.0,
        )
    return pipe(
        **text, height=32, width=width, num_inference_steps=4, guidance_scale=0.0, output_type="latent", generator=g
    ).images


# -- exactness and attach / detach -----------------------------------------------------------------
def test_full_matches_plain_pipeline_and_detach_restores(pipe):
    plain = generate(pipe)
    with dsbench.attach(pipe, methods.build("full")) as handle:
        attached = generate(pipe)
        report = handle.report()
    assert (attached - plain).abs().max() <= 1e-6
    assert report["family"] == "flux" and report["full_steps"] == [0, 1, 2, 3]
    assert report["layers"][:4] == ["double0.attn", "double0.img_mlp", "double0.txt_mlp", "double1.attn"]
    assert report["layers"][6:] == ["single0.attn", "single0.mlp", "single1.attn", "single1.mlp"]
    assert "set_timesteps" not in vars(pipe.scheduler)
    assert_detached(pipe.transformer)
    assert torch.equal(generate(pipe), plain)


def test_true_cfg_branches_on_a_non_square_grid(pipe):
    plain = generate(pipe, width=24, true_cfg=True)
    with dsbench.attach(pipe, methods.build("full")) as handle:
        attached = generate(pipe, width=24, true_cfg=True)
        report = handle.report()
        run_info = handle.engine.latest()[0]
    assert (attached - plain).abs().max() <= 1e-6
    assert report["branches"] == ["cond", "uncond"] and report["full_steps"] == [0, 1, 2, 3]
    assert report["macs_cfg_counted"] == 2 * report["macs_cfg_not_counted"]
    assert (run_info.n_image, run_info.grid) == (48, (8, 6))  # 32×24 px, VAE factor 2, 2×2 packing


@pytest.mark.parametrize("variant", ["fused_qkv", "fp16", "gradient_checkpointing"])
def test_full_matches_plain_model_variants(variant):
    """Fused projections, the fp16 clip and the positional block call of gradient checkpointing."""
    model, dtype = tiny_transformer(), torch.float32
    if variant == "fused_qkv":
        model.fuse_qkv_projections()
    elif variant == "fp16":
        model, dtype = model.half(), torch.float16
    else:
        model.enable_gradient_checkpointing()
    x, t = inputs(dtype), torch.full((BATCH,), 1.0, dtype=dtype)
    with torch.enable_grad() if variant == "gradient_checkpointing" else torch.no_grad():
        plain = model(**x, timestep=t).sample
        with dsbench.attach(model, methods.build("full"), num_steps=1):
            attached = model(**x, timestep=t).sample
    assert torch.equal(attached, plain)
    assert_detached(model)


# -- cache semantics ---------------------------------------------------------------------------------
def test_topk_of_all_tokens_equals_full(transformer):
    def every_token(i, layer):
        return topk(10**6) if i and layer.supports_topk else FULL

    outs, _, report = run(transformer, Fixed(every_token, ScoreSpec()))
    assert all(d == "FULL" for d in report["decisions"][1])
    assert all(torch.equal(a, b) for a, b in zip(outs, sample(transformer)))


def test_reuse_returns_the_step0_cache(transformer):
    outs, seen, report = run(transformer, Fixed(lambda i, layer: REUSE if i else FULL))
    for ell in range(len(report["layers"])):
        assert torch.equal(seen[1, ell][1], seen[0, ell][1])
    assert not torch.equal(outs[1], sample(transformer)[1])  # gates still follow the timestep


@pytest.mark.parametrize("target", ["double0.img_mlp", "double0.txt_mlp", "single0.mlp", "single1.mlp"])
def test_topk_recomputes_only_the_selected_rows(transformer, all_full, target):
    k = 3
    partial = Fixed(lambda i, layer: topk(k) if i and layer.name == target else FULL)
    _, seen, report = run(transformer, partial)
    ell = layer_index(report, target)
    index = partial.picked[1, ell]
    assert index.shape == (BATCH, k) and not torch.equal(index[0], index[1])  # per-sample selections
    selected = torch.zeros(seen[1, ell][1].shape[:2], dtype=torch.bool).scatter_(1, index, True)
    out, before, fresh = seen[1, ell][1], seen[0, ell][1], all_full[1][1, ell][1]
    assert torch.equal(out[~selected], before[~selected])
    torch.testing.assert_close(out[selected], fresh[selected], rtol=0, atol=1e-6)
    assert not torch.equal(out[selected], before[selected])


def test_single_mlp_projects_cached_attention_rows(transformer):
    def decide(i, layer):  # step 1: single0.attn REUSE, single0.mlp TOPK over its cached rows
        return {"single0.attn": REUSE, "single0.mlp": topk(5)}.get(layer.name, FULL) if i else FULL

    method = Fixed(decide)
    _, seen, report = run(transformer, method)
    attn, mlp = layer_index(report, "single0.attn"), layer_index(report, "single0.mlp")
    index = method.picked[1, mlp].unsqueeze(-1)
    block = transformer.single_transformer_blocks[0]
    cached_attn = seen[0, attn][1].gather(1, index.expand(-1, -1, C))
    norm_h = seen[1, mlp][0].gather(1, index.expand(-1, -1, C))
    with torch.no_grad():
        expected = block.proj_out(torch.cat([cached_attn, block.act_mlp(block.proj_mlp(norm_h))], dim=2))
    assert torch.equal(seen[1, mlp][1].gather(1, index.expand(-1, -1, C)), expected)


# -- MAC accounting --------------------------------------------------------------------------------
def partial_step(i, layer):
    """Step 1: TOPK(5) on every MLP, attention FULL in even blocks and REUSE in odd ones."""
    if i == 0:
        return FULL
    return topk(5) if layer.supports_topk else REUSE if layer.block % 2 else FULL


@pytest.mark.parametrize("score", [ScoreSpec(), S1], ids=["sdpa", "materialised"])
def test_macs_match_flop_counter(transformer, score):
    counted = []
    with dsbench.attach(transformer, Fixed(partial_step, score), num_steps=2) as handle:
        x = inputs()
        for t in TIMESTEPS[:2]:
            with flop_counter() as mode:
                denoise(transformer, t, x)
            counted.append(flop_counter_macs(mode))
        report = handle.report()
        records = handle.engine.latest()[1]["main"].steps
    for (linear, attention), per_row, record in zip(counted, report["macs_per_step"], records):
        assert per_row * BATCH == pytest.approx(linear, rel=1e-12)
        assert record.macs_attention * BATCH == pytest.approx(attention, rel=1e-12)
    assert report["macs_attention_cfg_not_counted"] == sum(r.macs_attention for r in records)

    # per-layer attribution (docs/accounting.md FLUX rows): per computed token, the single block's proj_mlp in its mlp
    per_token = {
        ("double", "attn"): 4,
        ("double", "img_mlp"): 8,
        ("double", "txt_mlp"): 8,
        ("single", "attn"): 3,
        ("single", "mlp"): 9,
    }
    tokens = {"attn": N + N_TEXT, "img_mlp": N, "txt_mlp": N_TEXT, "mlp": N + N_TEXT}
    for step, record in enumerate(records):
        for layer in handle.engine.layers:
            computed = {"FULL": tokens[layer.module], "REUSE": 0, "TOPK(5)": 5}[report["decisions"][step][layer.index]]
            expected = per_token[layer.stream, layer.module] * C * C * computed
            assert record.macs_per_layer.get(layer.index, 0) == expected, (step, layer.name)
    assert report["decisions"][1][:3] == ["FULL", "TOPK(5)", "TOPK(5)"]


# -- methods on FLUX ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, full_steps", [("toca", [0]), ("fora", [0, 2])])
def test_toca_and_fora_schnell_schedules(pipe, name, full_steps):
    """Schnell (no guidance embedding): ToCa warm-up 1, interval 4; FORA interval 2.

    See docs/methods/toca.md and docs/methods/fora.md."""
    with dsbench.attach(pipe, methods.build(name)) as handle:
        latents = generate(pipe)
        report = handle.report()
    assert torch.isfinite(latents).all()
    assert report["num_steps"] == 4 and report["full_steps"] == full_steps
    assert report["macs_per_step"][1] < report["macs_per_step"][0]
    attn = [ell for ell, layer in enumerate(report["layers"]) if layer.endswith(".attn")]
    assert all(report["decisions"][1][ell] == "REUSE" for ell in attn)
    if name == "toca":
        assert any(d.startswith("TOPK") for d in report["decisions"][1])


def test_dev_variant_uses_the_toca_dev_warmup():
    model = tiny_transformer(guidance_embeds=True)
    assert FluxAdapter(model).variant == "dev" and FluxAdapter(tiny_transformer()).variant == "schnell"
    with dsbench.attach(model, methods.build("toca"), num_steps=4) as handle:
        sample(model, 4, guidance=torch.full((BATCH,), 3.5))
        assert handle.report()["full_steps"] == [0, 1, 2]


# -- call shapes and unsupported configurations ---------------------------------------------------------
def test_call_info_grid_without_data_reads(transformer):
    adapter = FluxAdapter(transformer)

    def grid(rows, cols, device, ids=True):
        x = dict(
            hidden_states=torch.empty(1, rows * cols, 16, device=device),
            encoder_hidden_states=torch.empty(1, N_TEXT, 32, device=device),
            img_ids=image_ids(rows, cols).to(device) if ids else None,
        )
        info = adapter.call_info((), x)
        assert (info.batch, info.n_image, info.n_text) == (1, rows * cols, N_TEXT)
        return info.grid

    assert grid(8, 8, "meta") == (8, 8)
    assert grid(4, 8, "cpu") == (4, 8)
    assert grid(4, 8, "meta") == (1, 32)
    assert grid(4, 8, "cpu", ids=False) == (1, 32)


def test_meta_device_run_counts_the_same_macs(transformer):
    with torch.device("meta"):
        meta = FluxTransformer2DModel(**TINY)
    reports = []
    for model, device in ((meta, "meta"), (transformer, "cpu")):
        with dsbench.attach(model, methods.build("toca"), num_steps=2) as handle:
            x = {k: v.to(device) for k, v in inputs().items()}
            for t in TIMESTEPS[:2]:
                denoise(model, t, x)
            reports.append(handle.report())
    assert reports[0]["macs_per_step"] == reports[1]["macs_per_step"]
    assert reports[0]["macs_attention_cfg_not_counted"] == reports[1]["macs_attention_cfg_not_counted"]


def test_rejects_ip_adapter(transformer):
    model = tiny_transformer()
    model.transformer_blocks[1].attn.set_processor(FluxIPAdapterAttnProcessor(hidden_size=C, cross_attention_dim=C))
    with pytest.raises(TypeError, match=r"transformer_blocks\[1\].*FluxIPAdapterAttnProcessor"):
        dsbench.attach(model, methods.build("full"), num_steps=1)
    assert_detached(model)

    with dsbench.attach(transformer, methods.build("full"), num_steps=1):
        with pytest.raises(TypeError, match="ip_adapter_image_embeds"):
            sample(transformer, 1, joint_attention_kwargs={"ip_adapter_image_embeds": [torch.zeros(BATCH, C)]})
        assert torch.equal(sample(transformer, 1, joint_attention_kwargs={"scale": 1.0})[0], sample(transformer, 1)[0])
