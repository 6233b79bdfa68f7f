"""``BasicTransformerBlock`` as used by ``DiTTransformer2DModel`` (ada_norm_zero, no
cross-attention) and ``PixArtTransformer2DModel`` (ada_norm_single, cross-attention).

The block forward below is diffusers' own, restricted to those two norm types, with each
sub-module (sa, ca, mlp) routed through the engine. Its pre-gate outputs are the ones of
docs/concepts.md#the-token-cache; gates, norms and modulation are recomputed every step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from dsbench.adapters.attention import attention, split_heads
from dsbench.adapters.base import Adapter
from dsbench.core import (
    AttentionKeys,
    CallInfo,
    LayerExecutor,
    LayerInput,
    LayerResult,
    check_plain_attention,
    gather_rows,
)
from dsbench.scores import CROSS_ENTROPY, SELF_ATTN, SELF_KEYS, SELF_VALUES, VALUE_NORM


def attend(attn, counter, x_q: torch.Tensor, x_kv: torch.Tensor, want, *, mask=None, cross=False, stale=None):
    """diffusers ``Attention`` (to_q/k/v, optional q/k norm, to_out) with queries ``x_q``.

    stale: (keys, values, index) — projections of an earlier computation whose rows ``index``
    are replaced by those of ``x_kv`` (CAT's stale-KV attention, docs/concepts.md#the-token-cache).
    """
    k_proj, v_proj = attn.to_k(x_kv), attn.to_v(x_kv)
    if stale is not None:
        keys, values, index = stale
        idx = index.unsqueeze(-1).expand(-1, -1, k_proj.shape[-1])
        k_proj, v_proj = keys.scatter(1, idx, k_proj.to(keys.dtype)), values.scatter(1, idx, v_proj.to(values.dtype))
    q = split_heads(attn.to_q(x_q), attn.heads)
    k = split_heads(k_proj, attn.heads)
    v = split_heads(v_proj, attn.heads)
    if attn.norm_q is not None:
        q = attn.norm_q(q)
    if attn.norm_k is not None:
        k = attn.norm_k(k)
    out, stats = attention(q, k, v, counter=counter, mask=mask, want=want, cross=cross)
    out = attn.to_out[1](attn.to_out[0](out.to(q.dtype)))
    if SELF_KEYS in want:
        stats[SELF_KEYS], stats[SELF_VALUES] = k_proj, v_proj
    return LayerResult(out, stats)


class BasicBlockAdapter(Adapter):
    default_cfg_batched = True
    module_provides = {
        "sa": frozenset({SELF_ATTN, VALUE_NORM, SELF_KEYS, SELF_VALUES}),
        "ca": frozenset({CROSS_ENTROPY}),
    }
    partial_keys = frozenset({"sa"})

    def __init__(self, model):
        norm_type = model.transformer_blocks[0].norm_type
        if norm_type not in ("ada_norm_zero", "ada_norm_single"):
            raise TypeError(
                f"{type(model).__name__} with norm_type={norm_type!r} is not supported; "
                "supported: ada_norm_zero (DiT) and ada_norm_single (PixArt)"
            )
        self.family = "dit" if norm_type == "ada_norm_zero" else "pixart"
        for i, block in enumerate(model.transformer_blocks):
            where = f"{type(model).__name__}.transformer_blocks[{i}]"
            if block.only_cross_attention or block.pos_embed is not None or block.double_self_attention:
                raise TypeError(
                    f"{where}: only_cross_attention / positional embeddings / double self-attention are not supported"
                )
            check_plain_attention(block.attn1, where)
            if block.attn2 is not None:
                check_plain_attention(block.attn2, where)
        super().__init__(model)
        c_in, c_out = model.config.in_channels, model.config.out_channels
        self.noise_channels = c_in if c_out == 2 * c_in else c_out  # learned-variance models: first half

    def list_blocks(self):
        return [(block, "main") for block in self.model.transformer_blocks]

    def modules_of(self, block, stream):
        if block.attn2 is not None:
            return [("sa", "image", True), ("ca", "image", True), ("mlp", "image", True)]
        return [("sa", "image", True), ("mlp", "image", True)]

    def call_info(self, args, kwargs) -> CallInfo:
        bound = self.bind(args, kwargs)
        x = bound["hidden_states"]
        p = self.model.config.patch_size
        grid = (x.shape[-2] // p, x.shape[-1] // p)
        text = bound.get("encoder_hidden_states")
        return CallInfo(
            batch=x.shape[0], n_image=grid[0] * grid[1], n_text=0 if text is None else text.shape[1], grid=grid
        )

    def output_state(self, out):
        return (out,)

    def keep_output_rows(self, out, previous, rows):
        """Token (r, c) is the p×p pixel patch at (r·p, c·p) of the B×C×H×W output."""
        sample = self.output_sample(out)
        p = self.model.config.patch_size
        grid = (sample.shape[-2] // p, sample.shape[-1] // p)
        keep = torch.zeros(sample.shape[0], grid[0] * grid[1], dtype=torch.bool, device=sample.device)
        keep.scatter_(1, rows, True)
        keep = keep.view(-1, 1, *grid).repeat_interleave(p, dim=2).repeat_interleave(p, dim=3)
        merged = torch.where(keep, sample, previous.to(sample.dtype))
        if isinstance(out, tuple):
            return (merged, *out[1:])
        return type(out)(**{**out, "sample": merged})

    def make_forward(self, engine: LayerExecutor, b: int, block) -> Callable:
        ids = self.block_layers[b]
        counter = engine.counter
        pixart = block.norm_type == "ada_norm_single"

        def modulated(norm, x, scale, shift) -> LayerInput:
            """norm(x)·(1 + scale) + shift, computed for all tokens or only the rows a TOPK needs."""
            return LayerInput(
                lambda: norm(x) * (1 + scale) + shift,
                lambda index: norm(gather_rows(x, index)) * (1 + scale) + shift,
                hidden=x,
            )

        def self_attn(h: LayerInput):  # exact-query (keys/values from all tokens) unless told otherwise
            def compute(index, want, keys: AttentionKeys | None = None):
                x_q = h.rows(index)
                if keys is None:
                    return attend(block.attn1, counter, x_q, h.full(), want)
                if keys.mode == "selected":
                    return attend(block.attn1, counter, x_q, x_q, want)
                return attend(block.attn1, counter, x_q, x_q, want, stale=(keys.keys, keys.values, index))

            return compute

        def cross_attn(x, text, mask):
            return lambda index, want: attend(
                block.attn2, counter, gather_rows(x, index), text, want, mask=mask, cross=True
            )

        def mlp(h: LayerInput):
            return lambda index, want: LayerResult(block.ff(h.rows(index)))

        def dit_body(x, timestep, class_labels):
            norm1 = block.norm1  # AdaLayerNormZero, its forward split so the norm can be lazy
            emb = norm1.linear(norm1.silu(norm1.emb(timestep, class_labels, hidden_dtype=x.dtype)))
            shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = emb[:, None].chunk(6, dim=2)
            h = modulated(norm1.norm, x, scale_msa, shift_msa)
            x = gate_msa * engine.layer(ids["sa"], h, self_attn(h)) + x
            h = modulated(block.norm3, x, scale_mlp, shift_mlp)
            return gate_mlp * engine.layer(ids["mlp"], h, mlp(h)) + x

        def pixart_body(x, timestep, text, text_mask):
            shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
                block.scale_shift_table[None] + timestep.reshape(x.shape[0], 6, -1)
            ).chunk(6, dim=1)
            h = modulated(block.norm1, x, scale_msa, shift_msa)
            x = gate_msa * engine.layer(ids["sa"], h, self_attn(h)) + x
            if block.attn2 is not None:  # PixArt applies no norm before attn2
                mask = None if text_mask is None else text_mask.unsqueeze(1)
                x = engine.layer(ids["ca"], x, cross_attn(x, text, mask)) + x
            h = modulated(block.norm2, x, scale_mlp, shift_mlp)
            return gate_mlp * engine.layer(ids["mlp"], h, mlp(h)) + x

        def forward(
            hidden_states,
            attention_mask=None,
            encoder_hidden_states=None,
            encoder_attention_mask=None,
            timestep=None,
            cross_attention_kwargs=None,
            class_labels=None,
            added_cond_kwargs=None,
        ):
            if attention_mask is not None:
                raise ValueError("self-attention masks are not supported by the token cache")
            if pixart:
                body = lambda: pixart_body(hidden_states, timestep, encoder_hidden_states, encoder_attention_mask)
            else:
                body = lambda: dit_body(hidden_states, timestep, class_labels)
            return engine.run_block(b, body, (hidden_states,), lambda state: state[0])

        return forward
