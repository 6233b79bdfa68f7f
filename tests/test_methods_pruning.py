"""Token-pruning methods on tiny real-class models: CAT Pruning (docs/methods/cat.md), DaTo (docs/methods/dato.md)."""

from __future__ import annotations

import pytest
import torch
from conftest import dit_pipeline, run_dit, tiny_dit, tiny_pixart

import dsbench
from dsbench import methods
from dsbench.methods.base import method_class
from dsbench.methods.cat import Cat, CatConfig
from dsbench.methods.dato import best_schedule, patch_argmax_mask, search_schedule
from dsbench.methods.pruning import noise_tokens
from dsbench.scores import SELF_KEYS


def _pixart_calls(steps, batch=4, seed=0):
    """Inputs of a bare PixArt transformer: batched CFG halves [rows :2 | rows 2:] with their own text."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, 16, 16, generator=g)
    text = torch.randn(batch, 6, 12, generator=g)
    mask = torch.ones(batch, 6)
    return [
        dict(
            hidden_states=x + 0.05 * i * torch.randn(batch, 4, 16, 16, generator=g),
            encoder_hidden_states=text,
            encoder_attention_mask=mask,
            timestep=torch.full((batch,), 950 - 90 * i),
            added_cond_kwargs={"resolution": None, "aspect_ratio": None},
        )
        for i in range(steps)
    ]


def _dit_calls(steps, batch=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, 16, 16, generator=g)
    labels = torch.tensor([1, 2, 1000, 1000][:batch])
    return [
        dict(
            hidden_states=x + 0.05 * i * torch.randn(batch, 4, 16, 16, generator=g),
            timestep=torch.full((batch,), 950 - 90 * i),
            class_labels=labels,
        )
        for i in range(steps)
    ]


# -- CAT ---------------------------------------------------------------------------------------------
def test_cat_full_steps_are_the_plain_model_then_one_token_set_per_step():
    model = tiny_pixart(num_layers=3, sample_size=16)  # 8×8 = 64 tokens
    calls = _pixart_calls(8)
    with torch.no_grad():
        plain = [model(**c).sample for c in calls]
    cat = methods.build("cat", alpha=0.3, t0=4)
    k = int(0.3 * 64)
    with torch.no_grad(), dsbench.attach(model, cat, num_steps=len(calls)) as handle:
        previous = keys_before = None
        for i, c in enumerate(calls):
            out = model(**c).sample
            state = handle.engine.branches["main"]
            if i < 4:
                assert torch.allclose(out, plain[i], atol=1e-6, rtol=0), f"full step {i} differs from the plain model"
            else:
                # one index set: the tokens every layer recomputed (staleness 0), both CFG halves alike
                fresh = [s == 0 for s in state.staleness.values()]
                assert all(torch.equal(f, fresh[0]) for f in fresh)
                assert fresh[0].sum(dim=1).tolist() == [k] * 4
                assert torch.equal(fresh[0][:2], fresh[0][2:])
                chosen = fresh[0].view(4, 1, 8, 1, 8, 1).expand(4, 1, 8, 2, 8, 2).reshape(4, 1, 16, 16)
                # final layer: unselected tokens keep the previous step's output, selected ones are new
                assert torch.equal(torch.where(chosen, 0, out), torch.where(chosen, 0, previous))
                assert not torch.equal(out[chosen.expand_as(out)], previous[chosen.expand_as(out)])
                # stale K/V: only the selected rows of the stored keys were updated
                keys = state.block_stats[1][SELF_KEYS]
                assert torch.equal(keys[~fresh[0]], keys_before[~fresh[0]])
                assert not torch.equal(keys[fresh[0]], keys_before[fresh[0]])
            previous, keys_before = out.clone(), state.block_stats[1][SELF_KEYS].clone()
        rep = handle.report()
    assert rep["full_steps"] == [0, 1, 2, 3]
    assert set(rep["decisions"][5]) == {f"TOPK({k},kv=stale)", f"TOPK({k})"}
    assert rep["config"]["t0"] == 4 and rep["selection_macs"] > 0
    # pruned steps cost about α of a full step's block MACs, plus the text K/V of cross-attention
    assert 0.25 < rep["macs_per_step"][5] / rep["macs_per_step"][0] < 0.6


def test_cat_selection_quotas_then_least_frequent_tokens():
    """k = 48 of 64: q = ⌊0.25·48/6⌋ = 2 → the top 6 / 4 / 2 ρ tokens of the three best clusters,
    then the 36 least-selected tokens (ties: larger ρ)."""
    cat = Cat(CatConfig(alpha=0.75))
    cat.k = 48
    labels = torch.arange(64) // 8  # 8 clusters of 8 consecutive tokens
    rho = torch.linspace(0, 1, 64).flip(0)  # token 0 has the largest change
    scores = torch.tensor([0.0, 0, 0, 0, 0, 3, 2, 1])  # best clusters: 5, 6, 7
    frequency = torch.ones(64)
    frequency[:40] = 0.0  # tokens 0..39 were selected least
    chosen = cat._choose(rho, labels, scores, frequency)
    expected = set(range(40, 46)) | set(range(48, 52)) | set(range(56, 58))  # quotas in clusters 5, 6, 7
    expected |= set(range(36))  # the 36 least frequent (frequency 0), largest ρ first
    assert int(chosen.sum()) == 48
    assert set(chosen.nonzero().squeeze(1).tolist()) == expected


def test_cat_clusters_are_spatial_and_seeded():
    from dsbench.methods.cat import cluster_adjacency, kmeans

    g = torch.Generator().manual_seed(3)
    n = torch.randn(64, 16, generator=g)
    pos = torch.cat([(torch.arange(64) // 8)[:, None].expand(-1, 8), (torch.arange(64) % 8)[:, None].expand(-1, 8)], 1)
    features = 0.05 * n + pos.float() / 8
    labels, _ = kmeans(features, 20, seed=0)
    assert torch.equal(labels, kmeans(features, 20, seed=0)[0])
    adjacency = cluster_adjacency(labels, (8, 8), 20)
    assert torch.equal(adjacency, adjacency.T) and not adjacency.diagonal().any()
    # position dominates the features: every cluster is a spatially compact blob
    rows, cols = torch.arange(64) // 8, torch.arange(64) % 8
    for c in labels.unique():
        member = labels == c
        assert int(rows[member].max() - rows[member].min()) <= 4 and int(cols[member].max() - cols[member].min()) <= 4


# -- DaTo --------------------------------------------------------------------------------------------
def _capture_selections(method):
    """Record what DaTo's select sees and returns, per call of select."""
    seen = []
    original = method.select

    def select(i, layer, k, ctx):
        sel = original(i, layer, k, ctx)
        seen.append((i, layer, k, ctx.hidden_states.clone(), ctx.layer_input.clone(), sel, method.base.clone()))
        return sel

    method.select = select
    return seen


