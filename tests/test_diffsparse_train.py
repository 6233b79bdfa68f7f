"""DiffSparse training: STE gates, the differentiable training forward (engine MIX), a tiny training run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import dit_pipeline, pixart_pipeline

import dsbench
from dsbench import methods
from dsbench.core import Method, MethodConfig
from dsbench.macs import level_space_of
from dsbench.methods.diffsparse.cost import CostTable, StepCosts, ste_gates, toca_fresh_ratios
from dsbench.methods.diffsparse.schedule import load_schedule
from dsbench.methods.diffsparse.selector import selector_spec
from dsbench.training.diffsparse import Task, TrainConfig, Trainer, TrainingPolicy, frozen, images, main

STEPS = 6


def tiny_task(family: str) -> Task:
    if family == "dit":
        pipe = dit_pipeline()

        def inputs(conds, gens):
            return dict(class_labels=list(conds), guidance_scale=4.0, generator=gens)

        def conditions(n, seed):
            return [int(c) for c in np.random.default_rng(seed).integers(0, 10, n)]
    else:
        pipe = pixart_pipeline()
        side = pipe.transformer.config.sample_size

        def inputs(conds, gens):  # a condition is a seed for a random caption embedding
            emb = torch.stack([torch.randn(6, 12, generator=torch.Generator().manual_seed(c)) for c in conds])
            n = len(conds)
            return dict(
                prompt_embeds=emb,
                prompt_attention_mask=torch.ones(n, 6),
                negative_prompt=None,
                negative_prompt_embeds=torch.zeros(n, 6, 12),
                negative_prompt_attention_mask=torch.ones(n, 6),
                generator=gens,
                height=side,
                width=side,
                use_resolution_binning=False,
                guidance_scale=4.5,
            )

        def conditions(n, seed):
            return [int(c) for c in np.random.default_rng(seed).integers(0, 1000, n)]

    return Task(f"tiny-{family}", pipe, STEPS, inputs, conditions)


class Inference(Method):
    """The hard schedule executed the inference way: TOPK/REUSE/FULL decisions, the same selector."""

    name = "schedule-inference"

    def __init__(self, space, levels, score):
        super().__init__(MethodConfig())
        self.grid, self.space, self.score = space.decisions(levels), space, score

    def decide(self, i, layer):
        return self.grid[i][layer.index]


def test_ste_forward_is_the_hard_choice_and_gradient_reaches_p():
    table = CostTable(5, 4)
    with torch.no_grad():
        table.P.copy_(torch.randn(5, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    hard = np.array([0, 3, 1, 2, 2])
    gates = ste_gates(table.centred(), hard)
    assert torch.equal(gates.detach(), torch.nn.functional.one_hot(torch.as_tensor(hard), 4).double())
    (gates * torch.arange(4.0, dtype=torch.float64)).sum().backward()
    assert table.P.grad is not None and table.P.grad.abs().sum() > 0
    # centring: the per-row mean carries no gradient
    assert torch.allclose(table.P.grad.sum(dim=1), torch.zeros(5, dtype=torch.float64), atol=1e-12)


def test_cost_table_toca_init_and_step_costs():
    table = CostTable(3, 5)
    table.init_from_ratios(np.array([0.0, 1.0, 0.3]))
    assert table.costs().argmin(axis=1).tolist() == [0, 4, 1]  # nearest level: 0, 1, 0.25
    table.warm_start(np.array([False, False, True]), 10.0)
    assert table.costs()[2].argmin() == 4
    C_f = StepCosts(6, [2, 4]).C.detach().numpy()
    assert (C_f[:, 1] < C_f[:, 0]).nonzero()[0].tolist() == [1, 3]  # rows of steps 2 and 4 prefer full
    with pytest.raises(ValueError, match="full_steps"):
        StepCosts(6, [0])
    with pytest.raises(ValueError, match="ratios"):
        table.init_from_ratios(np.zeros(4))


@pytest.mark.parametrize("family", ["dit", "pixart"])
def test_training_forward_equals_inference_for_a_hard_schedule(family):
    task = tiny_task(family)
    space = level_space_of(task.pipeline, STEPS, 0.25, "paper", text_tokens=6)
    levels = np.random.default_rng(1).integers(0, space.K + 1, space.n_cells)
    score = selector_spec(family)
    conds, seeds = task.conditions(2, 0), [11, 12]
    with dsbench.attach(task.pipeline, Inference(space, levels, score)) as h:
        reference = images(task, conds, seeds, grad=False)
        assert any("TOPK" in d for row in h.report()["decisions"] for d in row)  # partial cells were executed
    table = CostTable(space.n_cells, space.K + 1)
    policy = TrainingPolicy(space, score)
    policy.set_plan(levels, ste_gates(table.centred(), levels))
    with frozen(task.pipeline), dsbench.attach(task.pipeline, policy):
        student = images(task, conds, seeds, grad=True)
    assert torch.allclose(student, reference, atol=1e-5), (student - reference).abs().max()
    student.pow(2).mean().backward()  # gradients reach the cost table through the sampling steps
    assert table.P.grad is not None and torch.isfinite(table.P.grad).all() and table.P.grad.abs().sum() > 0
    assert all(p.grad is None for p in task.pipeline.transformer.parameters())  # network weights frozen


def test_toca_fresh_ratios_read_the_toca_schedule():
    task = tiny_task("dit")
    space = level_space_of(task.pipeline, STEPS, 0.25, "paper")
    with dsbench.attach(task.pipeline, methods.build("toca", ratio=0.3)) as h:
        images(task, [1], [0], grad=False)
        schedule = h.report()["schedule"]
    ratios, full = toca_fresh_ratios(schedule, space)
    counts = np.asarray(schedule.counts())[1:, space.cell_layers].reshape(-1)
    assert ratios.shape == (space.n_cells,) and np.allclose(ratios * 16, counts)  # 16 tokens per layer
    assert full == [i for i in schedule.full_steps() if i > 0]


@pytest.mark.parametrize("stages", ["two", "single"])
def test_tiny_training_run_changes_the_costs_and_exports_a_schedule(tmp_path, stages):
    task = tiny_task("dit")
    config = TrainConfig(ratio=0.2, mode="paper", loss="l2", conditions=2, batch=2, stages=stages)
    lines = []
    trainer = Trainer(task, config, tmp_path, lines.append)
    path = trainer.train()
    tables = np.load(tmp_path / "schedule.npz")
    assert not np.allclose(tables["C"], tables["C_init"])  # the optimiser moved the costs
    iterations = [line for line in lines if " iter " in line]
    assert len(iterations) == (3 if stages == "two" and len(tables["T_f0"]) else 1)
    schedule = load_schedule(path)
    assert schedule.T == STEPS and (schedule.levels[0] == schedule.K).all()
    expected = trainer.solve(tables["C"])
    assert (schedule.levels[1:, trainer.space.cell_layers].reshape(-1) == expected).all()
    with dsbench.attach(task.pipeline, methods.build("diffsparse", schedule=str(path))) as h:
        images(task, [1], [0], grad=False)  # the inference method runs the exported schedule
        assert h.report()["decisions"] == [[str(d) for d in row] for row in trainer.space.decisions(expected)]
    # resuming a finished run trains nothing more and exports the same schedule
    again = []
    Trainer(task, config, tmp_path, again.append).train()
    assert not [line for line in again if " iter " in line]
    assert load_schedule(path).levels.tolist() == schedule.levels.tolist()


def test_the_selector_of_training_is_the_selector_of_inference(tmp_path):
    """A schedule trained with another importance metric or without a score term ranks tokens the same way
    at inference unless the method's config overrides it."""
    task = tiny_task("dit")
    config = TrainConfig(
        ratio=0.2, loss="l2", conditions=1, batch=1, stages="single", importance="norm", drop=("s3", "B")
    )
    trainer = Trainer(task, config, tmp_path, lambda line: None)
    assert trainer.score.importance == "norm" and trainer.score.staleness == 0 and trainer.score.bonus == 0
    path = str(trainer.train())
    for params, importance, drop in [
        ({}, "norm", ["s3", "B"]),
        ({"importance": "similarity", "drop": ()}, "similarity", []),
    ]:
        with dsbench.attach(task.pipeline, methods.build("diffsparse", schedule=path, **params)) as h:
            images(task, [1], [0], grad=False)
            resolved = h.report()["config"]
        assert (resolved["importance"], resolved["drop"]) == (importance, drop)


