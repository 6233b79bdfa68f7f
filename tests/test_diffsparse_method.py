"""DiffSparse level space, schedule files, selector and the ``diffsparse`` inference method."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import methods
from methods.diffsparse.schedule import export_schedule, load_schedule
from methods.diffsparse.selector import selector_spec
from methods.diffsparse.space import LevelSpace, level_count, tokens_at
from conftest import PIPELINES

STEPS = 4
TEXT_TOKENS = 6  # run_pixart's caption length


def random_levels(space: LevelSpace, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, space.K + 1, size=space.n_cells)


@pytest.fixture
def exported(tmp_path, family):
    make, run = PIPELINES[family]
    pipe = make()
    space = LevelSpace.from_transformer(pipe, STEPS, interval=0.25, text_tokens=TEXT_TOKENS)
    levels = random_levels(space, seed=1)
    path = export_schedule(tmp_path / "schedule.json", space, levels, config={"ratio": 0.4}, budget_ratio=0.4,
                           tables={"P": np.arange(6.0).reshape(2, 3)})
    return pipe, run, space, levels, path


def test_space_macs_equal_engine_count_when_the_schedule_runs(exported):
    pipe, run, space, levels, path = exported
    with methods.attach(pipe, methods.build("diffsparse", schedule=str(path))) as handle:
        run(pipe, steps=STEPS)
        report = handle.report()
    key = "macs_cfg_counted" if space.cfg_counted else "macs_cfg_not_counted"
    assert report[key] == pytest.approx(space.macs(levels), rel=1e-9)
    assert report["decisions"] == [[str(d) for d in row] for row in space.decisions(levels)]
    assert report["decisions"][0] == ["FULL"] * len(space.layers)
    # the uncached run is what the space calls M_base
    with methods.attach(pipe, methods.build("full")) as handle:
        run(pipe, steps=STEPS)
        assert handle.report()[key] == pytest.approx(space.base_macs, rel=1e-9)


def test_report_shows_levels_and_there_is_no_budget_field(exported):
    pipe, run, space, levels, path = exported
    m = methods.build("diffsparse", schedule=str(path))
    assert type(m).budget_field is None
    with methods.attach(pipe, m) as handle:
        run(pipe, steps=STEPS)
        config = handle.report()["config"]
    assert np.array_equal(np.rint(np.array(config["levels"]) * space.K), space.level_grid(levels))
    assert config["budget_ratio"] == 0.4 and config["K"] == 4


def test_wrong_step_count_names_T_and_L(exported):
    pipe, run, space, levels, path = exported
    with methods.attach(pipe, methods.build("diffsparse", schedule=str(path))):
        with pytest.raises(ValueError, match=rf"T={STEPS} steps and L={len(space.layers)} layers.*T={STEPS + 1}"):
            run(pipe, steps=STEPS + 1)


def test_schedule_round_trip(exported):
    _pipe, _run, space, levels, path = exported
    learned = load_schedule(path)
    assert learned.T == STEPS and learned.K == space.K
    assert np.array_equal(learned.levels, space.level_grid(levels))
    assert np.array_equal(learned.tables()["P"], np.arange(6.0).reshape(2, 3))
    assert learned.meta["kept_tokens"][1] == [tokens_at(k, space.K, n)
                                              for k, n in zip(space.level_grid(levels)[1], space.n_tokens)]


def test_schedule_transfers_to_another_resolution(tmp_path):
    from conftest import pixart_pipeline, run_pixart

    pipe = pixart_pipeline()
    space = LevelSpace.from_transformer(pipe, STEPS, text_tokens=TEXT_TOKENS)
    levels = random_levels(space, seed=2)
    path = export_schedule(tmp_path / "s.json", space, levels)
    # trained on an 8×8 latent (16 tokens); run at 16×16 (64 tokens)
    with methods.attach(pipe, methods.build("diffsparse", schedule=str(path))) as handle:
        g = torch.Generator().manual_seed(0)
        pipe(prompt_embeds=torch.randn(1, 6, 12, generator=g), prompt_attention_mask=torch.ones(1, 6),
             negative_prompt=None, negative_prompt_embeds=torch.zeros(1, 6, 12),
             negative_prompt_attention_mask=torch.ones(1, 6), num_inference_steps=STEPS, height=16, width=16,
             use_resolution_binning=False, output_type="np", generator=torch.manual_seed(0))
        decisions = handle.report()["decisions"]
    grid = space.level_grid(levels)
    for i in range(1, STEPS):
        for ell, k in enumerate(grid[i]):
            expected = "REUSE" if k == 0 else "FULL" if k == space.K else f"TOPK({tokens_at(k, space.K, 64)})"
            assert decisions[i][ell] == expected


def test_bad_inputs_fail_before_work(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        methods.build("diffsparse", schedule=str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match=r"'drop.0' = 's4'"):
        methods.build("diffsparse", schedule="x.json", drop=("s4",))
    with pytest.raises(ValueError, match="interval must divide 1"):
        level_count(0.3)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not a DiffSparse schedule"):
        load_schedule(tmp_path / "bad.json")


def test_budget_and_weights():
    from conftest import dit_pipeline

    space = LevelSpace.from_transformer(dit_pipeline(), STEPS)
    w = space.weights
    assert w.shape == (space.n_cells, space.K + 1) and w.dtype == np.int64 and (w[:, 0] == 0).all()
    assert (np.diff(w, axis=1) > 0).all()
    # the weights are the MACs in units of u up to rounding
    assert np.allclose(w * space.unit, space.cell_macs, rtol=0, atol=space.unit / 2)
    B = space.budget(0.3)
    assert abs(B * space.unit - space.budget_macs(0.3)) <= space.unit
    with pytest.raises(ValueError, match="R = 0.99 is outside"):
        space.budget(0.99)
    paper = LevelSpace.from_transformer(dit_pipeline(), STEPS, mode="paper")
    assert (paper.weights == np.arange(5)).all() and paper.budget(0.5) == round(0.5 * paper.n_cells * 4)


def test_real_model_space_on_meta_device():
    space = LevelSpace.from_model("dit-xl-2-256")
    assert space.n_cells == 2744 and space.K == 4  # METHODS §1.1.1
    assert space.base_macs / 1e12 == pytest.approx(11.44, abs=0.01)  # §0.9 calibration, CFG counted
    assert space.n_tokens[0] == 256 and [tokens_at(k, 4, 256) for k in range(5)] == [0, 64, 128, 192, 256]
    full = np.full(space.n_cells, space.K)
    assert space.macs(full) == pytest.approx(space.base_macs)


def test_selector_switches():
    dit = selector_spec("dit")
    assert (dit.attention_received, dit.cross_entropy, dit.bonus, dit.bonus_grid) == (1.0, 0.0, 0.6, 2)
    assert dit.cfg_selection == "per_half" and dit.staleness == pytest.approx(0.25 / 3)
    pix = selector_spec("pixart", drop=("s3", "B"))
    assert (pix.cross_entropy, pix.staleness, pix.bonus) == (1.0, 0.0, 0.0) and pix.cfg_selection == "shared"
    assert selector_spec("pixart", pixart_lambda1=1.0).attention_received == 1.0
    assert selector_spec("wan").importance == "vnorm"
    assert selector_spec("dit", importance="norm").importance == "norm"
    with pytest.raises(ValueError, match="drop must be a subset"):
        selector_spec("dit", drop=("s9",))