@pytest.mark.parametrize("recover_from", ["kept", "base"])
def test_dato_prunes_the_tokens_most_similar_to_base_and_copies_the_nearest_output(recover_from):
    model = tiny_dit(num_layers=2, sample_size=16)  # 64 tokens, C = 16
    calls = _dit_calls(3)
    dato = methods.build("dato", schedule=[["full", 0], ["full", 0.5], ["full", 0.5]], recover_from=recover_from)
    seen = _capture_selections(dato)
    outputs = {}
    with torch.no_grad(), dsbench.attach(model, dato, num_steps=3) as handle:
        for c in calls:
            model(**c)
            state = handle.engine.branches["main"]
            outputs[state.step - 1] = {ell: t.clone() for ell, t in state.cache.items()}
        rep = handle.report()
    assert rep["decisions"][1] == ["TOPK(32,kv=selected,fill=copy)", "FULL"] * 2
    assert len(seen) == 4  # two blocks × two pruned steps
    for i, layer, _k, x, h, sel, base in seen:
        xn = torch.nn.functional.normalize(x, dim=-1)
        sim = xn @ xn.transpose(1, 2)
        # pruned = the 32 non-base tokens with the highest max similarity to a base token
        to_base = torch.where(base[:, None, :], sim, torch.tensor(-2.0)).amax(dim=-1)
        to_base[base] = -2.0
        pruned = torch.zeros_like(base)
        pruned.scatter_(1, to_base.topk(32, dim=-1).indices, True)
        kept = ~pruned
        assert torch.equal(kept.sum(dim=1), torch.full((4,), 32)) and kept[base].all()
        assert torch.equal(torch.sort(sel.index, dim=1).values, kept.nonzero()[:, 1].view(4, 32))
        out = outputs[i][layer.index]
        block = model.transformer_blocks[layer.block]
        for b in range(4):
            # kept tokens: self-attention among the kept tokens only (queries and keys/values)
            rows = kept[b].nonzero().squeeze(1)
            direct = block.attn1(h[b : b + 1, rows])
            assert torch.allclose(out[b, rows], direct[0], atol=1e-5)
            # pruned tokens: the output of their most similar kept (or base) token
            sources = rows if recover_from == "kept" else base[b].nonzero().squeeze(1)
            for j in pruned[b].nonzero().squeeze(1).tolist():
                nearest = sources[sim[b, j, sources].argmax()]
                assert torch.equal(out[b, j], out[b, nearest])


