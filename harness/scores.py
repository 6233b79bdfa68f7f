"""The shared token-score library (docs/concepts.md#token-scores): which tokens a TOPK layer recomputes.

Composite score S = B(base + λ3·n), top-k by a stable descending argsort so that the
selections for different k are nested. ``base`` is λ1·s1 + λ2·s2 for the attention
importance, or one of v-norm / norm / similarity / random.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

IMPORTANCES = ("attention", "vnorm", "norm", "similarity", "random")
CFG_SELECTIONS = ("shared", "per_half")

# Names of the statistics the engine records on demand (docs/concepts.md#the-token-cache).
SELF_ATTN = "self_attn"  # head-mean self-attention probabilities, B×N_q×N_k
# its column sums (attention each key receives), B×N_k float32: all s1 reads, and B×N instead of
# B×N×N; recorded in place of SELF_ATTN at layers that never run TOPK (whose map rows never change)
SELF_ATTN_RECEIVED = "self_attn_received"
CROSS_ENTROPY = "cross_entropy"  # entropy of each query's text distribution, B×N
VALUE_NORM = "value_norm"  # per-head value norms, B×H×N
LAYER_INPUT = "layer_input"  # layer input at each token's last computation (similarity)
SELF_KEYS = "self_keys"  # self-attention key projections of all tokens, B×N×C (stale-KV TOPK)
SELF_VALUES = "self_values"  # self-attention value projections of all tokens, B×N×C


@dataclass(frozen=True)
class ScoreSpec:
    """Weights of the composite score; a zero weight removes a term (ablations −s1/−s2/−s3/−B)."""

    attention_received: float = 0.0  # λ1 (s1)
    cross_entropy: float = 0.0  # λ2 (s2)
    staleness: float = 0.0  # λ3
    bonus: float = 0.0  # λ4
    bonus_grid: int = 1  # k of the k×k tiles
    importance: str = "attention"
    cfg_selection: str = "shared"

    def __post_init__(self):
        if self.importance not in IMPORTANCES:
            raise ValueError(f"importance must be one of {IMPORTANCES}, got {self.importance!r}")
        if self.cfg_selection not in CFG_SELECTIONS:
            raise ValueError(f"cfg_selection must be one of {CFG_SELECTIONS}, got {self.cfg_selection!r}")
        if self.bonus_grid < 1:
            raise ValueError(f"bonus_grid must be >= 1, got {self.bonus_grid}")

    def stats_needed(self) -> frozenset[str]:
        if self.importance == "attention":
            need = set()
            if self.attention_received:
                need.add(SELF_ATTN)
            if self.cross_entropy:
                need.add(CROSS_ENTROPY)
            return frozenset(need)
        return frozenset({"vnorm": {VALUE_NORM}, "similarity": {LAYER_INPUT}}.get(self.importance, set()))


@dataclass
class ScoreContext:
    """What a selector may read for one layer at one step (all tensors per sample, B rows)."""

    layer_tokens: str  # "image", "text" or "joint"
    n_image: int
    n_text: int
    grid: tuple[int, int]
    cfg_batched: bool
    staleness: torch.Tensor  # B×n (int)
    layer_input_fn: Callable[[], torch.Tensor]  # the current layer input, B×n×C (computed on demand)
    stats: dict  # the block's recorded statistics (see names above)
    reference_input: torch.Tensor | None  # B×n×C input at each token's last computation
    generator: torch.Generator | None = None
    hidden_states: torch.Tensor | None = None  # B×n×C the layer input before norm and modulation

    @property
    def layer_input(self) -> torch.Tensor:
        return self.layer_input_fn()

    @property
    def batch(self) -> int:
        return self.staleness.shape[0]

    @property
    def n(self) -> int:
        return self.staleness.shape[1]


def l2norm(x: torch.Tensor) -> torch.Tensor:
    """Normalise each sample's score vector to unit L2 norm over tokens."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _token_slice(ctx: ScoreContext, width: int) -> slice:
    """Which entries of a per-key / per-query vector of ``width`` belong to this layer's tokens.

    Maps are over the attention's tokens: image only (DiT, PixArt, Wan) or [text; image]
    (FLUX joint attention); a layer may run on a part of them.
    """
    if width == ctx.n:
        return slice(None)
    if width == ctx.n_image + ctx.n_text:
        return slice(ctx.n_text, None) if ctx.layer_tokens == "image" else slice(0, ctx.n_text)
    raise ValueError(f"statistics over {width} tokens do not match a layer of {ctx.n} tokens")


def attention_received(ctx: ScoreContext) -> torch.Tensor:
    """s1: column sums of the head-mean self-attention map (attention each token receives)."""
    received = ctx.stats.get(SELF_ATTN_RECEIVED)
    if received is None:
        received = ctx.stats[SELF_ATTN].float().sum(dim=1)
    return l2norm(received[:, _token_slice(ctx, received.shape[1])])