def test_pixart_lambda1_reaches_the_training_selector_and_the_schedule(tmp_path):
    """Table 10's −s1 row needs a PixArt schedule trained with λ1 > 0 (A.5.1's default is 0): the trainer's
    selector uses it, the schedule records it, inference reads it back unless its config overrides it."""
    task = tiny_task("pixart")
    config = TrainConfig(ratio=0.2, loss="l2", conditions=1, batch=1, stages="single", pixart_lambda1=0.5)
    trainer = Trainer(task, config, tmp_path, lambda line: None)
    assert trainer.score.attention_received == 0.5 and trainer.score.cross_entropy == 1.0
    path = trainer.train()
    assert load_schedule(path).meta["config"]["pixart_lambda1"] == 0.5
    for params, lambda1 in [({}, 0.5), ({"pixart_lambda1": 0.0}, 0.0)]:
        with dsbench.attach(task.pipeline, methods.build("diffsparse", schedule=str(path), **params)) as h:
            images(task, [1], [0], grad=False)
            assert h.report()["config"]["lambda1"] == lambda1


def test_unset_pixart_lambda1_keeps_the_committed_schedules_config_hash():
    """A field added to TrainConfig must not change the hash of configs that do not set it: the committed
    schedules re-export (and their checkpoints resume) under the hash they were made with."""
    from pathlib import Path

    from dsbench.methods.diffsparse.schedule import config_hash

    for model in ("mnist-dit", "shapes-pixart"):
        meta = json.loads((Path(__file__).parents[1] / "results" / "diffsparse" / model / "schedule.json").read_text())[
            "meta"
        ]
        trained = meta["config"]
        config = TrainConfig(**{k: v for k, v in trained.items() if k in TrainConfig.model_fields})
        assert "pixart_lambda1" not in config.recorded()
        assert (
            config_hash({"task": trained["task"], "weights": trained["weights"], **config.recorded()})
            == meta["config_hash"]
        )


