"""The one resumable training loop of every trainer here (embedded models, DiffSparse, SparseDiT): checkpoint,
resume, deadline, step limit, EMA, logging and progress bar, so a trainer supplies only its step and its data.

It sits in the models layer (the lowest that trains anything) so that both the embedded models' trainers and
``dsbench.training`` can use it.

A :class:`Checkpoint` is a file stamped with the training config and a fingerprint of the starting weights:
one of another config is refused (:class:`CheckpointMismatch`, one line), one of other starting weights is
dropped (logged) and training starts over. A :class:`Loop` optimises ``optimizer`` with the loss a step
function returns::

    loop = Loop("dit", model, opt, steps=2000, scheduler=sched, ema=ema, ema_decay=0.999, clip_grad=1.0,
                generator=gen, checkpoint=Checkpoint(path, hparams, fingerprint(model)), log=log)
    loop.resume()                     # model, EMA, optimiser, scheduler, RNGs and step from the checkpoint
    result = loop.run(lambda step: loss_of_a_batch(step))
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch


class CheckpointMismatch(ValueError):
    """A checkpoint of another training configuration (one line: remove it or train elsewhere)."""


def fingerprint(*tensors_or_modules: Any) -> str:
    """A short hash of weights (modules' state dicts, tensors): a checkpoint resumes only from the same start."""
    h = hashlib.sha256()
    for item in tensors_or_modules:
        state = item.state_dict() if hasattr(item, "state_dict") else {"": item}
        for name, value in sorted(state.items()):
            if isinstance(value, torch.Tensor):
                h.update(name.encode())
                h.update(value.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def config_key(config: Any) -> str:
    """The identity of a training config: a string as is, anything JSON-able by the hash of its JSON."""
    if isinstance(config, str):
        return config
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _json(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


class Checkpoint:
    """A training state on disk, written atomically (tmp + rename), stamped ``hash`` = ``{config}-{weights}``."""

    def __init__(self, path: Path | str, config: Any, weights: str, log: Callable[[str], None] = print):
        self.path, self.config, self.weights, self.log = Path(path), config, weights, log
        self.key = config_key(config)

    def load(self) -> dict | None:
        """The stored state; None when there is none or it started from other weights (logged)."""
        if not self.path.exists():
            return None
        state = torch.load(self.path, weights_only=False)
        config_part, _, weights_part = str(state.get("hash", "")).partition("-")
        if config_part != self.key:
            raise CheckpointMismatch(
                f"{self.path} belongs to a different training configuration; remove it or use another --out"
            )
        if weights_part != self.weights:
            self.log(
                f"{self.path} was made with other model weights ({weights_part or 'unknown'}, now "
                f"{self.weights}): starting over"
            )
            return None
        return state

    def save(self, state: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        config = self.config if isinstance(self.config, str) else _json(self.config)
        torch.save({"hash": f"{self.key}-{self.weights}", "config": config, **state}, tmp)
        os.replace(tmp, self.path)


@dataclass
class LoopResult:
    steps: int  # the step count reached (resumed steps included)
    stopped: bool  # stopped by the deadline before the step limit
    seconds: float  # of this call's loop
    losses: list[float] = field(default_factory=list)  # of this call's steps


class Loop:
    """Steps ``start`` … ``steps`` − 1 (or until ``minutes`` / the absolute ``deadline`` of ``clock`` pass):
    per step ``step_fn(step)`` → loss (or (loss, {name: value}) shown in the bar and the log), then
    zero_grad, backward, gradient clipping, optimiser and scheduler steps, the EMA update with DiT's warm-up
    min(decay, (1 + step)/(10 + step)), ``after_step(step, loss)``, a log line every ``log_every`` steps (and
    at the last) and a checkpoint every ``checkpoint_every`` steps and at the end.

    ``steps=None`` runs until the deadline. ``describe(step, losses)`` replaces the default log line.
    ``extra_state()`` adds trainer state to the checkpoint (``load_extra(state)`` restores it on resume).
    """

    def __init__(
        self,
        name: str,
        model: torch.nn.Module | None,
        optimizer: torch.optim.Optimizer,
        *,
        steps: int | None = None,
        minutes: float | None = None,
        deadline: float | None = None,
        clock: Callable[[], float] = time.time,
        start: int = 0,
        scheduler: Any = None,
        clip_grad: float | None = None,
        ema: torch.nn.Module | None = None,
        ema_decay: float | None = None,
        generator: torch.Generator | None = None,
        checkpoint: Checkpoint | None = None,
        checkpoint_every: int | None = None,
        extra_state: Callable[[], dict] | None = None,
        load_extra: Callable[[dict], None] | None = None,
        log: Callable[[str], None] = print,
        log_every: int | None = 100,
        describe: Callable[[int, list[float]], str] | None = None,
        after_step: Callable[[int, float], None] | None = None,
        bar: bool = True,
    ):
        if steps is None and minutes is None and deadline is None:
            raise ValueError(f"{name}: give steps or minutes (the training budget)")
        self.name, self.model, self.optimizer = name, model, optimizer
        self.steps, self.minutes, self.deadline, self.clock = steps, minutes, deadline, clock
        self.step, self.scheduler, self.clip_grad = start, scheduler, clip_grad
        self.ema, self.ema_decay, self.generator = ema, ema_decay, generator
        self.checkpoint, self.checkpoint_every = checkpoint, checkpoint_every
        self.extra_state, self.load_extra = extra_state, load_extra
        self.log, self.log_every, self.describe, self.after_step = log, log_every, describe, after_step
        self.bar = bar
        self.started: float | None = None  # clock() when run() began
        self.losses: list[float] = []

    # -- checkpoint --------------------------------------------------------------------------
    def state(self) -> dict:
        out: dict[str, Any] = {"step": self.step, "opt": self.optimizer.state_dict()}
        if self.model is not None:
            out["model"] = self.model.state_dict()
        if self.ema is not None:
            out["ema"] = self.ema.state_dict()
        if self.scheduler is not None:
            out["sched"] = self.scheduler.state_dict()
        if self.generator is not None:
            out["gen"] = self.generator.get_state()
            out["torch_rng"] = torch.get_rng_state()
        return {**out, **(self.extra_state() if self.extra_state else {})}

    def save(self) -> None:
        if self.checkpoint is not None:
            self.checkpoint.save(self.state())

    def resume(self) -> int:
        """Restore the checkpoint's state (if any, of this config and starting weights); returns the step."""
        state = self.checkpoint.load() if self.checkpoint is not None else None
        if state is None:
            return self.step
        if self.model is not None:
            self.model.load_state_dict(state["model"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["opt"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["sched"])
        if self.generator is not None:
            self.generator.set_state(state["gen"])
            torch.set_rng_state(state["torch_rng"])
        if self.load_extra:
            self.load_extra(state)
        self.step = state["step"]
        self.log(f"{self.name}: resumed from {self.checkpoint.path} at step {self.step}")
        return self.step

    # -- the loop ----------------------------------------------------------------------------
    def elapsed(self) -> float:
        return 0.0 if self.started is None else self.clock() - self.started

    def _default_line(self, step: int, losses: list[float]) -> str:
        lr = self.optimizer.param_groups[0]["lr"]
        return (
            f"{self.name} step {step:5d}  loss(avg 50) {np.mean(losses[-50:]):.4f}  lr {lr:.2e}  {self.elapsed():.0f}s"
        )

    def run(self, step_fn: Callable[[int], Any]) -> LoopResult:
        from tqdm.auto import tqdm

        self.started = self.clock()
        deadline = self.deadline
        if self.minutes:
            deadline = (
                self.started + 60 * self.minutes
                if deadline is None
                else min(deadline, self.started + 60 * self.minutes)
            )
        bar = tqdm(
            total=self.steps, initial=self.step, desc=self.name, dynamic_ncols=True, disable=None if self.bar else True
        )  # None: off when not a terminal
        stopped = False
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        try:
            while self.steps is None or self.step < self.steps:
                if deadline is not None and self.clock() > deadline:
                    stopped = True
                    break
                step = self.step
                out = step_fn(step)
                loss, shown = out if isinstance(out, tuple) else (out, {})
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if self.clip_grad:
                    torch.nn.utils.clip_grad_norm_(params, self.clip_grad)
                self.optimizer.step()
                if self.scheduler is not None:
                    self.scheduler.step()
                if self.ema is not None:
                    decay = min(self.ema_decay, (1 + step) / (10 + step))
                    with torch.no_grad():
                        for pe, pm in zip(self.ema.parameters(), self.model.parameters()):
                            pe.lerp_(pm, 1 - decay)
                value = loss.item()
                self.losses.append(value)
                self.step = step + 1
                bar.update(1)
                bar.set_postfix(loss=f"{np.mean(self.losses[-50:]):.4f}", **{k: f"{v:.4g}" for k, v in shown.items()})
                if self.after_step:
                    self.after_step(step, value)
                last = self.steps is not None and self.step == self.steps
                if self.log_every and (step % self.log_every == 0 or last):
                    line = self.describe(step, self.losses) if self.describe else self._default_line(step, self.losses)
                    extra = "".join(f"  {k} {v:.4g}" for k, v in shown.items())
                    self.log(line + extra)
                if self.checkpoint_every and self.step % self.checkpoint_every == 0:
                    self.save()
        finally:
            bar.close()
        if stopped and self.minutes:
            self.log(f"{self.name}: stopping at step {self.step} (time budget of {self.minutes} min)")
        if self.checkpoint is not None and self.checkpoint_every:
            self.save()
        return LoopResult(self.step, stopped, round(self.elapsed(), 1), self.losses)
