"""FLUX.1 (``FluxTransformer2DModel``): double-stream ``FluxTransformerBlock`` and
single-stream ``FluxSingleTransformerBlock`` with ``FluxAttnProcessor``.

The block forwards below are diffusers' own (0.42), with each sub-module routed through the
engine. Pre-gate outputs follow docs/concepts.md#the-token-cache: the double-block ``attn`` layer caches the
post-projection outputs of both streams as one [text; image] tensor; the single-block
``attn`` layer caches the pre-projection attention output, which its ``mlp`` layer projects
together with the MLP branch. Norms, modulation and gates are recomputed every call.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_flux import FluxAttnProcessor

from dsbench.adapters.attention import attention
from dsbench.adapters.base import Adapter
from dsbench.core import CallInfo, LayerExecutor, LayerResult, gather_rows
from dsbench.scores import CROSS_ENTROPY, SELF_ATTN, VALUE_NORM

FP16_MAX = 65504


def check_processor(attn, where: str) -> None:
    """The kernel below reproduces FluxAttnProcessor on torch SDPA, nothing else."""
    processor = attn.processor
    if type(processor) is not FluxAttnProcessor:
        raise TypeError(
            f"{where}: attention processor {type(processor).__name__} is not supported (IP-adapter "
            "and custom processors change the block outputs); only FluxAttnProcessor is"
        )
    if processor._attention_backend not in (None, "native") or processor._parallel_config is not None:
        raise TypeError(
            f"{where}: attention backend {processor._attention_backend!r} / context parallelism is "
            "not supported; the token cache runs its own torch SDPA kernel"
        )


def projections(attn, x: torch.Tensor, added: bool = False) -> tuple[torch.Tensor, ...]:
    """q, k, v as B×N×H×d from the image (or, ``added``, the text) projections, fused or not."""
    if attn.fused_projections:
        qkv = (attn.to_added_qkv if added else attn.to_qkv)(x).chunk(3, dim=-1)
    elif added:
        qkv = attn.add_q_proj(x), attn.add_k_proj(x), attn.add_v_proj(x)
    else:
        qkv = attn.to_q(x), attn.to_k(x), attn.to_v(x)
    return tuple(t.unflatten(-1, (-1, attn.head_dim)) for t in qkv)


def attend(counter, q, k, v, rope, want, n_text: int) -> tuple[torch.Tensor, dict]:
    """Rotary embedding in diffusers' B×N×H×d layout, then the shared kernel (text keys first)."""
    if rope is not None:
        q = apply_rotary_emb(q, rope, sequence_dim=1)
        k = apply_rotary_emb(k, rope, sequence_dim=1)
    out, stats = attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), counter=counter, want=want, text_keys=n_text
    )
    return out.to(q.dtype), stats


def double_attention(attn, counter, x, text, rope, want) -> LayerResult:
    """Joint attention of a double block: [to_add_out(text rows); to_out(image rows)]."""
    q, k, v = projections(attn, x)
    q, k = attn.norm_q(q), attn.norm_k(k)
    tq, tk, tv = projections(attn, text, added=True)
    q = torch.cat([attn.norm_added_q(tq), q], dim=1)
    k = torch.cat([attn.norm_added_k(tk), k], dim=1)
    v = torch.cat([tv, v], dim=1)
    n_text = text.shape[1]
    out, stats = attend(counter, q, k, v, rope, want, n_text)
    out_text = attn.to_add_out(out[:, :n_text].contiguous())
    out_image = attn.to_out[1](attn.to_out[0](out[:, n_text:].contiguous()))
    return LayerResult(torch.cat([out_text, out_image], dim=1), stats)


def single_attention(attn, counter, h, rope, want, n_text: int) -> LayerResult:
    """Attention of a single block over [text; image], before any projection (pre_only)."""
    q, k, v = projections(attn, h)
    out, stats = attend(counter, attn.norm_q(q), attn.norm_k(k), v, rope, want, n_text)
    return LayerResult(out, stats)


def image_grid(n: int, img_ids) -> tuple[int, int]:
    """(rows, cols) of the image tokens without reading data unless needed (meta tensors allowed)."""
    side = math.isqrt(n)
    if side * side == n:
        return side, side
    if isinstance(img_ids, torch.Tensor) and not img_ids.is_meta:
        ids = img_ids.reshape(-1, img_ids.shape[-1])
        rows, cols = len(torch.unique(ids[:, 1])), len(torch.unique(ids[:, 2]))
        if rows * cols == n:
            return rows, cols
    return 1, n


