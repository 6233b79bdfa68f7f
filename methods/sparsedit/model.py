"""SparseDiT as a model transform (docs/methods/sparsedit.md): ``sparsify(transformer, config)`` rebuilds a
``DiTTransformer2DModel``'s block stack as

    poolingformers → SDTMs [sparse-gen, sparse × k, dense-recovery, dense × d] → top dense blocks

initialised from the pretrained blocks, sequentially by depth. The result keeps the transformer's
forward signature and output type (and its ``config`` / ``dtype``), so ``DiTPipeline`` runs it as is.

The number of sparse tokens follows the timestep (the reconstruction of the paper's Eq. 5 in
docs/methods/sparsedit.md):
r(t) = r_min for t < T/4, linear up to r_max at t = T, and the sparse grid side is
s = round(√((1 − r)·N)). All samples of one call must share s (the sampler's calls do; training
draws each batch from one piece of constant s, see :func:`pieces`).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dsbench.core import NotApplicable, check_plain_attention

# Layouts by depth (docs/methods/sparsedit.md): poolingformers, SDTMs, sparse and dense blocks per SDTM, top blocks.
# [PD] 6 blocks (the embedded mnist-dit): 1 poolingformer + 1 SDTM [1, 1, 1, 1] + 1 top block — the smallest
# layout that keeps every segment of the paper's design.
PRESET_LAYOUTS = {
    28: dict(poolingformers=2, sdtms=4, sparse_blocks=3, dense_blocks=1, top_blocks=2),  # DiT-XL/2
    12: dict(poolingformers=1, sdtms=2, sparse_blocks=2, dense_blocks=1, top_blocks=1),  # DiT-B/2
    6: dict(poolingformers=1, sdtms=1, sparse_blocks=1, dense_blocks=1, top_blocks=1),  # mnist-dit [PD]
}
LAYOUT_FIELDS = tuple(PRESET_LAYOUTS[28])


@dataclass(frozen=True)
class Layout:
    poolingformers: int
    sdtms: int
    sparse_blocks: int  # per SDTM, after its sparse-generation block
    dense_blocks: int  # per SDTM, after its dense-recovery block
    top_blocks: int

    @property
    def depth(self) -> int:
        """Pretrained blocks the layout consumes (each SDTM also has one generation and one recovery block)."""
        return self.poolingformers + self.sdtms * (2 + self.sparse_blocks + self.dense_blocks) + self.top_blocks


def resolve_layout(num_layers: int, **given: int | None) -> Layout:
    """The layout for a ``num_layers``-block DiT: the given fields over the preset of that depth."""
    preset = PRESET_LAYOUTS.get(num_layers)
    missing = [name for name in LAYOUT_FIELDS if given.get(name) is None]
    if preset is None and missing:
        raise ValueError(
            f"sparsedit: no preset layout for a {num_layers}-block DiT (presets for "
            f"{sorted(PRESET_LAYOUTS)} blocks); give {', '.join(missing)}"
        )
    layout = Layout(**{name: given[name] if given.get(name) is not None else preset[name] for name in LAYOUT_FIELDS})
    if layout.depth != num_layers:
        raise ValueError(
            f"sparsedit: layout {', '.join(f'{k}={v}' for k, v in vars(layout).items())} uses "
            f"poolingformers + sdtms·(2 + sparse_blocks + dense_blocks) + top_blocks = {layout.depth} "
            f"blocks, the transformer has {num_layers}"
        )
    return layout


# -- timestep-wise pruning rate (docs/methods/sparsedit.md) -------------------------------------------------------


def pruning_rate(t: float, r_min: float, r_max: float, num_train_timesteps: int = 1000) -> float:
    """r(t): r_min for t < T/4, then ((4T − 4t)·r_min + (4t − T)·r_max)/(3T), reaching r_max at t = T (pure noise)."""
    T = num_train_timesteps
    if t < T / 4:
        return r_min
    return ((4 * T - 4 * t) * r_min + (4 * t - T) * r_max) / (3 * T)


def grid_side(r: float, n_tokens: int) -> int:
    """Sparse grid side s = round(√((1 − r)·N)), at least 1 (halves round up)."""
    return max(1, math.floor(math.sqrt((1 - r) * n_tokens) + 0.5))


def pieces(r_min: float, r_max: float, n_tokens: int, num_train_timesteps: int = 1000) -> list[tuple[int, int, int]]:
    """Maximal timestep intervals [lo, hi) of one grid side s, as (lo, hi, s): fine-tuning draws each batch
    inside one piece, so the batch shares its token count while t stays uniform overall (paper §3.2)."""
    out: list[list[int]] = []
    for t in range(num_train_timesteps):
        s = grid_side(pruning_rate(t, r_min, r_max, num_train_timesteps), n_tokens)
        if out and out[-1][2] == s:
            out[-1][1] = t + 1
        else:
            out.append([t, t + 1, s])
    return [tuple(p) for p in out]


# -- blocks ------------------------------------------------------------------------------------------


def attention(attn, x_q: torch.Tensor, x_kv: torch.Tensor, counter) -> torch.Tensor:
    """diffusers ``Attention`` (AttnProcessor2_0 arithmetic) with queries from ``x_q``, keys/values from ``x_kv``."""
    b, heads = x_q.shape[0], attn.heads
    q = attn.to_q(x_q)
    k, v = attn.to_k(x_kv), attn.to_v(x_kv)
    d = k.shape[-1] // heads
    q, k, v = (z.view(b, -1, heads, d).transpose(1, 2) for z in (q, k, v))
    if counter is not None:
        counter.add_attention(q.shape[2], k.shape[2], heads * d, rows=b)
    out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, -1, heads * d).to(q.dtype)
    return attn.to_out[1](attn.to_out[0](out))


class Block(nn.Module):
    """A pretrained DiT block (adaLN-Zero, attention, gated MLP) on its own copy of the weights.

    ``kv`` gives the keys/values a different token set from the queries (sparse generation: q = X_s,
    kv = X; dense recovery: q = X_m, kv = X_s); both pass the block's norm and modulation [PD], so with
    kv = x it is exactly the pretrained block. diffusers keeps q, k and v as separate matrices, so the
    paper's "split the pretrained qkv into q and kv" is carried over as is. A poolingformer drops q and
    k: x ← x + g·W_o(mean_n(V)).
    """

    def __init__(self, block, pooling: bool = False):
        super().__init__()
        self.norm1 = copy.deepcopy(block.norm1)  # AdaLayerNormZero: timestep/label embedding, adaLN linear, norm
        self.attn1 = copy.deepcopy(block.attn1)
        self.norm3 = copy.deepcopy(block.norm3)
        self.ff = copy.deepcopy(block.ff)
        self.pooling = pooling
        if pooling:
            self.attn1.to_q = None
            self.attn1.to_k = None
        self.counter = None  # a harness MacCounter while attached: attention MACs

    def forward(self, x: torch.Tensor, timestep, class_labels, kv: torch.Tensor | None = None) -> torch.Tensor:
        norm1 = self.norm1
        emb = norm1.linear(norm1.silu(norm1.emb(timestep, class_labels, hidden_dtype=x.dtype)))
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = emb[:, None].chunk(6, dim=2)
        h = norm1.norm(x) * (1 + scale_msa) + shift_msa
        if self.pooling:
            # mean over tokens before W_o (equal to W_o on every token, then the mean): one row per sample
            a = self.attn1.to_out[1](self.attn1.to_out[0](self.attn1.to_v(h).mean(dim=1, keepdim=True)))
        else:
            h_kv = h if kv is None or kv is x else norm1.norm(kv) * (1 + scale_msa) + shift_msa
            a = attention(self.attn1, h, h_kv, self.counter)
        x = gate_msa * a + x
        h = self.norm3(x) * (1 + scale_mlp) + shift_mlp
        return gate_mlp * self.ff(h) + x


def _to_grid(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    b, _, c = x.shape
    return x.transpose(1, 2).reshape(b, c, *grid)


def _to_tokens(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).transpose(1, 2)


class SDTM(nn.Module):
    """Sparse-dense token module: pool to s×s sparse tokens, sparse generation (q = X_s, kv = X), sparse
    blocks, merge X_m = W_1·NearestUp(X_s) + W_2·X_in + pos, dense recovery (q = X_m, kv = X_s), dense blocks.

    With ``side`` None (pruning disabled) it is the dense equivalent: no pooling, and the recovery block
    continues the sparse stream (X_m = X_s), so the module is exactly its pretrained blocks in sequence.
    """

    def __init__(self, blocks: list, sparse_blocks: int, dim: int):
        super().__init__()
        self.generate = Block(blocks[0])
        self.sparse = nn.ModuleList(Block(b) for b in blocks[1 : 1 + sparse_blocks])
        self.recover = Block(blocks[1 + sparse_blocks])
        self.dense = nn.ModuleList(Block(b) for b in blocks[2 + sparse_blocks :])
        # W_1 = 0, W_2 = I, zero biases: at initialisation X_m is the module's dense input (plus positions)
        ref = blocks[0].norm1.linear.weight  # new layers on the model's device and dtype
        like = dict(device=ref.device, dtype=ref.dtype)
        self.merge_sparse = nn.Linear(dim, dim, **like)
        self.merge_dense = nn.Linear(dim, dim, **like)
        with torch.no_grad():
            nn.init.zeros_(self.merge_sparse.weight)
            nn.init.zeros_(self.merge_sparse.bias)
            self.merge_dense.weight.copy_(torch.eye(dim))
            nn.init.zeros_(self.merge_dense.bias)

    def forward(self, x, timestep, class_labels, grid: tuple[int, int], side: int | None, pos: torch.Tensor):
        xs = x if side is None else _to_tokens(F.adaptive_avg_pool2d(_to_grid(x, grid), side))
        xs = self.generate(xs, timestep, class_labels, kv=x)
        for block in self.sparse:
            xs = block(xs, timestep, class_labels)
        if side is None:
            x = self.recover(xs, timestep, class_labels)
        else:
            up = _to_tokens(F.interpolate(_to_grid(xs, (side, side)), size=grid, mode="nearest"))
            merged = self.merge_sparse(up) + self.merge_dense(x) + pos.to(x.dtype)
            x = self.recover(merged, timestep, class_labels, kv=xs)
        for block in self.dense:
            x = block(x, timestep, class_labels)
        return x


class SparseDiT(nn.Module):
    """The rebuilt transformer: ``forward`` takes and returns what ``DiTTransformer2DModel.forward`` does."""

    def __init__(
        self,
        transformer,
        layout: Layout,
        r_min: float,
        r_max: float,
        prune: bool = True,
        num_train_timesteps: int = 1000,
    ):
        super().__init__()
        blocks = list(transformer.transformer_blocks)
        self.config = transformer.config  # what pipelines read (sample_size, in/out channels, ...)
        self.layout, self.prune = layout, prune
        self.r_min, self.r_max, self.num_train_timesteps = r_min, r_max, num_train_timesteps
        self.patch_size, self.out_channels = transformer.patch_size, transformer.out_channels
        self.pos_embed = copy.deepcopy(transformer.pos_embed)
        p = layout.poolingformers
        # [PD] pruning disabled: the bottom blocks keep their attention (the dense equivalent of a poolingformer)
        self.poolingformers = nn.ModuleList(Block(b, pooling=prune) for b in blocks[:p])
        per = 2 + layout.sparse_blocks + layout.dense_blocks
        dim = transformer.inner_dim
        self.sdtms = nn.ModuleList(
            SDTM(blocks[p + i * per : p + (i + 1) * per], layout.sparse_blocks, dim) for i in range(layout.sdtms)
        )
        self.top = nn.ModuleList(Block(b) for b in blocks[p + layout.sdtms * per :])
        self.norm_out = copy.deepcopy(transformer.norm_out)
        self.proj_out_1 = copy.deepcopy(transformer.proj_out_1)
        self.proj_out_2 = copy.deepcopy(transformer.proj_out_2)

    @property
    def dtype(self) -> torch.dtype:
        return self.proj_out_2.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.proj_out_2.weight.device

    def set_counter(self, counter) -> None:
        """Report attention MACs (QKᵀ + AV) to a harness MacCounter (None: stop)."""
        for module in self.modules():
            if isinstance(module, Block):
                module.counter = counter

    def blocks_in_order(self) -> list[Block]:
        out = list(self.poolingformers)
        for sdtm in self.sdtms:
            out += [sdtm.generate, *sdtm.sparse, sdtm.recover, *sdtm.dense]
        return out + list(self.top)

    def grid_side(self, timestep, grid: tuple[int, int]) -> int | None:
        """Sparse grid side of this call (None when pruning is disabled); one side per call."""
        if not self.prune:
            return None
        n = grid[0] * grid[1]
        if isinstance(timestep, torch.Tensor) and timestep.is_meta:
            raise ValueError(
                "sparsedit: its token count depends on the timestep values, which a meta-device "
                "MAC simulation does not have; count MACs on a real (random-weight) model instead"
            )
        values = torch.as_tensor(timestep).reshape(-1).tolist()
        sides = {grid_side(pruning_rate(t, self.r_min, self.r_max, self.num_train_timesteps), n) for t in values}
        if len(sides) != 1:
            raise ValueError(
                f"sparsedit: the timesteps of one call map to sparse grid sides {sorted(sides)}; a call "
                "needs one side (draw a training batch inside one piece of dsbench.methods.sparsedit.pieces)"
            )
        return min(sides.pop(), *grid)

    def positions(self, grid: tuple[int, int], device) -> torch.Tensor:
        """The sin-cos position embedding the patch embedder adds, re-added at dense recovery [P; PD: to X_m]."""
        pe = self.pos_embed
        if (pe.height, pe.width) == grid:
            return pe.pos_embed
        from diffusers.models.embeddings import get_2d_sincos_pos_embed

        return (
            get_2d_sincos_pos_embed(
                embed_dim=pe.pos_embed.shape[-1],
                grid_size=grid,
                base_size=pe.base_size,
                interpolation_scale=pe.interpolation_scale,
                device=device,
                output_type="pt",
            )
            .float()
            .unsqueeze(0)
        )

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep=None,
        class_labels=None,
        cross_attention_kwargs=None,
        return_dict: bool = True,
    ):
        from diffusers.models.modeling_outputs import Transformer2DModelOutput

        p = self.patch_size
        grid = (hidden_states.shape[-2] // p, hidden_states.shape[-1] // p)
        side = self.grid_side(timestep, grid)
        x = self.pos_embed(hidden_states)
        for block in self.poolingformers:
            x = block(x, timestep, class_labels)
        pos = self.positions(grid, x.device) if side is not None else None
        for sdtm in self.sdtms:
            x = sdtm(x, timestep, class_labels, grid, side, pos)
        for block in self.top:
            x = block(x, timestep, class_labels)
        # final layer, as DiTTransformer2DModel: conditioned on the first block's embedding
        conditioning = self.blocks_in_order()[0].norm1.emb(timestep, class_labels, hidden_dtype=x.dtype)
        shift, scale = self.proj_out_1(F.silu(conditioning)).chunk(2, dim=1)
        x = self.norm_out(x) * (1 + scale[:, None]) + shift[:, None]
        x = self.proj_out_2(x)
        x = x.reshape(-1, grid[0], grid[1], p, p, self.out_channels)
        out = torch.einsum("nhwpqc->nchpwq", x).reshape(-1, self.out_channels, grid[0] * p, grid[1] * p)
        return Transformer2DModelOutput(sample=out) if return_dict else (out,)


def check_transformer(transformer) -> None:
    """NotApplicable unless ``transformer`` is a DiT this transform supports."""
    import diffusers

    if not isinstance(transformer, diffusers.DiTTransformer2DModel):
        raise NotApplicable(f"sparsedit transforms a DiTTransformer2DModel, got {type(transformer).__name__}")
    for i, block in enumerate(transformer.transformer_blocks):
        if (
            block.norm_type != "ada_norm_zero"
            or block.attn2 is not None
            or block.attn1.norm_q is not None
            or block.attn1.norm_k is not None
        ):
            raise NotApplicable("sparsedit supports DiT blocks with ada_norm_zero, no cross-attention and no q/k norm")
        try:
            check_plain_attention(block.attn1, f"DiTTransformer2DModel.transformer_blocks[{i}]")
        except TypeError as err:  # an attention this transform cannot rebuild: the model is out of its reach
            raise NotApplicable(f"sparsedit: {err}") from None


def sparsify(
    transformer,
    layout: Layout,
    r_min: float = 0.61,
    r_max: float = 0.86,
    prune: bool = True,
    num_train_timesteps: int = 1000,
) -> SparseDiT:
    """SparseDiT from a pretrained ``DiTTransformer2DModel`` (its weights are copied, never changed)."""
    check_transformer(transformer)
    if layout.depth != len(transformer.transformer_blocks):
        raise ValueError(
            f"sparsedit: the layout uses {layout.depth} blocks, the transformer has "
            f"{len(transformer.transformer_blocks)}"
        )
    if not 0.0 <= r_min <= r_max < 1.0:
        raise ValueError(f"sparsedit: need 0 <= r_min <= r_max < 1, got r_min={r_min}, r_max={r_max}")
    return SparseDiT(transformer, layout, r_min, r_max, prune=prune, num_train_timesteps=num_train_timesteps)
