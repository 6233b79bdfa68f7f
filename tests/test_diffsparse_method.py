"""DiffSparse level space, schedule files, selector and the ``diffsparse`` inference method."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import PIPELINES

import dsbench
from dsbench import methods
from dsbench.macs import level_space, level_space_of
from dsbench.methods.diffsparse.schedule import export_schedule, load_schedule
from dsbench.methods.diffsparse.selector import selector_spec
from dsbench.methods.diffsparse.space import LevelSpace, level_count, tokens_at

STEPS = 4
TEXT_TOKENS = 6  # run_pixart's caption length


def random_levels(space: LevelSpace, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, space.K + 1, size=space.n_cells)


@pytest.fixture
def exported(tmp_path, family):
    make, run = PIPELINES[family]
    pipe = make()
    space = level_space_of(pipe, STEPS, interval=0.25, text_tokens=TEXT_TOKENS)
    levels = random_levels(space, seed=1)
    path = export_schedule(
        tmp_path / "schedule.json",
        space,
        levels,
        config={"ratio": 0.4},
        budget_ratio=0.4,
        tables={"P": np.arange(6.0).reshape(2, 3)},
    )
    return pipe, run, space, levels, path


def test_space_macs_equal_engine_count_when_the_schedule_runs(exported):
    pipe, run, space, levels, path = exported
    with dsbench.attach(pipe, methods.build("diffsparse", schedule=str(path))) as handle:
        run(pipe, steps=STEPS)
        report = handle.report()
    key = "macs_cfg_counted" if space.cfg_counted else "macs_cfg_not_counted"
    assert report[key] == pytest.approx(space.macs(levels), rel=1e-9)
    assert report["decisions"] == [[str(d) for d in row] for row in space.decisions(levels)]
    assert report["decisions"][0] == ["FULL"] * len(space.layers)
    # the uncached run is what the space calls M_base
    with dsbench.attach(pipe, methods.build("full")) as handle:
        run(pipe, steps=STEPS)
        assert handle.report()[key] == pytest.approx(space.base_macs, rel=1e-9)


def test_report_shows_levels_and_there_is_no_budget_field(exported):
    pipe, run, space, levels, path = exported
    m = methods.build("diffsparse", schedule=str(path))
    assert type(m).budget_field is None
    with dsbench.attach(pipe, m) as handle:
        run(pipe, steps=STEPS)
        config = handle.report()["config"]
    assert np.array_equal(np.rint(np.array(config["levels"]) * space.K), space.level_grid(levels))
    assert config["budget_ratio"] == 0.4 and config["K"] == 4


def test_wrong_step_count_names_T_and_L(exported):
    pipe, run, space, levels, path = exported
    with dsbench.attach(pipe, methods.build("diffsparse", schedule=str(path))):
        with pytest.raises(ValueError, match=rf"T={STEPS} steps and L={len(space.layers)} layers.*T={STEPS + 1}"):
            run(pipe, steps=STEPS + 1)


def test_schedule_round_trip(exported):
    _pipe, _run, space, levels, path = exported
    learned = load_schedule(path)
    assert learned.T == STEPS and learned.K == space.K
    assert np.array_equal(learned.levels, space.level_grid(levels))
    assert np.array_equal(learned.tables()["P"], np.arange(6.0).reshape(2, 3))
    assert learned.meta["kept_tokens"][1] == [
        tokens_at(k, space.K, n) for k, n in zip(space.level_grid(levels)[1], space.n_tokens)
    ]


def test_schedule_transfers_to_another_resolution(tmp_path):
    from conftest import pixart_pipeline

    pipe = pixart_pipeline()
    space = level_space_of(pipe, STEPS, text_tokens=TEXT_TOKENS)
    levels = random_levels(space, seed=2)
    path = export_schedule(tmp_path / "s.json", space, levels)
    # trained on an 8×8 latent (16 tokens); run at 16×16 (64 tokens)
    with dsbench.attach(pipe, methods.build("diffsparse", schedule=str(path))) as handle:
        g = torch.Generator().manual_seed(0)
        pipe(
            prompt_embeds=torch.randn(1, 6, 12, generator=g),
            prompt_attention_mask=torch.ones(1, 6),
            negative_prompt=None,
            negative_prompt_embeds=torch.zeros(1, 6, 12),
            negative_prompt_attention_mask=torch.ones(1, 6),
            num_inference_steps=STEPS,
            height=16,
            width=16,
            use_resolution_binning=False,
            output_type="np",
            generator=torch.manual_seed(0),
        )
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
    with pytest.raises(ValueError, match=r"bad.json: field 'meta' is missing"):
        load_schedule(tmp_path / "bad.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a DiffSparse schedule JSON"):
        load_schedule(tmp_path / "bad.json")


def test_budget_and_weights():
    from conftest import dit_pipeline

    space = level_space_of(dit_pipeline(), STEPS)
    w = space.weights
    assert w.shape == (space.n_cells, space.K + 1) and w.dtype == np.int64 and (w[:, 0] == 0).all()
    assert (np.diff(w, axis=1) > 0).all()
    # the weights are the MACs in units of u up to rounding
    assert np.allclose(w * space.unit, space.cell_macs, rtol=0, atol=space.unit / 2)
    B = space.budget(0.3)
    assert abs(B * space.unit - space.budget_macs(0.3)) <= space.unit
    with pytest.raises(ValueError, match="R = 0.99 is outside"):
        space.budget(0.99)
    paper = level_space_of(dit_pipeline(), STEPS, mode="paper")
    assert (paper.weights == np.arange(5)).all() and paper.budget(0.5) == round(0.5 * paper.n_cells * 4)


def test_real_model_space_on_meta_device():
    space = level_space("dit-xl-2-256")
    assert space.n_cells == 2744 and space.K == 4  # docs/methods/diffsparse.md#cells-levels-and-budget
    assert space.base_macs / 1e12 == pytest.approx(11.44, abs=0.01)  # docs/accounting.md calibration, CFG counted
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


# -- schedule files are validated as a whole on load ----------------------------------------------------------
COMMITTED = Path(__file__).resolve().parent.parent / "results" / "diffsparse" / "mnist-dit" / "schedule.json"


def write(tmp_path, edit) -> Path:
    """A copy of the committed mnist-dit schedule with ``edit(body)`` applied."""
    body = json.loads(COMMITTED.read_text())
    edit(body)
    path = tmp_path / "schedule.json"
    path.write_text(json.dumps(body))
    return path


def fails(tmp_path, edit, *patterns: str) -> str:
    """The one-line ValueError of loading the edited schedule, which names the file and every pattern."""
    path = write(tmp_path, edit)
    with pytest.raises(ValueError) as err:
        load_schedule(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    for pattern in patterns:
        assert re.search(pattern, message), (pattern, message)
    return message


def test_every_committed_schedule_loads():
    root = COMMITTED.parent.parent
    paths = sorted(root.rglob("schedule*.json"))
    assert len(paths) >= 2
    for path in paths:
        learned = load_schedule(path)
        assert learned.levels.shape == (learned.T, len(learned.layers)) and (learned.levels[0] == learned.K).all()


def test_K_zero_is_refused_instead_of_running_as_full(tmp_path):
    # K = 0 once made every cell level 0 >= K: FULL everywhere, stored as a diffsparse row at MAC ratio 1.0
    fails(tmp_path, lambda b: b["meta"].update(K=0), r"field 'meta.K' = 0 is invalid: must be an integer >= 1")
    fails(tmp_path, lambda b: b["meta"].update(K=True), r"'meta.K' = True")
    fails(tmp_path, lambda b: b["meta"].update(K=4.5), r"'meta.K' = 4.5")


@pytest.mark.parametrize(
    "edit, patterns",
    [
        (lambda b: b["meta"].pop("K"), [r"field 'meta.K' is missing", "export_schedule"]),
        (lambda b: b.pop("T"), [r"field 'T' is missing"]),
        (lambda b: b.pop("layers"), [r"field 'layers' is missing"]),
        (lambda b: b.update(meta=[1, 2]), [r"field 'meta' = \[1, 2\] is invalid: must be an object"]),
        (lambda b: b.update(meta="x"), [r"field 'meta' = 'x' is invalid"]),
        (
            lambda b: b["meta"].update(format="dsbench.diffsparse.v0"),
            [r"'meta.format'", "allowed: 'dsbench.diffsparse.v1'"],
        ),
        (lambda b: b.update(T=0), [r"field 'T' = 0 is invalid: must be an integer >= 1"]),
        (lambda b: b.update(T="20"), [r"field 'T' = '20'"]),
        (lambda b: b["meta"].update(T=7), [r"field 'meta.T' = 7 is invalid: must equal 20"]),
        (lambda b: b["meta"].update(L=3), [r"field 'meta.L' = 3 is invalid: must equal 12"]),
        (lambda b: b["meta"].update(num_levels=4), [r"'meta.num_levels' = 4 is invalid: must equal 5"]),
        (lambda b: b.update(layers=b["layers"][:-1]), [r"field 'meta.L' = 12 is invalid: must equal 11"]),
        (
            lambda b: (b.update(layers=b["layers"][:-1]), b["meta"].pop("L")),
            [r"field 'meta.levels\[0\]' must be a list of L=11 values"],
        ),
        (lambda b: b["layers"].__setitem__(1, 3), [r"field 'layers' = .* must be a non-empty list of layer names"]),
        (
            lambda b: b["layers"].__setitem__(1, b["layers"][0]),
            [r"field 'layers\[1\]' = 'main0.sa' repeats layers\[0\]"],
        ),
        (lambda b: b["meta"]["levels"].pop(), [r"field 'meta.levels' must be a list of T=20 rows"]),
        (
            lambda b: b["meta"]["levels"][3].__setitem__(2, 1.5),
            [r"field 'meta.levels\[3\]\[2\]' = 1.5 is invalid", r"\[0, 1\] on the level grid k/K \(K = 4\)"],
        ),
        (lambda b: b["meta"]["levels"][3].__setitem__(2, 0.3), [r"'meta.levels\[3\]\[2\]' = 0.3"]),
        (lambda b: b["meta"]["levels"][3].__setitem__(2, -0.25), [r"'meta.levels\[3\]\[2\]' = -0.25"]),
        (lambda b: b["meta"]["levels"][3].__setitem__(2, None), [r"'meta.levels\[3\]\[2\]' = None"]),
        (lambda b: b["meta"]["levels"][3].__setitem__(2, True), [r"'meta.levels\[3\]\[2\]' = True"]),
        (
            lambda b: b["meta"]["levels"][0].__setitem__(5, 0.5),
            [r"'meta.levels\[0\]\[5\]' = 0.5", "step 0 must be 1.0"],
        ),
        (
            lambda b: b["meta"]["config"].update(importance="entropy"),
            [r"'meta.config.importance' = 'entropy' is invalid; allowed: attention, similarity, norm"],
        ),
        (lambda b: b["meta"]["config"].update(drop=["s4"]), [r"'meta.config.drop' = \['s4'\]", "s1, s2, s3, B"]),
        (lambda b: b["meta"].update(config=[]), [r"'meta.config' = \[\] is invalid: must be an object"]),
        (
            lambda b: b["meta"].update(family="unet"),
            [r"'meta.family' = 'unet' is invalid; allowed: dit, flux, pixart, wan"],
        ),
        (lambda b: b["meta"].update(mode="fast"), [r"'meta.mode' = 'fast'", "weighted, paper"]),
        (lambda b: b["meta"]["cell_layers"].append("main9.sa"), [r"'meta.cell_layers' names 'main9.sa'"]),
        (lambda b: b["meta"]["cell_layers"].reverse(), [r"'meta.cell_layers' must list its layers in the order"]),
        (lambda b: b["meta"]["cell_layers"].pop(), [r"'meta.cell_layers' = .* is invalid for a dit model"]),
        (lambda b: b["meta"].update(n_tokens=[0] * 12), [r"'meta.n_tokens' = \[0, 0"]),
        (lambda b: b["meta"].update(budget_ratio=1.5), [r"'meta.budget_ratio' = 1.5", r"\[0, 1\)"]),
        (lambda b: b["meta"].update(tables="../x.npz"), [r"'meta.tables' = '../x.npz'"]),
        (lambda b: b["codes"][2].__setitem__(0, "FULL"), [r"field 'codes\[2\]\[0\]' = 'FULL'"]),
        (lambda b: b.update(directives="NORMAL"), [r"field 'directives' = 'NORMAL'"]),
    ],
)
def test_bad_schedule_fields_are_named_on_load(tmp_path, edit, patterns):
    fails(tmp_path, edit, *patterns)


def test_a_non_object_file_is_refused(tmp_path):
    path = tmp_path / "schedule.json"
    path.write_text("[1, 2, 3]")
    with pytest.raises(ValueError, match=r"must be a JSON object with fields T, layers and meta.*got a JSON list"):
        load_schedule(path)


def test_flux_attention_has_no_cells_in_a_valid_file(tmp_path):
    def flux(body):
        body["meta"]["family"] = "flux"
        body["layers"] = [name.replace(".sa", ".attn") for name in body["layers"]]
        body["meta"]["cell_layers"] = [name for name in body["layers"] if not name.endswith(".attn")]
        for row in body["meta"]["levels"][1:]:
            for ell, name in enumerate(body["layers"]):
                if name.endswith(".attn"):
                    row[ell] = 0.0

    assert load_schedule(write(tmp_path, flux)).meta["family"] == "flux"

    def flux_attention_level(body):
        flux(body)
        body["meta"]["levels"][4][0] = 0.5

    fails(tmp_path, flux_attention_level, r"'meta.levels\[4\]\[0\]' = 0.5", r"layer 'main0.attn' has no cells")


def test_check_run_says_what_differs(tmp_path):
    learned = load_schedule(COMMITTED)
    learned.check_run(learned.T, list(learned.layers), "dit")
    with pytest.raises(ValueError, match=r"the steps differ \(schedule T=20, run T=10\)"):
        learned.check_run(10, learned.layers)
    with pytest.raises(ValueError, match=r"the layer counts differ \(schedule L=12, run L=11\)"):
        learned.check_run(learned.T, learned.layers[:-1])
    renamed = [*learned.layers[:2], "main1.attn", *learned.layers[3:]]
    with pytest.raises(ValueError, match=r"layer names differ \(layer 2 is 'main1.sa' in the schedule, 'main1.attn'"):
        learned.check_run(learned.T, renamed)
    with pytest.raises(ValueError, match=r"model families differ \(schedule dit, run pixart\)"):
        learned.check_run(learned.T, learned.layers, "pixart")


def test_renamed_layers_fail_when_the_method_is_set_up(tmp_path):
    """The runner sets every method up (one MAC run) before sampling: a schedule of another model fails there."""
    from conftest import dit_pipeline, run_dit

    pipe = dit_pipeline()
    space = level_space_of(pipe, STEPS)
    path = export_schedule(tmp_path / "s.json", space, random_levels(space, seed=3))
    body = json.loads(path.read_text())
    body["layers"][0] = body["meta"]["cell_layers"][0] = "main0.attn"  # consistent, but not this model's
    path.write_text(json.dumps(body))
    with dsbench.attach(pipe, methods.build("diffsparse", schedule=str(path))):
        with pytest.raises(ValueError, match=r"layer 0 is 'main0.attn' in the schedule, 'main0.sa' in this run"):
            run_dit(pipe, steps=STEPS)


def test_missing_schedule_parameter_points_to_committed_schedules_and_training():
    with pytest.raises(ValueError) as err:
        methods.build("diffsparse")
    message = str(err.value)
    assert "\n" not in message and "parameter 'schedule' is required" in message
    assert "results/diffsparse/mnist-dit/schedule.json" in message
    assert "dsbench train diffsparse FILE" in message and "experiments/train_*.yaml" in message