def test_bad_config_names_the_field():
    with pytest.raises(ValueError, match="loss"):
        main(["--model", "mnist-dit", "--out", "x", "--loss", "l1"])
    with pytest.raises(ValueError, match=r"--drop: .*any of s1, s2, s3, B"):
        main(["--model", "mnist-dit", "--out", "x", "--drop", "s3", "s7"])
    with pytest.raises(ValueError, match=r"--pixart-lambda1: .*greater than or equal to 0"):
        main(["--model", "shapes-pixart", "--out", "x", "--pixart-lambda1", "-1"])


def test_checkpointing_gives_the_same_gradient_and_detach_cache_cuts_it():
    task = tiny_task("dit")
    space = level_space_of(task.pipeline, STEPS, 0.25, "paper")
    levels = np.random.default_rng(2).integers(0, space.K + 1, space.n_cells)
    grads = {}
    for name, options in {"plain": {}, "checkpoint": {"checkpoint": True}, "detach": {"detach_cache": True}}.items():
        table = CostTable(space.n_cells, space.K + 1)
        policy = TrainingPolicy(space, selector_spec("dit"), **options)
        policy.set_plan(levels, ste_gates(table.centred(), levels))
        with frozen(task.pipeline), dsbench.attach(task.pipeline, policy):
            images(task, [3, 4], [5, 6], grad=True).pow(2).mean().backward()
        grads[name] = table.P.grad
    assert torch.allclose(grads["checkpoint"], grads["plain"], rtol=1e-5, atol=1e-9)
    assert grads["detach"].abs().sum() > 0 and not torch.allclose(grads["detach"], grads["plain"])


