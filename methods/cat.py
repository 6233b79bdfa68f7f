"""``cat``: CAT Pruning (cluster-aware token pruning) ported to PixArt-α (docs/methods/cat.md).

Steps i < t0 are full. From step t0 on, every block recomputes only an index set I of
⌊α·N⌋ image tokens — the same set for every block and both CFG halves — chosen at the end of
the previous step from the model output: a few tokens with the largest change of the predicted
noise since step t0−2 inside the highest-scoring spatial clusters (K-means once, at step t0−1),
the rest the least recently selected tokens (EWMA frequency). On those steps self-attention
computes queries for I against the previous keys/values with I's rows updated (stale K/V),
cross-attention and MLP are TOPK on I, and the final output of the other tokens is the previous
step's.
"""

from __future__ import annotations

import pydantic
import torch

from dsbench.core import FULL, Decision, Layer, Method, MethodConfig, NotApplicable, RunInfo, ratio_to_count, topk
from dsbench.methods.base import register
from dsbench.methods.pruning import both_halves, cond_rows, noise_tokens
from dsbench.scores import SELF_KEYS, SELF_VALUES

TOP_CLUSTERS = (3, 2, 1)  # quotas of the three best clusters, in units of q = ⌊0.25·k / 6⌋ [PD]
FEATURE_SCALE = 0.05  # K-means features: 0.05·n_i + pos_enc [C]
KMEANS_ITERATIONS = 100


class CatConfig(MethodConfig):
    alpha: float = pydantic.Field(
        0.3, gt=0.0, le=1.0, description="fraction α of image tokens recomputed per pruned step, in (0, 1]"
    )
    t0: int | None = pydantic.Field(
        None,
        ge=2,
        description="full warm-up steps t0 >= 2 (default min(8, round(0.3·T)): 6 at T = 20, 8 at T = 28 and 50)",
    )
    clusters: int = pydantic.Field(20, ge=1, description="K-means clusters >= 1")
    ewma: float = pydantic.Field(0.5, ge=0.0, le=1.0, description="EWMA decay a of the selection frequency, in [0, 1]")
    seed: int = pydantic.Field(0, ge=0, le=2**32 - 1, description="K-means initialisation seed in [0, 2³² − 1]")


