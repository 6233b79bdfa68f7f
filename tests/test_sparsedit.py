"""SparseDiT (docs/methods/sparsedit.md): the model transform, r(t), the attach path, MACs and parameter checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import dit_pipeline, pixart_pipeline, run_dit, tiny_dit

import dsbench
from dsbench import methods
from dsbench.accounting import MacCounter
from dsbench.core import NotApplicable
from dsbench.methods.sparsedit import (
    PRESET_LAYOUTS,
    Layout,
    grid_side,
    load_weights,
    pieces,
    pruning_rate,
    resolve_layout,
    save_weights,
    sparsify,
)
from dsbench.methods.sparsedit.model import Block, check_transformer

C, GRID, N = 16, (4, 4), 16  # tiny_dit: 2 heads × 8, 8×8 latent, patch 2


def inputs(t=999, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(
        hidden_states=torch.randn(batch, 4, 8, 8, generator=g),
        timestep=torch.full((batch,), t),
        class_labels=torch.arange(batch),
    )


# -- reproduction with pruning disabled ---------------------------------------------------------------
@pytest.mark.parametrize(
    "num_layers, layout",
    [
        (6, {}),  # the mnist-dit preset: 1 poolingformer + 1 SDTM [1, 1, 1, 1] + 1 top block
        (9, dict(poolingformers=2, sdtms=1, sparse_blocks=2, dense_blocks=1, top_blocks=2)),
        (10, dict(poolingformers=0, sdtms=2, sparse_blocks=1, dense_blocks=1, top_blocks=2)),
    ],
)
def test_dense_equivalent_reproduces_the_dit(num_layers, layout):
    dit = tiny_dit(num_layers=num_layers)
    dense = sparsify(dit, resolve_layout(num_layers, **layout), prune=False)
    sparse = sparsify(dit, resolve_layout(num_layers, **layout))
    with torch.no_grad():
        for t in (999, 500, 10):
            ref = dit(**inputs(t)).sample
            assert torch.equal(dense(**inputs(t)).sample, ref)
            assert not torch.allclose(sparse(**inputs(t)).sample, ref, atol=1e-3)  # the real transform differs
    out = dense(**inputs(), return_dict=False)
    assert isinstance(out, tuple) and out[0].shape == (2, 8, 8, 8)


def test_dense_equivalent_attached_to_a_pipeline_gives_the_plain_images():
    pipe = dit_pipeline(num_layers=6)
    plain = run_dit(pipe)
    with dsbench.attach(pipe, methods.build("sparsedit", prune=False)) as handle:
        attached = run_dit(pipe)
        dense_macs = handle.report()["macs_cfg_counted"]
    with dsbench.attach(pipe, methods.build("full")) as handle:
        run_dit(pipe)
        assert dense_macs == handle.report()["macs_cfg_counted"]
    np.testing.assert_array_equal(attached, plain)


# -- r(t) and grid sides ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "n_tokens, r_range, sides",
    [
        (256, (0.61, 0.86), (10, 6)),  # DiT-XL 256: 10×10 → 6×6
        (256, (0.44, 0.61), (12, 10)),  # DiT-XL 256: 12×12 → 10×10
        (1024, (0.61, 0.86), (20, 12)),  # DiT-XL 512: 20×20 → 12×12
    ],
)
def test_pruning_rate_and_grid_sides_of_the_dit_xl_rows(n_tokens, r_range, sides):
    r_min, r_max = r_range
    assert pruning_rate(0, r_min, r_max) == r_min
    assert pruning_rate(249, r_min, r_max) == r_min
    assert pruning_rate(250, r_min, r_max) == pytest.approx(r_min)  # continuous at T/4
    assert pruning_rate(1000, r_min, r_max) == pytest.approx(r_max)
    assert pruning_rate(625, r_min, r_max) == pytest.approx((r_min + r_max) / 2)
    late, early = sides
    assert grid_side(pruning_rate(0, r_min, r_max), n_tokens) == late  # low noise: more tokens
    assert grid_side(pruning_rate(999, r_min, r_max), n_tokens) == early  # the first, noisiest sampler call
    spans = pieces(r_min, r_max, n_tokens)
    assert spans[0][0] == 0 and spans[-1][1] == 1000
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))  # contiguous cover of [0, T)
    assert [s for *_, s in spans] == list(range(late, early - 1, -1))  # one piece per side, fewer tokens as t grows
    for lo, hi, s in spans:
        assert {grid_side(pruning_rate(t, r_min, r_max), n_tokens) for t in range(lo, hi)} == {s}


def test_a_call_needs_one_grid_side():
    model = sparsify(tiny_dit(num_layers=6), resolve_layout(6))
    x = inputs()
    x["timestep"] = torch.tensor([999, 0])  # 1×1 and 2×2 sparse grids on 16 tokens
    with pytest.raises(ValueError, match="grid sides"):
        model(**x)


# -- layout mapping and initialisation -------------------------------------------------------------
def test_presets_cover_their_depth():
    for depth in PRESET_LAYOUTS:
        assert resolve_layout(depth).depth == depth
    assert resolve_layout(28) == Layout(2, 4, 3, 1, 2)  # DiT-XL/2
    assert resolve_layout(12) == Layout(1, 2, 2, 1, 1)  # DiT-B/2


def test_blocks_map_to_pretrained_blocks_by_depth():
    dit = tiny_dit(num_layers=9)
    model = sparsify(dit, resolve_layout(9, poolingformers=2, sdtms=1, sparse_blocks=2, dense_blocks=1, top_blocks=2))
    ours = model.blocks_in_order()
    assert len(ours) == 9
    assert [b.pooling for b in ours] == [True, True] + [False] * 7
    for new, old in zip(ours, dit.transformer_blocks):
        for name in (
            "attn1.to_v.weight",
            "attn1.to_out.0.weight",
            "ff.net.2.weight",
            "norm1.linear.weight",
            "norm1.emb.class_embedder.embedding_table.weight",
        ):
            assert torch.equal(new.get_parameter(name), old.get_parameter(name)), name
        if new.pooling:  # poolingformers keep V and W_o only
            assert new.attn1.to_q is None and new.attn1.to_k is None
        else:
            assert torch.equal(new.attn1.to_q.weight, old.attn1.to_q.weight)
            assert torch.equal(new.attn1.to_k.weight, old.attn1.to_k.weight)
    sdtm = model.sdtms[0]
    assert torch.equal(sdtm.merge_sparse.weight, torch.zeros(C, C))  # W_1 = 0
    assert torch.equal(sdtm.merge_dense.weight, torch.eye(C))  # W_2 = I
    assert not sdtm.merge_sparse.bias.any() and not sdtm.merge_dense.bias.any()
    assert not any(p.data_ptr() == q.data_ptr() for p in model.parameters() for q in dit.parameters())  # copies


def test_new_layers_follow_the_model_dtype():
    model = sparsify(tiny_dit(num_layers=6).double(), resolve_layout(6))
    assert {p.dtype for p in model.parameters()} == {torch.float64} and model.dtype == torch.float64
    assert (
        model(**{k: v.double() if v.is_floating_point() else v for k, v in inputs().items()}).sample.dtype
        == torch.float64
    )


def test_poolingformer_is_the_pretrained_block_under_uniform_attention():
    """With identical tokens attention is uniform, so mean-of-V pooling must equal the pretrained block."""
    dit = tiny_dit(num_layers=6)
    old = dit.transformer_blocks[0]
    pooled = Block(old, pooling=True)
    x = torch.randn(2, 1, C).expand(2, N, C).contiguous()
    t, y = torch.tensor([500, 500]), torch.tensor([3, 4])
    with torch.no_grad():
        ref = old(x, timestep=t, class_labels=y)
        torch.testing.assert_close(pooled(x, t, y), ref, rtol=1e-5, atol=1e-6)
        x = torch.randn(2, N, C)
        assert not torch.allclose(pooled(x, t, y), old(x, timestep=t, class_labels=y), atol=1e-4)


# -- attach / detach, weights --------------------------------------------------------------------------
def test_attach_and_detach_restore_the_pipeline():
    pipe = dit_pipeline(num_layers=6)
    state = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    before = run_dit(pipe)
    with dsbench.attach(pipe, methods.build("sparsedit")) as handle:
        sparse = run_dit(pipe)
        assert "forward" in vars(pipe.transformer)
        with pytest.raises(RuntimeError, match="already attached"):
            dsbench.attach(pipe, methods.build("full"))
        report = handle.report()
    assert "forward" not in vars(pipe.transformer) and "_dsbench_handle" not in vars(pipe.transformer)
    after = run_dit(pipe)
    np.testing.assert_array_equal(after, before)
    assert not np.allclose(sparse, before, atol=1e-3)
    assert all(torch.equal(v, state[k]) for k, v in pipe.transformer.state_dict().items())
    assert report["method"] == "sparsedit" and report["layers"] == [] and report["num_steps"] == 5
    assert report["config"]["poolingformers"] == 1 and report["config"]["sdtms"] == 1


def test_fine_tuned_weights_round_trip(tmp_path):
    dit = tiny_dit(num_layers=6)
    tuned = sparsify(dit, resolve_layout(6))
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = tmp_path / "sparsedit.safetensors"
    save_weights(tuned, path, steps=7)
    method = methods.build("sparsedit", weights=str(path))
    with torch.no_grad(), dsbench.attach(dit, method, num_steps=1):
        out = dit(**inputs()).sample
        assert torch.equal(out, tuned(**inputs()).sample)
    assert method.resolved_config()["weights_meta"]["steps"] == "7"
    other = sparsify(
        tiny_dit(num_layers=9),
        resolve_layout(9, poolingformers=2, sdtms=1, sparse_blocks=2, dense_blocks=1, top_blocks=2),
    )
    with pytest.raises(ValueError, match="layout"):
        load_weights(other, path)


# -- MACs -------------------------------------------------------------------------------------------
FIXED_PER_BLOCK = 256 * C + C * C + 6 * C * C  # timestep MLP (256→C→C) and adaLN linear C→6C, per row


def block_macs(block, x, kv=None):
    counter = MacCounter(block)
    block.counter = counter
    with torch.no_grad():
        block(x, torch.tensor([500]), torch.tensor([1]), kv=kv)
    linear, attention = counter.take()
    counter.remove()
    return sum(linear.values()), attention


def test_block_macs_match_the_flops_model():
    """Block MACs of docs/methods/sparsedit.md (fvcore counts MACs):
    dense block 12NC² + 2N²C; poolingformer 10NC², of which we run W_o once on
    the pooled token instead of on all N: 10NC² − (N − 1)C². adaLN and timestep linears are per call."""
    old = tiny_dit(num_layers=6).transformer_blocks[0]
    x = torch.randn(1, N, C)
    linear, attention = block_macs(Block(old), x)
    assert (linear - FIXED_PER_BLOCK, attention) == (12 * N * C**2, 2 * N**2 * C)
    linear, attention = block_macs(Block(old, pooling=True), x)
    assert (linear - FIXED_PER_BLOCK, attention) == (10 * N * C**2 - (N - 1) * C**2, 0)
    m = 4  # sparse generation (q: M sparse tokens, kv: N) and recovery (q: N, kv: M)
    linear, attention = block_macs(Block(old), x[:, :m], kv=x)
    assert (linear - FIXED_PER_BLOCK, attention) == (10 * m * C**2 + 2 * N * C**2, 2 * m * N * C)


def sparse_call_macs(side):
    """M_lin of one call of the 6-block preset for one batch row, from the docs/methods/sparsedit.md block formulas."""
    m = side * side
    blocks = (
        10 * N * C**2
        - (N - 1) * C**2  # poolingformer
        + 10 * m * C**2
        + 2 * N * C**2  # sparse generation
        + 12 * m * C**2  # sparse block
        + 2 * N * C**2
        + 10 * N * C**2
        + 2 * m * C**2  # W_1, W_2; recovery q/o + MLP on N, kv on M
        + 12 * N * C**2  # dense block
        + 12 * N * C**2
    )  # top block
    embed, final = N * (4 * 2 * 2) * C, (256 * C + C * C) + 2 * C * C + N * C * (2 * 2 * 8)
    return blocks + 6 * FIXED_PER_BLOCK + embed + final


def test_report_macs_are_lower_than_full_and_match_the_formula():
    pipe = dit_pipeline(num_layers=6)
    with dsbench.attach(pipe, methods.build("full")) as handle:
        run_dit(pipe)
        full = handle.report()
    with dsbench.attach(pipe, methods.build("sparsedit")) as handle:
        run_dit(pipe)
        report = handle.report()
    sides = [grid_side(pruning_rate(int(t), 0.61, 0.86), N) for t in pipe.scheduler.timesteps]
    assert len(set(sides)) > 1  # the run crosses pieces
    assert report["macs_per_step"] == [sparse_call_macs(s) for s in sides]
    assert report["macs_cfg_counted"] == 2 * sum(sparse_call_macs(s) for s in sides)
    assert report["macs_cfg_counted"] < full["macs_cfg_counted"]
    assert 0 < report["macs_attention_cfg_counted"] < full["macs_attention_cfg_counted"]


# -- bad input -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "params, field",
    [
        (dict(r_min=0.9, r_max=0.5), "r_min"),
        (dict(r_max=1.0), "r_max"),
        (dict(r_min=-0.1), "r_min"),
        (dict(weights="/nonexistent/sparsedit.safetensors"), "weights"),
        (dict(weights="model.pt"), "weights"),
        (dict(sdtms=0), "sdtms"),
        (dict(top_blocks=-1), "top_blocks"),
        (dict(ratio=0.5), "ratio"),
    ],
)
def test_bad_parameters_are_rejected_naming_the_field(params, field):
    with pytest.raises(ValueError, match=field):
        methods.build("sparsedit", **params)


def test_dense_equivalent_refuses_fine_tuned_weights(tmp_path):
    path = tmp_path / "w.safetensors"
    save_weights(sparsify(tiny_dit(num_layers=6), resolve_layout(6)), path)
    with pytest.raises(ValueError, match="prune=False"):
        methods.build("sparsedit", prune=False, weights=str(path))


def test_layout_that_does_not_fit_the_model_fails_at_attach():
    pipe = dit_pipeline(num_layers=6)
    with pytest.raises(ValueError, match="poolingformers.*top_blocks"):
        dsbench.attach(pipe, methods.build("sparsedit", top_blocks=3))
    with pytest.raises(ValueError, match="sdtms"):
        dsbench.attach(dit_pipeline(num_layers=7), methods.build("sparsedit"))  # no preset for 7 blocks
    assert "forward" not in vars(pipe.transformer)
    # another family: the method cannot apply at all, a listed skip in the runner rather than a failure
    with pytest.raises(NotApplicable, match="DiTTransformer2DModel"):
        dsbench.attach(pixart_pipeline(), methods.build("sparsedit"))


def test_unsupported_attention_is_not_applicable():
    pipe = dit_pipeline(num_layers=6)
    pipe.transformer.transformer_blocks[2].attn1.rescale_output_factor = 2.0
    with pytest.raises(NotApplicable, match=r"sparsedit: DiTTransformer2DModel.transformer_blocks\[2\]: unsupported"):
        check_transformer(pipe.transformer)


# -- fine-tuning loss ------------------------------------------------------------------------------------
def test_distillation_loss_is_zero_exactly_when_the_student_is_the_teacher():
    """The dense equivalent reproduces the teacher, so its distillation loss is 0; the pruned student's is not,
    and the ε-loss of either is not (the teacher does not predict the noise exactly)."""
    from dsbench.training.sparsedit import finetune_loss, timestep_weights

    dit = tiny_dit(num_layers=6).eval()
    x = inputs(t=700, batch=3)
    noise = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    alphas = torch.linspace(0.999, 0.01, 1000)
    weight = timestep_weights(alphas)[x["timestep"]]
    with torch.no_grad():
        teacher = dit(**x).sample
        same = sparsify(dit, resolve_layout(6), prune=False)(**x).sample
        pruned = sparsify(dit, resolve_layout(6))(**x).sample
    assert finetune_loss("distill", same, noise, teacher, weight) == 0
    distill = finetune_loss("distill", pruned, noise, teacher, weight)
    eps = finetune_loss("eps", pruned, noise, teacher, weight)
    assert distill > 0 and finetune_loss("eps", same, noise, teacher, weight) > 0
    torch.testing.assert_close(finetune_loss("both", pruned, noise, teacher, weight), eps + distill)
    # only the ε channels count (tiny_dit learns σ in channels 4-7)
    assert finetune_loss("distill", torch.cat([teacher[:, :4], teacher[:, 4:] + 1], 1), noise, teacher, weight) == 0


def test_base_timestep_weights_favour_high_noise():
    from dsbench.training.sparsedit import timestep_weights

    weights = timestep_weights(torch.linspace(0.999, 0.01, 1000))
    assert weights.mean().item() == pytest.approx(1.0)
    assert weights[-1] > weights[500] > weights[0]


@pytest.mark.parametrize("argv", [["finetune", "--loss", "kl"], ["finetune", "--loss", "distil"]])
def test_bad_loss_is_a_one_line_error(argv, capsys):
    from dsbench.training.sparsedit import finetune, main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "--loss" in errors[0] and "eps, distill, both" in errors[0].replace("'", "")
    with pytest.raises(ValueError, match=r"^loss must be one of eps, distill, both, got 'kl'$"):
        finetune(loss="kl", max_steps=1)
