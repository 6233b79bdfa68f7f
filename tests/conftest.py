"""Tiny random-weight diffusers pipelines of the real classes, and a test-only method."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")

from dsbench.core import Method, MethodConfig  # noqa: E402


class Fixed(Method):
    """Test-only method (not registered): decisions from a function of (step, layer)."""

    name = "fixed"

    def __init__(self, decide, select=None, directive=None, taylor_order=0, residual_spans=()):
        super().__init__(MethodConfig())
        self._decide, self._select, self._directive = decide, select, directive
        self.taylor_order = taylor_order
        self.residual_spans = residual_spans

    def begin_step(self, i):
        return self._directive(i) if self._directive else super().begin_step(i)

    def decide(self, i, layer):
        return self._decide(i, layer)

    def select(self, i, layer, k, ctx):
        return self._select(i, layer, k, ctx) if self._select else super().select(i, layer, k, ctx)


def tiny_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8,),
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        norm_num_groups=4,
        layers_per_block=1,
        sample_size=8,
    ).eval()


def tiny_dit(num_layers=2, sample_size=8, seed=0):
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(seed)
    return DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=8,
        num_layers=num_layers,
        sample_size=sample_size,
        patch_size=2,
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_zero",
    ).eval()


def tiny_pixart(num_layers=2, sample_size=8, seed=0):
    from diffusers import PixArtTransformer2DModel

    torch.manual_seed(seed)
    return PixArtTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=8,
        num_layers=num_layers,
        sample_size=sample_size,
        patch_size=2,
        cross_attention_dim=16,
        caption_channels=12,
        norm_type="ada_norm_single",
        num_embeds_ada_norm=1000,
        norm_elementwise_affine=False,
        norm_eps=1e-6,
        attention_bias=True,
        activation_fn="gelu-approximate",
    ).eval()


def dit_pipeline(seed=0, **kw):
    from diffusers import DDIMScheduler, DiTPipeline

    pipe = DiTPipeline(
        transformer=tiny_dit(seed=seed, **kw), vae=tiny_vae(), scheduler=DDIMScheduler(timestep_spacing="linspace")
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pixart_pipeline(seed=0, **kw):
    from diffusers import DPMSolverMultistepScheduler, PixArtAlphaPipeline

    pipe = PixArtAlphaPipeline(
        tokenizer=None,
        text_encoder=None,
        vae=tiny_vae(),
        transformer=tiny_pixart(seed=seed, **kw),
        scheduler=DPMSolverMultistepScheduler(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_dit(pipe, steps=5, labels=(1, 2), seed=0):
    return pipe(
        class_labels=list(labels),
        num_inference_steps=steps,
        guidance_scale=4.0,
        generator=torch.manual_seed(seed),
        output_type="np",
    ).images


def run_pixart(pipe, steps=5, seed=0, batch=2):
    g = torch.Generator().manual_seed(123)
    emb = torch.randn(batch, 6, 12, generator=g)
    mask = torch.ones(batch, 6)
    mask[:, 4:] = 0  # padded text tokens, as T5 masks produce
    side = pipe.transformer.config.sample_size  # the tiny VAE does not downsample
    return pipe(
        prompt_embeds=emb,
        prompt_attention_mask=mask,
        negative_prompt=None,
        negative_prompt_embeds=torch.zeros(batch, 6, 12),
        negative_prompt_attention_mask=torch.ones(batch, 6),
        num_inference_steps=steps,
        generator=torch.manual_seed(seed),
        output_type="np",
        height=side,
        width=side,
        use_resolution_binning=False,
        guidance_scale=4.5,
    ).images


PIPELINES = {"dit": (dit_pipeline, run_dit), "pixart": (pixart_pipeline, run_pixart)}


@pytest.fixture(params=sorted(PIPELINES))
def family(request):
    return request.param


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """A teacher cache of the test module's own (one thread: the tests time nothing)."""
    from dsbench.teacher_cache import TeacherCache

    torch.set_num_threads(1)
    return TeacherCache(tmp_path_factory.mktemp("teachers"))


def run_quietly(exp, store, tmp_path, teachers, **kw):
    """``runner.run_experiment`` with the artifacts in ``tmp_path``, the module's teacher cache, no progress bars."""
    from dsbench import runner

    return runner.run_experiment(
        exp, store, artifacts=tmp_path / "artifacts", teacher_cache=teachers, progress=False, **kw
    )