def test_validation_selection_time_budget_resume_and_new_weights(tmp_path):
    task = tiny_task("dit")
    config = TrainConfig(
        ratio=0.2,
        mode="paper",
        loss="l2",
        conditions=2,
        batch=2,
        stages="single",
        epochs=2,
        val_conditions=2,
        lr_scale=0.03,
    )
    # out of time before the first iteration: the validated ToCa-init schedule is exported, checkpointed
    lines = []
    trainer = Trainer(task, config, tmp_path, lines.append, minutes=1e-6)
    trainer.train()
    assert any("time budget" in line for line in lines) and not [line for line in lines if " iter " in line]
    validation = json.loads((tmp_path / "validation.json").read_text())
    assert [h["label"] for h in validation["history"]] == ["ToCa init"] and validation["chosen"] == "ToCa init"
    tables = np.load(tmp_path / "schedule.npz")
    cells = lambda path: load_schedule(path).levels[1:, trainer.space.cell_layers].reshape(-1)  # noqa: E731
    assert (cells(tmp_path / "schedule.json") == tables["levels_init"]).all()
    # the same budget again: it was used by the first call, so nothing trains and the schedule is re-exported
    lines.clear()
    trainer.train()
    assert any("used by earlier calls" in line for line in lines) and not [x for x in lines if " iter " in x]
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["seconds"] > 1e-6 * 60
    # resumed: two iterations at lr 1.0 × 0.03, validated after epoch 1 and at the end, the best exported
    lines.clear()
    trainer.minutes = None
    trainer.train()
    assert len([line for line in lines if " iter " in line]) == 2 and not any("resumed after" in x for x in lines)
    validation = json.loads((tmp_path / "validation.json").read_text())
    history = validation["history"]
    assert [h["label"] for h in history] == ["ToCa init", "stage single epoch 1", "end of stage single"]
    best = min(history, key=lambda h: h["val_lpips"])
    assert validation["chosen"] == best["label"]
    tables = np.load(tmp_path / "schedule.npz")
    moved = np.abs(tables["C"] - tables["C_init"]).max()
    assert 0 < moved <= 2 * 2 * 0.03 + 1e-9  # AdamW moves each entry of P by at most ~lr per step
    expected = tables["levels_init"] if best["label"] == "ToCa init" else None
    if best["label"] == "end of stage single":
        expected = tables["levels_final"]
    if expected is not None:
        assert (cells(tmp_path / "schedule.json") == expected).all()
    # other model weights: the checkpoint and the teacher cache are not reused
    with torch.no_grad():
        next(task.pipeline.transformer.parameters()).add_(1e-3)
    lines.clear()
    fresh = Trainer(task, config, tmp_path, lines.append, minutes=1e-6)
    assert fresh.fingerprint != trainer.fingerprint
    fresh.train()
    assert any("other model weights" in line for line in lines)
    assert torch.load(tmp_path / "teacher.pt")["weights"] == fresh.fingerprint


def test_bad_interval_and_val_seed_fail_before_work():
    with pytest.raises(ValueError, match="--interval: .*interval must divide 1"):
        main(["--model", "mnist-dit", "--out", "x", "--interval", "0.3"])
    with pytest.raises(ValueError, match="val_seed"):
        main(["--model", "mnist-dit", "--out", "x", "--val-conditions", "4", "--val-seed", "0"])


def test_schedule_for_another_T_fails_before_sampling(tmp_path):
    from dsbench.methods.diffsparse.schedule import export_schedule
    from dsbench.training.diffsparse import check_schedules

    pipe = dit_pipeline()
    space = level_space_of(pipe, STEPS)
    path = export_schedule(tmp_path / "s.json", space, np.full(space.n_cells, space.K))
    check_schedules(pipe, STEPS, [path])
    with pytest.raises(ValueError, match=f"trained for T={STEPS} steps .* this run has T={STEPS + 1}"):
        check_schedules(pipe, STEPS + 1, [path])
    with pytest.raises(ValueError, match="no such file"):
        check_schedules(pipe, STEPS, [tmp_path / "missing.json"])


def test_time_budget_is_shared_by_the_stages(tmp_path):
    task = tiny_task("dit")
    config = TrainConfig(ratio=0.2, mode="paper", loss="l2", conditions=2, batch=2, stages="two")
    lines = []
    trainer = Trainer(task, config, tmp_path, lines.append, minutes=1e-6)
    if not trainer.toca_init():
        pytest.skip("ToCa has no full step after step 0 on the tiny model: single stage only")
    trainer.train()
    shares = [line for line in lines if "share of the" in line]
    assert [line.split(":")[0] for line in shares] == ["stage 1a", "stage 1b"]  # ended early, moved on
    assert any("T_f = " in line for line in lines)  # 1b's end (step-DP, warm start) still ran
    assert any("reached at stage 2 iteration 0" in line for line in lines)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["position"] == (2, 0)
