"""Final-latent agreement of dsbench's ToCa, DuCa and TaylorSeer with the authors' DiT code (results/faithfulness.md).

A random-weight 28-block DiT (hidden 32, 2 heads, 256 tokens) is built as a diffusers
``DiTTransformer2DModel`` and its weights are converted into the reference repository's ``DiT`` class
(imported from the given checkout; nothing of theirs is copied here). Both models then sample from the same
noise with one shared DDIM-50 loop (diffusers ``DDIMScheduler``, CFG 1.5 on a [cond, uncond] batch), the
reference under its own caching (``cache_init`` and ``current['step']`` counting down, as its sampler sets
them), ours under ``dsbench.attach``. Printed: relative L2 of the final latents, ours vs reference, next to
each method's distance to the uncached model.

    python benchmarks/faithfulness.py --toca PATH/ToCa --duca PATH/DuCa --taylorseer PATH/TaylorSeer

Without timm installed a minimal stand-in for the two timm classes the reference imports (PatchEmbed, Mlp;
``use_fused_attn`` → False) is registered first.
"""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

import torch
from diffusers import DDIMScheduler, DiTTransformer2DModel
from torch import nn

import dsbench
from dsbench import methods

HIDDEN, HEADS, DEPTH, SIZE = 32, 2, 28, 32


def timm_stand_in() -> None:
    """PatchEmbed and Mlp with timm's attribute names and forward, for the reference ``models.py``."""
    try:
        import timm  # noqa: F401

        return
    except ImportError:
        pass

    class PatchEmbed(nn.Module):
        def __init__(self, img_size, patch_size, in_chans, embed_dim, bias=True):
            super().__init__()
            self.patch_size = (patch_size, patch_size)
            self.num_patches = (img_size // patch_size) ** 2
            self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, patch_size, bias=bias)

        def forward(self, x):
            return self.proj(x).flatten(2).transpose(1, 2)

    class Mlp(nn.Module):
        def __init__(self, in_features, hidden_features, act_layer, drop=0):
            super().__init__()
            self.fc1, self.act, self.fc2 = (
                nn.Linear(in_features, hidden_features),
                act_layer(),
                nn.Linear(hidden_features, in_features),
            )

        def forward(self, x):
            return self.fc2(self.act(self.fc1(x)))

    timm = types.ModuleType("timm")
    models, vit, layers = (
        types.ModuleType(n) for n in ("timm.models", "timm.models.vision_transformer", "timm.layers")
    )
    vit.PatchEmbed, vit.Mlp, layers.use_fused_attn = PatchEmbed, Mlp, lambda: False
    sys.modules.update(
        {"timm": timm, "timm.models": models, "timm.models.vision_transformer": vit, "timm.layers": layers}
    )


def reference_module(folder: Path):
    """The reference folder's ``models`` module (each repository has its own ``models`` and ``cache_functions``)."""
    for name in list(sys.modules):
        if name in ("models", "taylor_utils") or name.startswith(("cache_functions", "taylor_utils.")):
            del sys.modules[name]
    sys.path.insert(0, str(folder))
    try:
        import models
    finally:
        sys.path.remove(str(folder))
    return models


def ours(seed: int) -> DiTTransformer2DModel:
    """Random weights; one shared timestep/label embedder (the reference has one) and the reference's
    timestep frequencies (``downscale_freq_shift`` 0)."""
    torch.manual_seed(seed)
    model = DiTTransformer2DModel(
        num_attention_heads=HEADS,
        attention_head_dim=HIDDEN // HEADS,
        in_channels=4,
        out_channels=8,
        num_layers=DEPTH,
        sample_size=SIZE,
        patch_size=2,
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_zero",
    ).eval()
    with torch.no_grad():
        for p in model.parameters():  # adaLN-zero init would make every block an identity
            p.normal_(0, 0.05)
    emb = model.transformer_blocks[0].norm1.emb
    for block in model.transformer_blocks:
        block.norm1.emb.load_state_dict(emb.state_dict())
        block.norm1.emb.time_proj.downscale_freq_shift = 0
    return model


def convert(model: DiTTransformer2DModel, reference_models) -> nn.Module:
    ref = reference_models.DiT(
        input_size=SIZE, patch_size=2, in_channels=4, hidden_size=HIDDEN, depth=DEPTH, num_heads=HEADS
    ).eval()
    emb = model.transformer_blocks[0].norm1.emb
    pairs = [
        (ref.x_embedder.proj, model.pos_embed.proj),
        (ref.t_embedder.mlp[0], emb.timestep_embedder.linear_1),
        (ref.t_embedder.mlp[2], emb.timestep_embedder.linear_2),
        (ref.final_layer.adaLN_modulation[1], model.proj_out_1),
        (ref.final_layer.linear, model.proj_out_2),
    ]
    for rb, ob in zip(ref.blocks, model.transformer_blocks):
        pairs += [
            (rb.adaLN_modulation[1], ob.norm1.linear),
            (rb.attn.proj, ob.attn1.to_out[0]),
            (rb.mlp.fc1, ob.ff.net[0].proj),
            (rb.mlp.fc2, ob.ff.net[2]),
        ]
    with torch.no_grad():
        for dst, src in pairs:
            dst.load_state_dict(src.state_dict())
        ref.pos_embed.copy_(model.pos_embed.pos_embed)
        ref.y_embedder.embedding_table.weight.copy_(emb.class_embedder.embedding_table.weight)
        for rb, ob in zip(ref.blocks, model.transformer_blocks):
            a = ob.attn1
            rb.attn.qkv.weight.copy_(torch.cat([a.to_q.weight, a.to_k.weight, a.to_v.weight]))
            rb.attn.qkv.bias.copy_(torch.cat([a.to_q.bias, a.to_k.bias, a.to_v.bias]))
    return ref


