"""Attention kernel shared by the adapters.

Queries may be a token subset while keys/values cover all tokens (exact-query partial
attention, docs/concepts.md#the-token-cache). Fused SDPA is used unless a scorer needs the probabilities, in
which case they are materialised and their head-mean statistics returned (in chunks of batch
rows when only their column sums are kept).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dsbench.accounting import MacCounter
from dsbench.scores import CROSS_ENTROPY, SELF_ATTN, SELF_ATTN_RECEIVED, VALUE_NORM

# [PD] probabilities per chunk of batch rows when only column sums are kept: ~1 MiB in bf16, so a
# chunk's maps stay in a CPU's L2 cache; one DiT-S sample (6 heads × 256²) is about this size
CHUNK_PROBS = 2**19


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, _ = x.shape
    return x.view(b, n, heads, -1).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def entropy(p: torch.Tensor) -> torch.Tensor:
    """−Σ p log(p + 1e-7) over the last dim (the reference's epsilon, docs/concepts.md#token-scores)."""
    return -(p * torch.log(p + 1e-7)).sum(dim=-1)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    counter: MacCounter,
    mask: torch.Tensor | None = None,
    want: frozenset[str] = frozenset(),
    text_keys: int = 0,
    cross: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """softmax(q kᵀ/√d + mask) v on B×H×N×d tensors → (B×N_q×H·d output, statistics).

    want: statistics to return (names from dsbench.scores). ``cross`` marks a pure
    cross-attention (its entropy is over all keys); ``text_keys`` > 0 marks a joint attention
    whose first keys are text (FLUX), whose text entropy is over those keys renormalised.
    """
    b, h, n_q, d = q.shape
    counter.add_attention(n_q, k.shape[2], h * d, rows=b)
    stats: dict[str, torch.Tensor] = {}
    if VALUE_NORM in want:
        stats[VALUE_NORM] = v.float().norm(dim=-1)
    need_probs = SELF_ATTN in want or CROSS_ENTROPY in want
    if not need_probs:
        if SELF_ATTN_RECEIVED in want:
            out, stats[SELF_ATTN_RECEIVED] = attention_and_received(q, k, v, mask)
            return merge_heads(out), stats
        return merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=mask)), stats
    # in the compute dtype, as SDPA would run it: the B×H×N×N maps dominate the memory traffic
    # (torch's softmax and mean accumulate in float32 for reduced-precision inputs)
    logits = torch.matmul(q, k.transpose(-1, -2)) * d**-0.5
    if mask is not None:
        logits = logits + mask.to(logits.dtype)
    probs = logits.softmax(dim=-1).to(v.dtype)
    out = torch.matmul(probs, v)
    if SELF_ATTN in want:
        stats[SELF_ATTN] = probs.mean(dim=1, dtype=torch.float32)
    if SELF_ATTN_RECEIVED in want:
        stats[SELF_ATTN_RECEIVED] = probs.sum(dim=2, dtype=torch.float32).mean(dim=1)
    if CROSS_ENTROPY in want:
        if cross:
            stats[CROSS_ENTROPY] = entropy(probs.mean(dim=1))
        elif text_keys:
            text = logits[..., :text_keys].softmax(dim=-1, dtype=torch.float32)
            stats[CROSS_ENTROPY] = entropy(text.mean(dim=1))
    return merge_heads(out), stats


def attention_and_received(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q kᵀ/√d + mask) v (B×H×N_q×d) and the head-mean column sums of the probabilities
    (B×N_k, float32), for layers whose maps are only ever read as column sums (s1).

    Runs in chunks of batch rows, so the B×H×N_q×N_k probabilities never exist at once: a chunk's
    maps stay in cache, and no large temporary is allocated (glibc mmaps big blocks and faults
    them in again on every call). The scale is folded into q, which is smaller than the maps.
    """
    b, h, n_q, d = q.shape
    rows = max(1, CHUNK_PROBS // (h * n_q * k.shape[2]))
    q = q * d**-0.5
    outs, received = [], []
    for r in range(0, b, rows):
        logits = torch.matmul(q[r : r + rows], k[r : r + rows].transpose(-1, -2))
        if mask is not None:
            chunk_mask = mask[r : r + rows] if mask.dim() == 4 and mask.shape[0] == b else mask
            logits = logits + chunk_mask.to(logits.dtype)
        probs = logits.softmax(dim=-1).to(v.dtype)
        outs.append(torch.matmul(probs, v[r : r + rows]))
        received.append(probs.sum(dim=2, dtype=torch.float32).mean(dim=1))
    return torch.cat(outs), torch.cat(received)