def test_dato_base_tokens_one_per_patch_from_diffscore_and_shared_by_cfg_halves():
    model = tiny_dit(num_layers=2, sample_size=16)
    calls = _dit_calls(4)
    dato = methods.build("dato", schedule=[["full", 0]] + [["full", 0.25]] * 3)
    seen = _capture_selections(dato)
    with torch.no_grad(), dsbench.attach(model, dato, num_steps=4) as handle:
        outs = [model(**c) for c in calls]
        run = handle.engine.run
    bases = {i: base for i, _, _, _, _, _, base in seen}
    for base in bases.values():
        assert torch.equal(base[:2], base[2:])  # aligned across the CFG halves (Eq. 8)
        per_patch = base.view(4, 4, 2, 4, 2).sum(dim=(2, 4))
        assert torch.equal(per_patch, torch.ones_like(per_patch))  # one per 2×2 patch
    for i in (2, 3):  # two previous outputs exist: DiffScore = mean |ε_{i−1} − ε_{i−2}|
        eps = [noise_tokens(outs[j], run) for j in (i - 1, i - 2)]
        assert noise_tokens(outs[0], run).shape == (4, 64, 16)  # learned-variance channels dropped
        score = (eps[0] - eps[1]).abs().mean(dim=-1)
        expected = patch_argmax_mask(score[:2], (8, 8), 2)
        assert torch.equal(bases[i][:2], expected)
        # independent check of the argmax: the base token's score is its patch's max
        grid = score[:2].view(2, 4, 2, 4, 2)
        patch_max = grid.amax(dim=(2, 4))
        chosen = torch.where(expected.view(2, 4, 2, 4, 2), grid, torch.tensor(-1.0)).amax(dim=(2, 4))
        assert torch.equal(chosen, patch_max)


def test_dato_depths_and_pruned_attention_macs():
    model = tiny_dit(num_layers=4, sample_size=16)  # 64 tokens, C = 16
    calls = _dit_calls(5)
    schedule = [["full", 0], [0, 0.5], [1, 0.5], ["full", 0.5], ["full", 0]]
    with torch.no_grad(), dsbench.attach(model, methods.build("dato", schedule=schedule), num_steps=5) as handle:
        for c in calls:
            model(**c)
        rep = handle.report()
        steps = handle.engine.branches["main"].steps
    assert rep["directives"] == ["NORMAL", "REUSE_OUTPUT", "BLOCK_RESIDUAL(1,1)", "NORMAL", "NORMAL"]
    layers = rep["layers"]
    assert steps[1].macs_per_layer == {}  # d = 0: no block runs
    computed = {layers[ell] for ell in steps[2].macs_per_layer}
    assert computed == {"main0.sa", "main0.mlp", "main3.sa", "main3.mlp"}  # d = 1: first and last block
    assert {layers[ell] for ell in steps[3].macs_per_layer} == set(layers)  # full
    sa = layers.index("main0.sa")
    assert steps[4].macs_per_layer[sa] == 4 * 16 * 16 * 64  # r = 0: dense self-attention, 4C²N
    for i in (2, 3):  # pruned self-attention counts the 32 kept tokens only
        assert rep["decisions"][i][sa] == "TOPK(32,kv=selected,fill=copy)"
        assert steps[i].macs_per_layer[sa] == 4 * 16 * 16 * 32
    assert rep["decisions"][2][layers.index("main1.sa")] == "REUSE"  # skipped block: not executed
    assert rep["selection_macs"] > 0


