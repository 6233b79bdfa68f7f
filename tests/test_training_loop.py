"""The shared training loop (dsbench.models.embedded.loop): resume equals a straight run, checkpoints of another
config are refused, of other starting weights dropped, deadlines stop cleanly, writes are atomic."""

from __future__ import annotations

import copy

import pytest
import torch

from dsbench.models.embedded.loop import Checkpoint, CheckpointMismatch, Loop, fingerprint


def make(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 2)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 / (1 + s))
    gen = torch.Generator().manual_seed(seed)
    return model, ema, opt, sched, gen


def loop_of(path, steps, config=None, lines=None, seed=0, **kw):
    model, ema, opt, sched, gen = make(seed)
    checkpoint = Checkpoint(
        path, config or {"lr": 1e-2}, fingerprint(model), (lines if lines is not None else []).append
    )

    def step_fn(step):
        x = torch.randn(8, 4, generator=gen)
        noise = torch.randn(8, 2)  # the global RNG, restored on resume too
        return (model(x) - noise).pow(2).mean()

    loop = Loop(
        "toy",
        model,
        opt,
        steps=steps,
        scheduler=sched,
        clip_grad=1.0,
        ema=ema,
        ema_decay=0.9,
        generator=gen,
        checkpoint=checkpoint,
        checkpoint_every=1,
        log=(lines if lines is not None else []).append,
        log_every=2,
        bar=False,
        **kw,
    )
    return loop, step_fn, model, ema


def test_resume_equals_a_straight_run(tmp_path):
    straight, fn, model, ema = loop_of(tmp_path / "a.pt", 6)
    result = straight.run(fn)
    assert result.steps == 6 and not result.stopped and len(result.losses) == 6

    first, fn1, _, _ = loop_of(tmp_path / "b.pt", 3)
    first.run(fn1)
    lines: list[str] = []
    second, fn2, model2, ema2 = loop_of(tmp_path / "b.pt", 6, lines=lines)
    assert second.resume() == 3 and any("resumed" in line for line in lines)
    second.run(fn2)
    for a, b in ((model, model2), (ema, ema2)):
        assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert straight.losses[3:] == second.losses
    assert not list(tmp_path.glob("*.tmp"))  # atomic: only the final files remain
    state = torch.load(tmp_path / "b.pt", weights_only=False)
    assert state["step"] == 6 and state["config"] == {"lr": 1e-2}


def test_a_checkpoint_of_another_config_is_refused_in_one_line(tmp_path):
    loop, fn, _, _ = loop_of(tmp_path / "c.pt", 2)
    loop.run(fn)
    other, _, _, _ = loop_of(tmp_path / "c.pt", 2, config={"lr": 1.0})
    with pytest.raises(CheckpointMismatch, match="belongs to a different training configuration") as error:
        other.resume()
    assert "\n" not in str(error.value)


def test_a_checkpoint_of_other_starting_weights_starts_over(tmp_path):
    loop, fn, _, _ = loop_of(tmp_path / "d.pt", 2)
    loop.run(fn)
    lines: list[str] = []
    other, _, _, _ = loop_of(tmp_path / "d.pt", 2, lines=lines, seed=1)
    assert other.resume() == 0
    assert any("other model weights" in line and "starting over" in line for line in lines)


def test_deadline_stops_cleanly_and_checkpoints(tmp_path):
    lines: list[str] = []
    loop, fn, _, _ = loop_of(tmp_path / "e.pt", 100, lines=lines, minutes=1e-9)
    result = loop.run(fn)
    assert result.stopped and result.steps < 100
    assert any("time budget" in line for line in lines)
    assert torch.load(tmp_path / "e.pt", weights_only=False)["step"] == result.steps


def test_log_lines_and_extra_values(tmp_path):
    lines: list[str] = []
    loop, fn, _, _ = loop_of(tmp_path / "f.pt", 4, lines=lines)
    loop.run(lambda step: (fn(step), {"extra": 1.5}))
    logged = [line for line in lines if line.startswith("toy step")]
    assert len(logged) == 3 and all("extra 1.5" in line for line in logged)  # steps 0, 2 and the last


def test_a_budget_is_required():
    model, _, opt, _, _ = make()
    with pytest.raises(ValueError, match="give steps or minutes"):
        Loop("toy", model, opt)