def sample(denoise, steps: int, seed: int) -> torch.Tensor:
    """One DDIM loop with CFG 1.5 on a [cond, uncond] batch; ``denoise(i, x, t, y)`` returns the model output."""
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False)
    scheduler.set_timesteps(steps)
    z = torch.randn(1, 4, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))
    y = torch.tensor([207, 1000])
    for i, t in enumerate(scheduler.timesteps):
        with torch.no_grad():
            out = denoise(i, torch.cat([z, z]), torch.full((2,), int(t)), y)[:, :4]
        cond, uncond = out.chunk(2)
        z = scheduler.step(uncond + 1.5 * (cond - uncond), t, z).prev_sample
    return z


def run_ours(model, method, steps: int, seed: int) -> torch.Tensor:
    with dsbench.attach(model, method, num_steps=steps):
        return sample(lambda i, x, t, y: model(x, t, y).sample, steps, seed)


def run_reference(ref, cache_init, kwargs: dict, steps: int, seed: int, first_enhance: int | None = None):
    cache_dic, current = cache_init(kwargs, steps)
    if first_enhance is not None:
        cache_dic["first_enhance"] = first_enhance

    def denoise(i, x, t, y):
        current["step"] = steps - 1 - i  # the reference samplers count down
        return ref.forward(x, t, current, cache_dic, y)

    return sample(denoise, steps, seed)


def check_checkouts(parser, args) -> None:
    for name in ("toca", "duca", "taylorseer"):
        if not getattr(args, name).is_dir():
            parser.error(f"--{name} {getattr(args, name)} is not a folder: give a checkout of the reference repository")


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--toca", type=Path, required=True, help="checkout of Shenyi-Z/ToCa")
    parser.add_argument("--duca", type=Path, required=True, help="checkout of Shenyi-Z/DuCa")
    parser.add_argument("--taylorseer", type=Path, required=True, help="checkout of Shenyi-Z/TaylorSeer")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    check_checkouts(parser, args)
    torch.set_num_threads(1)
    timm_stand_in()
    T, seed = args.steps, args.seed
    model = ours(seed)
    uncached = run_ours(model, methods.build("full"), T, seed)
    token = dict(cache_type="attention", force_fresh="global", soft_fresh_weight=0.25, test_FLOPs=False)
    cases = [
        (
            "toca R=0.07 N=3",
            args.toca / "DiT-ToCa",
            {**token, "fresh_ratio": 0.07, "fresh_threshold": 3, "ratio_scheduler": "ToCa-ddim50"},
            None,
            methods.build("toca", ratio=0.07, interval=3),
        ),
        (
            "duca R=0.05 N=3",
            args.duca / "DuCa-DiT",
            {**token, "fresh_ratio": 0.05, "fresh_threshold": 3, "ratio_scheduler": "ToCa"},
            None,
            methods.build("duca", ratio=0.05, interval=3),
        ),
        (
            "taylorseer N=4 m=4 W=2",
            args.taylorseer / "TaylorSeer-DiT",
            {"interval": 4, "max_order": 4, "test_FLOPs": False},
            2,
            methods.build("taylorseer", interval=4, order=4, warmup=2),
        ),
        (
            "taylorseer N=3 m=2 W=3",
            args.taylorseer / "TaylorSeer-DiT",
            {"interval": 3, "max_order": 2, "test_FLOPs": False},
            3,
            methods.build("taylorseer", interval=3, order=2, warmup=3),
        ),
    ]
    print(f"| setting (DiT, {T} DDIM steps) | ours vs reference | ours vs uncached | reference vs uncached |")
    print("|---|---|---|---|")
    module = reference_module(args.toca / "DiT-ToCa")  # conversion check: R = 0, N = 1 computes every step
    every_step = {**token, "fresh_ratio": 0.0, "fresh_threshold": 1, "ratio_scheduler": "ToCa-ddim50"}
    theirs = run_reference(convert(model, module), sys.modules["cache_functions"].cache_init, every_step, T, seed)
    print(f"| uncached (reference: ToCa R=0 N=1) | {rel(uncached, theirs):.2e} | 0 | {rel(theirs, uncached):.2e} |")
    for name, folder, kwargs, first_enhance, method in cases:
        module = reference_module(folder)
        ref = convert(model, module)
        theirs = run_reference(ref, sys.modules["cache_functions"].cache_init, kwargs, T, seed, first_enhance)
        mine = run_ours(model, method, T, seed)
        print(f"| {name} | {rel(mine, theirs):.2e} | {rel(mine, uncached):.2e} | {rel(theirs, uncached):.2e} |")


if __name__ == "__main__":
    main()
