"""Attach ToCa to a diffusers PixArt-α pipeline and read what it did.

Offline by default: a small random-weight pipeline of the real classes (PixArtAlphaPipeline,
PixArtTransformer2DModel, AutoencoderKL, DPMSolverMultistepScheduler). With --hub and a GPU
it loads PixArt-alpha/PixArt-XL-2-256x256 instead; the attach code is the same.
"""

import argparse

import torch
from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, PixArtAlphaPipeline, PixArtTransformer2DModel

import dsbench
from dsbench import methods


def tiny_pipeline() -> PixArtAlphaPipeline:
    torch.manual_seed(0)
    transformer = PixArtTransformer2DModel(
        num_attention_heads=4,
        attention_head_dim=16,
        in_channels=4,
        out_channels=8,
        num_layers=4,
        sample_size=16,
        patch_size=2,
        cross_attention_dim=64,
        caption_channels=32,
        norm_type="ada_norm_single",
        num_embeds_ada_norm=1000,
        norm_elementwise_affine=False,
        norm_eps=1e-6,
        attention_bias=True,
        activation_fn="gelu-approximate",
    )
    vae = AutoencoderKL(
        block_out_channels=(8,),
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        latent_channels=4,
        norm_num_groups=4,
    )
    return PixArtAlphaPipeline(
        tokenizer=None, text_encoder=None, vae=vae, transformer=transformer, scheduler=DPMSolverMultistepScheduler()
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hub", action="store_true", help="load PixArt-α 256 from the hub (GPU recommended)")
    args = parser.parse_args()
    if args.hub:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        pipe = PixArtAlphaPipeline.from_pretrained("PixArt-alpha/PixArt-XL-2-256x256", torch_dtype=torch.bfloat16).to(
            device
        )
        call = {"prompt": "a red cube on a blue sphere"}
    else:
        pipe = tiny_pipeline()
        g = torch.Generator().manual_seed(1)
        call = {
            "prompt_embeds": torch.randn(1, 8, 32, generator=g),
            "prompt_attention_mask": torch.ones(1, 8),
            "negative_prompt": None,
            "negative_prompt_embeds": torch.zeros(1, 8, 32),
            "negative_prompt_attention_mask": torch.ones(1, 8),
            "height": 16,
            "width": 16,
            "use_resolution_binning": False,
        }

    toca = methods.build("toca", ratio=0.3, interval=3)
    with dsbench.attach(pipe, toca) as handle:
        image = pipe(
            **call, num_inference_steps=20, guidance_scale=4.5, generator=torch.Generator().manual_seed(0)
        ).images[0]
        report = handle.report()
    # the pipeline is exactly as before here: handle detached on leaving the block
    print(f"image {image.size}, full steps {report['full_steps']}")
    print(
        f"M_lin per image: {report['macs_cfg_not_counted'] / 1e9:.3f} G MACs (CFG not counted), "
        f"token selection {report['selection_seconds'] * 1e3:.1f} ms"
    )
    print("step 1:", dict(zip(report["layers"][:6], report["decisions"][1][:6])))


if __name__ == "__main__":
    main()
