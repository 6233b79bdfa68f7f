"""``WanTransformerBlock`` of ``WanTransformer3DModel`` (Wan2.1 / Wan2.2 text-to-video).

The block forward below is diffusers' own (including its float32 modulation and residual
arithmetic) with each sub-module (sa, ca, mlp) routed through the engine; the attention
is ``WanAttnProcessor`` rewritten on the shared kernel so that a TOPK layer computes
queries, and their rotary rows, for the selected tokens only. Pre-gate outputs follow
docs/concepts.md#the-token-cache: ``ca`` is the cross-attention of the norm2 output and has no gate.
The stock WanPipeline runs cond and uncond as separate calls (docs/concepts.md#classifier-free-guidance); the engine
keeps one cache per ``cache_context`` name.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from dsbench.adapters.attention import attention
from dsbench.adapters.base import Adapter
from dsbench.core import CallInfo, LayerExecutor, LayerResult, gather_rows
from dsbench.scores import CROSS_ENTROPY, SELF_ATTN, VALUE_NORM


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """WanAttnProcessor's rotary embedding on B×n×H×d (same op order, so bit-identical)."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos = cos[..., 0::2]
    sin = sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


def rotary_rows(rotary_emb, index: torch.Tensor | None):
    """The (cos, sin) rows (1×N×1×d each) of the tokens ``index`` (B×k) → B×k×1×d."""
    if rotary_emb is None or index is None:
        return rotary_emb
    return tuple(f[0][index] for f in rotary_emb)


def wan_attend(
    attn, counter, x_q: torch.Tensor, x_kv: torch.Tensor, want, *, rotary_q=None, rotary_kv=None, cross=False
) -> LayerResult:
    """``WanAttention`` with queries ``x_q``: q/k RMS norms over the full inner dim, then heads."""
    q = attn.norm_q(attn.to_q(x_q)).unflatten(2, (attn.heads, -1))
    k = attn.norm_k(attn.to_k(x_kv)).unflatten(2, (attn.heads, -1))
    v = attn.to_v(x_kv).unflatten(2, (attn.heads, -1))
    if rotary_q is not None:
        q = apply_rotary(q, *rotary_q)
        k = apply_rotary(k, *rotary_kv)
    out, stats = attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), counter=counter, want=want, cross=cross
    )
    out = attn.to_out[1](attn.to_out[0](out.type_as(q)))
    return LayerResult(out, stats)


class WanAdapter(Adapter):
    family = "wan"
    default_cfg_batched = False
    module_provides = {"sa": frozenset({SELF_ATTN, VALUE_NORM}), "ca": frozenset({CROSS_ENTROPY})}

    def __init__(self, model):
        from diffusers.models.transformers.transformer_wan import WanAttnProcessor

        for i, block in enumerate(model.blocks):
            where = f"{type(model).__name__}.blocks[{i}]"
            if block.attn2.add_k_proj is not None:
                raise TypeError(
                    f"{where}: image conditioning (I2V, attn2.add_k_proj) is not supported; "
                    "only text-to-video Wan models are"
                )
            for attn in (block.attn1, block.attn2):
                if attn.fused_projections:
                    raise TypeError(
                        f"{where}: fused QKV projections are not supported; call unfuse_qkv_projections() first"
                    )
                if not isinstance(attn.processor, WanAttnProcessor):
                    raise TypeError(
                        f"{where}: attention processor {type(attn.processor).__name__} is not "
                        "supported; only diffusers' WanAttnProcessor is reproduced"
                    )
        super().__init__(model)

    def list_blocks(self):
        return [(block, "main") for block in self.model.blocks]

    def modules_of(self, block, stream):
        return [("sa", "image", True), ("ca", "image", True), ("mlp", "image", True)]

    def call_info(self, args, kwargs) -> CallInfo:
        bound = self.bind(args, kwargs)
        if bound.get("encoder_hidden_states_image") is not None:
            raise ValueError(
                "encoder_hidden_states_image (I2V image conditioning) is not supported by the "
                "Wan adapter; only text-to-video is"
            )
        _, _, frames, height, width = bound["hidden_states"].shape
        pt, ph, pw = self.model.config.patch_size
        f, h, w = frames // pt, height // ph, width // pw
        return CallInfo(
            batch=bound["hidden_states"].shape[0],
            n_image=f * h * w,
            n_text=bound["encoder_hidden_states"].shape[1],
            grid=(f * h, w),
        )

    def output_state(self, out):
        return (out,)

    def make_forward(self, engine: LayerExecutor, b: int, block) -> Callable:
        ids = self.block_layers[b]
        counter = engine.counter

        def self_attn(h, rotary_emb):
            return lambda index, want: wan_attend(
                block.attn1,
                counter,
                gather_rows(h, index),
                h,
                want,
                rotary_q=rotary_rows(rotary_emb, index),
                rotary_kv=rotary_emb,
            )

        def cross_attn(h, text):
            return lambda index, want: wan_attend(block.attn2, counter, gather_rows(h, index), text, want, cross=True)

        def mlp(h):
            return lambda index, want: LayerResult(block.ffn(gather_rows(h, index)))

        def body(x, text, temb, rotary_emb):
            if temb.ndim == 4:  # B×N×6×C per-token modulation (Wan2.2 TI2V)
                mods = [m.squeeze(2) for m in (block.scale_shift_table.unsqueeze(0) + temb.float()).chunk(6, dim=2)]
            else:  # B×6×C
                mods = (block.scale_shift_table + temb.float()).chunk(6, dim=1)
            shift_msa, scale_msa, gate_msa, c_shift_msa, c_scale_msa, c_gate_msa = mods
            norm_h = (block.norm1(x.float()) * (1 + scale_msa) + shift_msa).type_as(x)
            out = engine.layer(ids["sa"], norm_h, self_attn(norm_h, rotary_emb))
            x = (x.float() + out * gate_msa).type_as(x)
            norm_h = block.norm2(x.float()).type_as(x)
            x = x + engine.layer(ids["ca"], norm_h, cross_attn(norm_h, text))
            norm_h = (block.norm3(x.float()) * (1 + c_scale_msa) + c_shift_msa).type_as(x)
            out = engine.layer(ids["mlp"], norm_h, mlp(norm_h))
            return (x.float() + out.float() * c_gate_msa).type_as(x)

        def forward(hidden_states, encoder_hidden_states, temb, rotary_emb):
            return engine.run_block(
                b,
                lambda: body(hidden_states, encoder_hidden_states, temb, rotary_emb),
                (hidden_states,),
                lambda state: state[0],
            )

        return forward
