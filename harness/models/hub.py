"""The real models, loaded from the Hugging Face hub with ``from_pretrained`` (GPU machines).

Offline (no cache, no network) each fails fast with a message naming the checkpoint and the
files it could not find, instead of hanging on the network or failing deep inside diffusers.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from dsbench.models.bundle import ModelBundle, Sampler
from dsbench.models.embedded.common import guided_channels, sample_in_batches

# name → (repo, pipeline class, family, sampler); see docs/concepts.md#models-layers-and-tokens and
# docs/evaluation.md#metrics
HUB_MODELS = {
    "dit-xl-2-256": ("facebook/DiT-XL-2-256", "DiTPipeline", "dit", Sampler("ddim-linspace", 50, 1.5, 256)),
    "pixart-alpha-256": (
        "PixArt-alpha/PixArt-XL-2-256x256",
        "PixArtAlphaPipeline",
        "pixart",
        Sampler("dpm-solver++", 20, 4.5, 256),
    ),
    "pixart-alpha-512": (
        "PixArt-alpha/PixArt-XL-2-512x512",
        "PixArtAlphaPipeline",
        "pixart",
        Sampler("dpm-solver++", 20, 4.5, 512),
    ),
    "flux-schnell": (
        "black-forest-labs/FLUX.1-schnell",
        "FluxPipeline",
        "flux",
        Sampler("flow-euler", 4, 0.0, 256, {"max_sequence_length": 256}),
    ),
    "wan2.1-1.3b": (
        "Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
        "WanPipeline",
        "wan",
        Sampler("unipc-flow", 20, 5.0, 256, {"num_frames": 17}),
    ),
}


class CheckpointUnavailable(RuntimeError):
    pass


def fetch(repo: str) -> str:
    """Local path of the checkpoint snapshot; CheckpointUnavailable naming it otherwise."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return snapshot_download(repo, local_files_only=True)
    except LocalEntryNotFoundError:
        if hub_offline():
            raise CheckpointUnavailable(
                f"checkpoint {repo} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
                f"download it on a machine with hub access (huggingface-cli download {repo})"
            ) from None
    try:
        return snapshot_download(repo, etag_timeout=10)
    except Exception as err:  # network, auth (gated repos), disk
        raise CheckpointUnavailable(
            f"checkpoint {repo} could not be downloaded ({type(err).__name__}: {err}); it is needed in the "
            f"local Hugging Face cache (huggingface-cli download {repo})"
        ) from None


def _conditions(family: str):
    def conditions(n: int, seed: int) -> list:
        rng = np.random.default_rng(seed)
        if family == "dit":  # 50 per class over ImageNet's 1000 (docs/evaluation.md#metrics), in a seeded order
            return [int(c) for c in rng.permutation(np.arange(n) % 1000)]
        raise ValueError(
            f"evaluation captions for {family} come from the prompt sets of docs/evaluation.md#datasets-and-prompts "
            "(COCO, PartiPrompts, VBench), which the experiment file names"
        )

    return conditions


# [PD] conditions per pipeline call: the evaluation sets (30k prompts, 50k classes) do not fit one call
BATCH = {"dit": 32, "pixart": 16, "flux": 4, "wan": 1}


def _sampler_call(pipe, family: str, sampler: Sampler):
    def sample(
        conditions: list,
        seed: int,
        steps: int | None = None,
        guidance_scale: float | None = None,
        start: int = 0,
        batch_size: int = BATCH[family],
        guidance_channels: int | None = None,
    ) -> torch.Tensor:
        """uint8 images (videos N×T×3×H×W) in batches; image i draws its noise from the generator of
        (seed, start + i), so a shard of the evaluation set (``start``: its first index) gives the images
        of one process. ``guidance_channels`` (DiT): guide only the first that many latent channels, as the
        original DiT sampler whose FIDs the paper reports (3)."""
        if guidance_channels is not None and family != "dit":
            raise ValueError(f"guidance_channels is the DiT sampler's; this is a {family} model")
        scale = sampler.guidance_scale if guidance_scale is None else guidance_scale

        def generate(batch: list, gens: list[torch.Generator]) -> torch.Tensor:
            kw = dict(
                num_inference_steps=steps or sampler.steps,
                guidance_scale=scale,
                generator=gens,
                output_type="pt",
                **sampler.extra,
            )
            if family == "dit":
                return pipe(class_labels=batch, **kw).images
            out = pipe(prompt=batch, height=sampler.resolution, width=sampler.resolution, **kw)
            return out.frames if family == "wan" else out.images

        with guided_channels(pipe, guidance_channels, scale):
            return sample_in_batches(conditions, seed, batch_size, sampler.resolution, generate, start)

    return sample


def loader(name: str):
    """The loader of hub model ``name``: (device, dtype) → its bundle, from the hub or the local cache."""
    repo, pipeline_cls, family, sampler = HUB_MODELS[name]

    def load(device="cuda", dtype=None) -> ModelBundle:
        import diffusers

        path = fetch(repo)
        pipe = getattr(diffusers, pipeline_cls).from_pretrained(path, torch_dtype=dtype or torch.bfloat16)
        if family == "dit":  # DDIM with the DiT reference respacing (docs/evaluation.md#metrics)
            pipe.scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config, timestep_spacing="linspace")
        pipe = pipe.to(device)
        return ModelBundle(
            name=name,
            family=family,
            kind="hub",
            pipeline=pipe,
            sampler=sampler,
            conditions=_conditions(family),
            sample=_sampler_call(pipe, family, sampler),
            info={"repo": repo},
        )

    return load


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
