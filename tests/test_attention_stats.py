"""Attention statistics kept lean: column sums instead of maps where no TOPK can replace map rows,
and none recorded where nothing reads them (the last step). s1 must not change."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import Fixed, dit_pipeline, run_dit

import dsbench
from dsbench import methods
from dsbench.accounting import MacCounter
from dsbench.adapters import attention as attention_module
from dsbench.adapters.attention import attention
from dsbench.methods import FULL, REUSE, topk
from dsbench.methods.toca import Toca
from dsbench.scores import SELF_ATTN, SELF_ATTN_RECEIVED, ScoreSpec

B, H, N, D = 3, 2, 10, 8


@pytest.mark.parametrize("mask_batch", [None, B, 1], ids=["no-mask", "per-row-mask", "shared-mask"])
@pytest.mark.parametrize("chunk", [None, 1], ids=["one-chunk", "row-per-chunk"])
def test_column_sums_match_the_map(monkeypatch, mask_batch, chunk):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, N, D, generator=g) for _ in range(3))
    mask = None if mask_batch is None else torch.randn(mask_batch, 1, N, N, generator=g)
    if chunk is not None:
        monkeypatch.setattr(attention_module, "CHUNK_PROBS", chunk)
    counter = MacCounter(torch.nn.Identity())
    out_map, stats_map = attention(q, k, v, counter=counter, mask=mask, want=frozenset({SELF_ATTN}))
    out, stats = attention(q, k, v, counter=counter, mask=mask, want=frozenset({SELF_ATTN_RECEIVED}))
    assert set(stats) == {SELF_ATTN_RECEIVED} and stats[SELF_ATTN_RECEIVED].shape == (B, N)
    torch.testing.assert_close(out, out_map, rtol=0, atol=1e-6)
    torch.testing.assert_close(stats[SELF_ATTN_RECEIVED], stats_map[SELF_ATTN].sum(dim=1), rtol=1e-6, atol=1e-6)
    sdpa, _ = attention(q, k, v, counter=counter, mask=mask)
    torch.testing.assert_close(out, sdpa, rtol=0, atol=1e-5)


class TocaKeepingMaps(Toca):
    """ToCa that claims it may run TOPK anywhere, so the engine keeps full attention maps (not registered)."""

    def may_topk(self, layer):
        return layer.supports_topk


def test_toca_dit_keeps_column_sums_and_selects_as_with_maps():
    pipe = dit_pipeline()
    with dsbench.attach(pipe, methods.build("toca")) as handle:
        lean = run_dit(pipe, steps=10)
        stats = handle.engine.latest()[1]["main"].block_stats[0]
    assert set(stats) == {SELF_ATTN_RECEIVED} and stats[SELF_ATTN_RECEIVED].shape == (4, 16)
    assert any("TOPK" in d for step in handle.report()["decisions"] for d in step)  # s1 was really used
    with dsbench.attach(pipe, TocaKeepingMaps(methods.build("toca").config)) as handle:
        with_maps = run_dit(pipe, steps=10)
        stats = handle.engine.latest()[1]["main"].block_stats[0]
    assert set(stats) == {SELF_ATTN} and stats[SELF_ATTN].shape == (4, 16, 16)
    assert np.abs(lean - with_maps).max() <= 1e-5


class Promising(Fixed):
    """Fixed decisions, s1 scores; says it never runs TOPK, whatever ``decide`` does."""

    def __init__(self, decide):
        super().__init__(decide)
        self.score = ScoreSpec(attention_received=1.0)

    def may_topk(self, layer):
        return False


def test_topk_where_may_topk_said_never_is_an_error():
    pipe = dit_pipeline()
    method = Promising(lambda i, layer: FULL if i == 0 else (topk(3) if layer.module == "sa" else REUSE))
    with dsbench.attach(pipe, method), pytest.raises(RuntimeError, match="may_topk"):
        run_dit(pipe, steps=3)


class Recording(Fixed):
    """Fixed decisions, s1 scores; keeps block 0's statistics as they are after each step."""

    def __init__(self, decide):
        super().__init__(decide)
        self.score = ScoreSpec(attention_received=1.0)
        self.engine = None
        self.after_step = []

    def end_step(self, i, output):
        self.after_step.append(dict(self.engine.latest()[1]["main"].block_stats[0]))


@pytest.mark.parametrize("last_step_topk", [False, True], ids=["last-step-full", "last-step-topk"])
def test_last_step_records_statistics_only_for_its_own_topk(last_step_topk):
    steps = 3

    def decide(i, layer):
        if i == steps - 1 and last_step_topk and layer.module == "mlp":
            return topk(4)
        return FULL

    pipe = dit_pipeline()
    method = Recording(decide)
    with dsbench.attach(pipe, method) as handle:
        method.engine = handle.engine
        run_dit(pipe, steps=steps)
    first, second, last = (s[SELF_ATTN] for s in method.after_step)
    assert second is not first  # recorded at every step a later TOPK may read
    assert (last is not second) == last_step_topk
