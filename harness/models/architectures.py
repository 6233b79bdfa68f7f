"""The real models' architectures (configs shipped in ``configs/``, weights never loaded) and
the inputs of one denoiser call at their harness resolution (docs/concepts.md#models-layers-and-tokens).

``meta_model`` builds a transformer on the meta device: every shape is real, no memory is
allocated and nothing is downloaded — enough to run the executor and count MACs exactly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass(frozen=True)
class Architecture:
    name: str
    family: str
    default_steps: int
    cfg: bool  # whether the harness runs it with batched classifier-free guidance
    cfg_counted: bool  # MAC convention of the published tables (docs/accounting.md)
    latent: tuple[int, ...]  # one image's latent (or packed token) shape
    text_tokens: int = 0
    text_dim: int = 0

    def config(self) -> dict:
        return json.loads((CONFIG_DIR / f"{self.name}.json").read_text())


ARCHITECTURES = {
    a.name: a
    for a in (
        Architecture("dit-xl-2-256", "dit", 50, cfg=True, cfg_counted=True, latent=(4, 32, 32)),
        Architecture(
            "pixart-alpha-256",
            "pixart",
            20,
            cfg=True,
            cfg_counted=False,
            latent=(4, 32, 32),
            text_tokens=120,
            text_dim=4096,
        ),
        Architecture(
            "pixart-alpha-512",
            "pixart",
            20,
            cfg=True,
            cfg_counted=False,
            latent=(4, 64, 64),
            text_tokens=120,
            text_dim=4096,
        ),
        Architecture(
            "flux-schnell", "flux", 4, cfg=False, cfg_counted=False, latent=(256, 64), text_tokens=256, text_dim=4096
        ),  # 256² image: 16×16 packed latent tokens
        Architecture(
            "wan2.1-1.3b",
            "wan",
            20,
            cfg=True,
            cfg_counted=False,
            latent=(16, 5, 32, 32),
            text_tokens=512,
            text_dim=4096,
        ),  # 17 frames at 256²: 5 latent frames of 32×32
    )
}


def architecture(name: str) -> Architecture:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(ARCHITECTURES)}") from None


def meta_model(name: str) -> torch.nn.Module:
    import diffusers

    config = architecture(name).config()
    cls = getattr(diffusers, config.pop("_class_name"))
    config.pop("_source", None)
    with torch.device("meta"):
        return cls.from_config(config).eval()


def call_inputs(name: str, timestep: float, device: str | torch.device = "meta") -> dict:
    """Keyword inputs of one denoiser call for one generated image (both CFG rows if batched)."""
    arch = architecture(name)
    rows = 2 if arch.cfg else 1
    opts = {"device": device}
    t = torch.full((rows,), timestep, **opts)
    if arch.family == "dit":
        return {
            "hidden_states": torch.zeros(rows, *arch.latent, **opts),
            "timestep": t.long(),
            "class_labels": torch.zeros(rows, dtype=torch.long, **opts),
        }
    text = torch.zeros(rows, arch.text_tokens, arch.text_dim, **opts)
    if arch.family == "pixart":
        return {
            "hidden_states": torch.zeros(rows, *arch.latent, **opts),
            "timestep": t.long(),
            "encoder_hidden_states": text,
            "encoder_attention_mask": torch.ones(rows, arch.text_tokens, **opts),
            "added_cond_kwargs": {"resolution": None, "aspect_ratio": None},
        }
    if arch.family == "flux":
        side = int(arch.latent[0] ** 0.5)
        img_ids = torch.zeros(side, side, 3, **opts)
        img_ids[..., 1] = torch.arange(side, **opts)[:, None]
        img_ids[..., 2] = torch.arange(side, **opts)[None, :]
        return {
            "hidden_states": torch.zeros(rows, *arch.latent, **opts),
            "timestep": t / 1000,
            "encoder_hidden_states": text,
            "pooled_projections": torch.zeros(rows, 768, **opts),
            "img_ids": img_ids.reshape(-1, 3),
            "txt_ids": torch.zeros(arch.text_tokens, 3, **opts),
            "guidance": None,
        }
    return {
        "hidden_states": torch.zeros(rows, *arch.latent, **opts),
        "timestep": t.long(),
        "encoder_hidden_states": text,
    }