def test_dato_schedule_search_resumes_from_its_storage(tmp_path):
    pipe = dit_pipeline()
    teacher = run_dit(pipe, steps=4)

    def evaluate(schedule):
        with dsbench.attach(pipe, methods.build("dato", schedule=schedule)) as handle:
            images = run_dit(pipe, steps=4)
            return float(((images - teacher) ** 2).mean()), handle.report()["macs_cfg_counted"]

    storage = tmp_path / "dato.sqlite"
    first = search_schedule(evaluate, 4, trials=4, population=2, storage=storage)
    params = [t.params for t in first.trials]
    resumed = search_schedule(evaluate, 4, trials=6, population=2, storage=storage)
    assert len(resumed.trials) == 6 and [t.params for t in resumed.trials[:4]] == params
    macs = sorted(t.values[1] for t in resumed.trials)
    budget = macs[2]
    best = best_schedule(resumed, budget)
    within = [t for t in resumed.trials if t.values[1] <= budget]
    assert best == min(within, key=lambda t: t.values[0]).user_attrs["schedule"]
    assert methods.build("dato", schedule=best).config.schedule[0] == ("full", 0)
    with pytest.raises(ValueError, match="budget"):
        best_schedule(resumed, macs[0] - 1)


def test_budget_fields_move_the_macs():
    pipe = dit_pipeline(num_layers=3)
    macs = {}
    for name, field, values in (("dato", "ratio", (0.0, 0.7)), ("cat", "alpha", (0.2, 0.6))):
        assert method_class(name).budget_field == field
        for v in values:
            with dsbench.attach(pipe, methods.build(name, **{field: v, **({"t0": 2} if name == "cat" else {})})) as h:
                run_dit(pipe, steps=6)
                macs[name, v] = h.report()["macs_cfg_counted"]
    assert macs["dato", 0.0] > macs["dato", 0.7]
    assert macs["cat", 0.2] < macs["cat", 0.6]


# -- bad input ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, params, field",
    [
        ("cat", {"alpha": 0.0}, "alpha"),
        ("cat", {"alpha": 1.5}, "alpha"),
        ("cat", {"t0": 1}, "t0"),
        ("cat", {"clusters": 0}, "clusters"),
        ("cat", {"ewma": 1.5}, "ewma"),
        ("cat", {"k_means": 3}, "k_means"),
        ("dato", {"ratio": 0.8}, "ratio"),
        ("dato", {"ratio": -0.1}, "ratio"),
        ("dato", {"patch": 0}, "patch"),
        ("dato", {"schedule": [[1, 0.0], ["full", 0.5]]}, "schedule"),
        ("dato", {"schedule": [["full", 0.0], [2, 0.5]]}, "schedule.1.0"),
        ("dato", {"schedule": [["full", 0.0], [1, 0.9]]}, "schedule"),
        ("dato", {"schedule": [["full", 0.0]], "ratio": 0.3}, "ratio"),
        ("dato", {"recover_from": "anything"}, "recover_from"),
    ],
)
def test_bad_parameters_name_the_field(name, params, field):
    with pytest.raises(ValueError, match=f"'{field}'"):
        methods.build(name, **params)


def test_dato_schedule_must_cover_every_step():
    model = tiny_dit()
    c = _dit_calls(1)[0]
    c["hidden_states"] = c["hidden_states"][..., :8, :8]
    with dsbench.attach(model, methods.build("dato", schedule=[["full", 0], [1, 0.5]]), num_steps=3):
        with pytest.raises(ValueError, match="'schedule' has 2 steps; this run makes 3"):
            model(**c)