class FluxAdapter(Adapter):
    family = "flux"
    default_cfg_batched = False
    module_provides = {"attn": frozenset({SELF_ATTN, CROSS_ENTROPY, VALUE_NORM})}

    def __init__(self, model):
        self.variant = "dev" if model.config.guidance_embeds else "schnell"
        for name in ("transformer_blocks", "single_transformer_blocks"):
            for i, block in enumerate(getattr(model, name)):
                check_processor(block.attn, f"{type(model).__name__}.{name}[{i}]")
        super().__init__(model)

    def list_blocks(self):
        return [(block, "double") for block in self.model.transformer_blocks] + [
            (block, "single") for block in self.model.single_transformer_blocks
        ]

    def modules_of(self, block, stream):
        if stream == "double":
            return [("attn", "joint", False), ("img_mlp", "image", True), ("txt_mlp", "text", True)]
        return [("attn", "joint", False), ("mlp", "joint", True)]

    def call_info(self, args, kwargs) -> CallInfo:
        bound = self.bind(args, kwargs)
        extra = set(bound.get("joint_attention_kwargs") or {}) - {"scale"}
        if extra:  # IP-adapter embeddings, attention masks, ...
            raise TypeError(
                f"FluxTransformer2DModel: joint_attention_kwargs {sorted(extra)} are not supported "
                "by the token cache (only the LoRA 'scale')"
            )
        x, text = bound["hidden_states"], bound["encoder_hidden_states"]
        n = x.shape[1]
        return CallInfo(batch=x.shape[0], n_image=n, n_text=text.shape[1], grid=image_grid(n, bound.get("img_ids")))

    def output_state(self, out):
        return tuple(out)

    def make_forward(self, engine: LayerExecutor, b: int, block) -> Callable:
        ids = self.block_layers[b]
        counter = engine.counter

        def rows(module, h):
            return lambda index, want: LayerResult(module(gather_rows(h, index)))

        def double_body(x, text, temb, rope):
            norm_x, gate_msa, shift_mlp, scale_mlp, gate_mlp = block.norm1(x, emb=temb)
            norm_t, c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp = block.norm1_context(text, emb=temb)
            attn = engine.layer(
                ids["attn"],
                torch.cat([norm_t, norm_x], dim=1),
                lambda index, want: double_attention(block.attn, counter, norm_x, norm_t, rope, want),
            )
            n_text = text.shape[1]
            x = x + gate_msa.unsqueeze(1) * attn[:, n_text:]
            norm_x = block.norm2(x) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
            x = x + gate_mlp.unsqueeze(1) * engine.layer(ids["img_mlp"], norm_x, rows(block.ff, norm_x))
            text = text + c_gate_msa.unsqueeze(1) * attn[:, :n_text]
            norm_t = block.norm2_context(text) * (1 + c_scale_mlp[:, None]) + c_shift_mlp[:, None]
            text = text + c_gate_mlp.unsqueeze(1) * engine.layer(ids["txt_mlp"], norm_t, rows(block.ff_context, norm_t))
            if text.dtype == torch.float16:
                text = text.clip(-FP16_MAX, FP16_MAX)
            return text, x

        def single_body(x, text, temb, rope):
            n_text = text.shape[1]
            h = torch.cat([text, x], dim=1)
            norm_h, gate = block.norm(h, emb=temb)
            attn = engine.layer(
                ids["attn"],
                norm_h,
                lambda index, want: single_attention(block.attn, counter, norm_h, rope, want, n_text),
            )

            def mlp(index, want):  # proj_out over [attention rows (maybe cached), fresh MLP rows]
                hidden = block.act_mlp(block.proj_mlp(gather_rows(norm_h, index)))
                return LayerResult(block.proj_out(torch.cat([gather_rows(attn, index), hidden], dim=2)))

            h = h + gate.unsqueeze(1) * engine.layer(ids["mlp"], norm_h, mlp)
            if h.dtype == torch.float16:
                h = h.clip(-FP16_MAX, FP16_MAX)
            return h[:, :n_text], h[:, n_text:]

        body = double_body if self.blocks[b][1] == "double" else single_body

        def forward(hidden_states, encoder_hidden_states, temb, image_rotary_emb=None, joint_attention_kwargs=None):
            # joint_attention_kwargs holds nothing here: call_info rejects every key the blocks would use
            return engine.run_block(
                b,
                lambda: body(hidden_states, encoder_hidden_states, temb, image_rotary_emb),
                (encoder_hidden_states, hidden_states),
                tuple,
            )

        return forward