def cross_attention_entropy(ctx: ScoreContext) -> torch.Tensor:
    """s2: L2norm(1 + entropy of the query's distribution over valid text tokens)."""
    ent = ctx.stats[CROSS_ENTROPY]
    return l2norm(1.0 + ent[:, _token_slice(ctx, ent.shape[1])].float())


def value_norm_score(ctx: ScoreContext) -> torch.Tensor:
    """DuCa V-norm: L2norm(Σ_h (1 − ‖v_h,i‖)); small-norm tokens are recomputed."""
    vn = ctx.stats[VALUE_NORM].float()
    return l2norm((1.0 - vn).sum(dim=1)[:, _token_slice(ctx, vn.shape[2])])


def norm_score(ctx: ScoreContext) -> torch.Tensor:
    return l2norm(ctx.layer_input.float().norm(dim=-1))


def similarity_score(ctx: ScoreContext) -> torch.Tensor:
    """L2norm(1 − cos(x_now, x_ref)): tokens whose input moved most since their last computation."""
    ref = ctx.reference_input if ctx.reference_input is not None else ctx.layer_input
    cos = torch.nn.functional.cosine_similarity(ctx.layer_input.float(), ref.float(), dim=-1)
    return l2norm(1.0 - cos)


def random_score(ctx: ScoreContext) -> torch.Tensor:
    rows = ctx.batch // 2 if ctx.cfg_batched else ctx.batch
    r = torch.rand(rows, ctx.n, generator=ctx.generator, device="cpu").to(ctx.staleness.device)
    return r.repeat(2, 1) if ctx.cfg_batched else r


def spatial_bonus(score: torch.Tensor, grid: tuple[int, int], k: int, weight: float) -> torch.Tensor:
    """Add weight × (tile max) to the argmax token of every k×k tile of the image grid."""
    b, n = score.shape
    h, w = grid
    if h * w != n:
        raise ValueError(f"spatial bonus needs the image grid {h}×{w} to cover the {n} tokens")
    ph, pw = (-h) % k, (-w) % k  # pad so the tiles cover the grid (docs/concepts.md#token-scores)
    s = score.view(b, h, w)
    if ph or pw:
        s = torch.nn.functional.pad(s, (0, pw, 0, ph), value=float("-inf"))
    hh, ww = s.shape[1] // k, s.shape[2] // k
    tiles = s.view(b, hh, k, ww, k).permute(0, 1, 3, 2, 4).reshape(b, hh * ww, k * k)
    best, arg = tiles.max(dim=-1)
    bonus = torch.zeros_like(tiles)
    bonus.scatter_(-1, arg.unsqueeze(-1), (weight * best).unsqueeze(-1))
    bonus = bonus.view(b, hh, ww, k, k).permute(0, 1, 3, 2, 4).reshape(b, hh * k, ww * k)[:, :h, :w]
    return score + bonus.reshape(b, n)


def composite_score(ctx: ScoreContext, spec: ScoreSpec) -> torch.Tensor:
    """S = B(base + λ3·n), averaged over CFG halves when the selection is shared."""
    if spec.importance == "attention":
        base = torch.zeros(ctx.batch, ctx.n, device=ctx.staleness.device)
        if spec.attention_received:
            base = base + spec.attention_received * attention_received(ctx)
        if spec.cross_entropy:
            base = base + spec.cross_entropy * cross_attention_entropy(ctx)
    else:
        base = {"vnorm": value_norm_score, "norm": norm_score, "similarity": similarity_score, "random": random_score}[
            spec.importance
        ](ctx)
    score = base + spec.staleness * ctx.staleness.float() if spec.staleness else base
    if ctx.cfg_batched and spec.cfg_selection == "shared":
        half = ctx.batch // 2
        score = (0.5 * (score[:half] + score[half:])).repeat(2, 1)
    if spec.bonus and ctx.layer_tokens != "text":
        if ctx.layer_tokens == "joint":  # bonus on the image part only (FLUX single blocks)
            img = spatial_bonus(score[:, ctx.n_text :], ctx.grid, spec.bonus_grid, spec.bonus)
            score = torch.cat([score[:, : ctx.n_text], img], dim=1)
        else:
            score = spatial_bonus(score, ctx.grid, spec.bonus_grid, spec.bonus)
    return score


def select_tokens(ctx: ScoreContext, spec: ScoreSpec, k: int) -> torch.Tensor:
    """Indices [B, k] of the k highest-scoring tokens (stable descending order: nested masks)."""
    score = composite_score(ctx, spec)
    return torch.argsort(score, dim=-1, descending=True, stable=True)[:, :k]