@register
class Cat(Method):
    name = "cat"
    Config = CatConfig
    budget_field = "alpha"
    summary = "cluster-aware token pruning: after t0 full steps, one noise/cluster/staleness-chosen token set per step"
    extra_stats = frozenset({SELF_KEYS, SELF_VALUES})  # stale K/V of the pruned self-attention

    def reset(self, run: RunInfo) -> None:
        if run.family not in ("dit", "pixart"):
            raise NotApplicable(f"cat runs on DiT and PixArt (BasicTransformerBlock) models, not {run.family}")
        super().reset(run)
        c = self.config
        # [PD] 6 at T = 20 (docs/methods/cat.md); the paper's 8 at T = 28 and 50
        self.t0 = c.t0 if c.t0 is not None else max(2, min(8, round(0.3 * run.num_steps)))
        self.k = ratio_to_count(c.alpha, run.n_image)
        self.reference = None  # n_{t0−2}, per image
        self.labels = None  # K-means cluster of every token, per image
        self.frequency = None  # EWMA selection frequency f, per image
        self.index = None  # I for the next step, B×k

    def resolved_config(self) -> dict:
        return {**self.config.model_dump(), "t0": self.t0, "tokens": self.k}

    # -- decisions ------------------------------------------------------------------------------
    def _pruned(self, i: int) -> bool:
        return i >= self.t0 and self.index is not None

    def decide(self, i: int, layer: Layer) -> Decision:
        if not self._pruned(i):
            return FULL
        return topk(self.k, kv="stale") if layer.module == "sa" else topk(self.k)

    def select(self, i, layer, k, ctx):
        return self.index

    def output_rows(self, i: int):
        return self.index if self._pruned(i) else None

    # -- selection at the end of a step ------------------------------------------------------------
    def end_step(self, i: int, output) -> None:
        if i < self.t0 - 2 or i + 1 >= self.run.num_steps:
            return
        if output[0].is_meta:  # MAC-only run on the meta device: any k tokens cost the same
            if i >= self.t0 - 1:
                self.index = torch.arange(self.k, device="meta").expand(self.run.batch, -1)
            return
        n = cond_rows(noise_tokens(output, self.run), self.run).float().cpu()  # small: selection runs on the CPU
        if i == self.t0 - 2:
            self.reference = n
            return
        relative = n - self.reference  # RN
        if self.labels is None:  # step t0−1: cluster once, score by one graph-pooling pass
            self.labels = torch.stack([self._cluster(x) for x in n])
            self.frequency = torch.zeros(n.shape[:2])
            scores = [
                graph_pooled_scores(
                    pool_max(r, lab, self.n_clusters), cluster_adjacency(lab, self.run.grid, self.n_clusters)
                )
                for r, lab in zip(relative, self.labels)
            ]
        else:
            scores = [pool_max(r, lab, self.n_clusters).norm(dim=-1) for r, lab in zip(relative, self.labels)]
        chosen = torch.stack(
            [
                self._choose(r.norm(dim=-1), lab, s, f)
                for r, lab, s, f in zip(relative, self.labels, scores, self.frequency)
            ]
        )
        self.frequency = self.config.ewma * self.frequency + chosen.float()
        self.selection_macs += 3 * n.shape[1] * n.shape[2]  # RN, its norm and the cluster max-pool
        index = torch.stack([row.nonzero().squeeze(1) for row in chosen])
        self.index = both_halves(index, self.run).to(output[0].device)

    @property
    def n_clusters(self) -> int:
        return min(self.config.clusters, self.run.n_image)

    def _cluster(self, n: torch.Tensor) -> torch.Tensor:
        """K-means on 0.05·n + pos_enc (row/h on the first half of the features, col/w on the rest)."""
        rows, cols = self.run.grid
        d = n.shape[1]
        r = torch.arange(rows).repeat_interleave(cols).float() / rows
        c = torch.arange(cols).repeat(rows).float() / cols
        pos = torch.cat([r[:, None].expand(-1, d // 2), c[:, None].expand(-1, d - d // 2)], dim=1)
        labels, iterations = kmeans(FEATURE_SCALE * n + pos, self.n_clusters, self.config.seed)
        self.selection_macs += iterations * n.shape[0] * self.n_clusters * d / self._images()
        return labels

    def _images(self) -> int:
        return self.run.batch // 2 if self.run.cfg_batched else self.run.batch

    def _choose(
        self, rho: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor, frequency: torch.Tensor
    ) -> torch.Tensor:
        """Mask of the k tokens: the highest-ρ tokens of the 3 best clusters (quotas 3q, 2q, q),
        then the least frequently selected tokens (ties: larger ρ first)."""
        chosen = torch.zeros_like(rho, dtype=torch.bool)
        q = int(0.25 * self.k / 6)
        for quota, cluster in zip(TOP_CLUSTERS, torch.argsort(scores, descending=True, stable=True)):
            members = (labels == cluster).nonzero().squeeze(1)
            best = members[torch.argsort(rho[members], descending=True, stable=True)[: quota * q]]
            chosen[best] = True
        by_rho = torch.argsort(rho, descending=True, stable=True)
        order = by_rho[torch.argsort(frequency[by_rho], stable=True)]
        rest = order[~chosen[order]][: self.k - int(chosen.sum())]
        chosen[rest] = True
        return chosen


def kmeans(x: torch.Tensor, k: int, seed: int) -> tuple[torch.Tensor, int]:
    """Lloyd's K-means of the rows of x (N×d): (labels, iterations). Initial centres are k distinct
    rows drawn with ``seed``; an empty cluster keeps its centre."""
    generator = torch.Generator().manual_seed(seed)
    centres = x[torch.randperm(x.shape[0], generator=generator)[:k]].clone()
    labels = None
    for iteration in range(1, KMEANS_ITERATIONS + 1):
        new = torch.cdist(x, centres).argmin(dim=1)
        if labels is not None and torch.equal(new, labels):
            return labels, iteration
        labels = new
        sums = torch.zeros_like(centres).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=k)[:, None]
        centres = torch.where(counts > 0, sums / counts.clamp_min(1), centres)
    return labels, KMEANS_ITERATIONS


def cluster_adjacency(labels: torch.Tensor, grid: tuple[int, int], k: int) -> torch.Tensor:
    """k×k: clusters that hold 4-neighbouring tokens (no self loops)."""
    g = labels.view(grid)
    a = torch.cat([g[:, :-1].reshape(-1), g[:-1, :].reshape(-1)])
    b = torch.cat([g[:, 1:].reshape(-1), g[1:, :].reshape(-1)])
    adjacency = torch.zeros(k, k, dtype=torch.bool)
    adjacency[a, b] = True
    adjacency[b, a] = True
    adjacency.fill_diagonal_(False)
    return adjacency


def pool_max(relative: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """k×d channel-wise max of RN over each cluster's tokens (0 for an empty cluster)."""
    pooled = torch.full((k, relative.shape[1]), float("-inf"))
    pooled = pooled.scatter_reduce(0, labels[:, None].expand_as(relative), relative, "amax")
    return pooled.nan_to_num(neginf=0.0)


def graph_pooled_scores(pooled: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
    """One non-trainable graph-pooling pass, then the L2 norm: self + mean + mean + max over the
    neighbour clusters ([PD] reading of docs/methods/cat.md; no neighbours aggregate to 0)."""
    degree = adjacency.sum(dim=1, keepdim=True)
    mean = (adjacency.float() @ pooled) / degree.clamp_min(1)
    neighbours = torch.where(adjacency[:, :, None], pooled[None], float("-inf"))
    largest = neighbours.amax(dim=1).nan_to_num(neginf=0.0)
    return (pooled + 2 * mean + largest).norm(dim=-1)
