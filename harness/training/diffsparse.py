"""DiffSparse training: distil the uncached pipeline into a cost table (docs/methods/diffsparse.md:
#straight-through-estimator, #loss, #two-stage-training).

The student is the same diffusers pipeline with ``TrainingPolicy`` attached: every cell (i ≥ 1)
runs as MIX — all tokens computed, ranked by the DiffSparse selector from the stored statistics
exactly as at inference, and blended with the cache by the soft mask m = Σ_k G[c,k]·M_k of the
STE gates G (forward value: the DP's hard level). Gradients flow through every sampling step,
the scheduler updates and the frozen VAE decoder to the cost tables only.

    python -m dsbench.training.diffsparse --model mnist-dit --ratio 0.5 --out results/diffsparse/mnist-dit
    python -m dsbench.training.diffsparse --model mnist-dit --evaluate --out results/diffsparse/mnist-dit

Stages (Algorithm 1): 1a layer costs with ToCa's full steps T_f⁰ forced (lr 1.0), 1b step costs C_f
(lr 0.01, step-DP), warm start δ on the chosen full steps, 2 unified fine-tune (lr 0.1). ``lr_scale``
scales all three learning rates and δ together (the paper's values assume ~10³ iterations; a short
CPU run needs a smaller step so a few AdamW updates do not scramble the ToCa initialisation).
With ``val_conditions`` > 0 the exported schedule is the best one seen on held-out conditions
(LPIPS to the teacher), the ToCa-initialised DP schedule included; ``minutes`` stops cleanly.
Checkpoint and teacher cache carry a fingerprint of the model weights: new weights start over.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pydantic
import torch
import torch.nn.functional as F

import dsbench
from dsbench import methods, stats
from dsbench.adapters import adapter_for
from dsbench.core import FULL, REUSE, Decision, Layer, Method, MethodConfig, mix
from dsbench.macs import level_space_of
from dsbench.methods.diffsparse import dp
from dsbench.methods.diffsparse.cost import CostTable, StepCosts, ste_gates, toca_fresh_ratios
from dsbench.methods.diffsparse.schedule import config_hash, export_schedule, load_schedule
from dsbench.methods.diffsparse.selector import selector_spec
from dsbench.methods.diffsparse.space import LevelSpace, level_count, tokens_at
from dsbench.metrics.fidelity import lpips_model, lpips_per_image, psnr_per_image
from dsbench.models import zoo
from dsbench.models.embedded.common import Log
from dsbench.models.embedded.loop import Checkpoint, Loop
from dsbench.scores import ScoreSpec

SCHEDULE_FILE = "schedule.json"
STAGE_SHARES = {"1a": 0.4, "1b": 0.2, "2": 0.4, "single": 1.0}  # of a --minutes budget [PD]
INIT_FILE = "schedule_toca_init.json"  # the DP on the ToCa-initialised costs, same budget


class TrainConfig(MethodConfig):
    """Everything that defines a training run (its hash names the checkpoint it may resume)."""

    ratio: float = pydantic.Field(0.5, gt=0.0, lt=1.0, description="budget R: fractional M_lin reduction in (0, 1)")
    interval: float = pydantic.Field(0.25, gt=0.0, le=1.0, description="level interval 1/K (0.25: |S| = 5)")
    mode: Literal["weighted", "paper"] = pydantic.Field("weighted", description="budget weights: weighted or paper")
    loss: Literal["lpips", "l2", "ssim"] = pydantic.Field("lpips", description="distillation loss: lpips, l2, ssim")
    stages: Literal["two", "single"] = pydantic.Field("two", description="two-stage (Algorithm 1) or single")
    solver: Literal["dp", "no_dp"] = pydantic.Field("dp", description="level solver: dp or no_dp (ablation)")
    delta: float = pydantic.Field(10.0, ge=0.0, description="warm start δ >= 0 (Eq. 9)")
    lr_layer: float = pydantic.Field(1.0, gt=0.0, description="stage 1a (and single-stage) learning rate")
    lr_step: float = pydantic.Field(0.01, gt=0.0, description="stage 1b learning rate")
    lr_finetune: float = pydantic.Field(0.1, gt=0.0, description="stage 2 learning rate")
    alpha: float = pydantic.Field(1.0, gt=0.0, description="ToCa initialisation scale α > 0")
    tau: float = pydantic.Field(1.0, gt=0.0, description="STE softmax temperature τ > 0")
    conditions: int = pydantic.Field(64, ge=1, description="training conditions per epoch >= 1")
    batch: int = pydantic.Field(8, ge=1, description="conditions per iteration >= 1")
    epochs: int = pydantic.Field(1, ge=1, description="epochs per stage >= 1")
    condition_seed: int = pydantic.Field(1, description="seed of the training conditions (evaluation uses 0)")
    noise_seed: int = pydantic.Field(1, description="seed of the initial noise of the training samples")
    detach_cache: bool = pydantic.Field(False, description="cut backprop through time at the cache")
    checkpoint: bool = pydantic.Field(False, description="gradient checkpointing of every cell's layer")
    bf16: bool = pydantic.Field(False, description="bf16 autocast for the student")
    importance: Literal["attention", "similarity", "norm"] = pydantic.Field(
        "attention", description="selector importance: attention, similarity, norm"
    )
    drop: tuple[Literal["s1", "s2", "s3", "B"], ...] = pydantic.Field(
        (), description="selector score terms removed while training and at inference: any of s1, s2, s3, B"
    )
    pixart_lambda1: float | None = pydantic.Field(
        None,
        ge=0.0,
        description="PixArt selector λ1 (s1 weight) >= 0 while training and at inference; "
        "null: 0 as in the paper's A.5.1 (a nonzero base gives Table 10's −s1 row something to remove)",
    )
    lr_scale: float = pydantic.Field(1.0, gt=0.0, description="multiplies every learning rate and δ (> 0; 1 = paper)")
    val_conditions: int = pydantic.Field(0, ge=0, description="held-out validation conditions >= 0 (0: no selection)")
    val_every: int = pydantic.Field(1, ge=1, description="validate every N epochs of each stage (N >= 1)")
    val_seed: int = pydantic.Field(2, description="seed of the validation conditions and noise")

    def recorded(self) -> dict:
        """The fields as hashed and written into the schedule. An unset optional field is left out, so a
        config made before that field existed keeps its hash, its checkpoint and its schedule's identity."""
        return self.model_dump(exclude_none=True)

    @pydantic.field_validator("interval")
    @classmethod
    def _interval_divides_one(cls, value: float) -> float:
        level_count(value)  # S = {0, 1/K, ..., 1} must contain 0 and 1
        return value

    @pydantic.model_validator(mode="after")
    def _seeds_differ(self) -> TrainConfig:
        if self.val_conditions and self.val_seed in (self.condition_seed, 0):
            raise ValueError(
                f"val_seed ({self.val_seed}) must differ from condition_seed ({self.condition_seed}) "
                "and from the evaluation seed 0: validation conditions are held out"
            )
        return self


# -------------------------------------------------------------------------------------- the task


@dataclass
class Task:
    """What distillation needs to know about a model: its pipeline and how to call it.

    ``inputs(conditions, generators)`` returns the pipeline keyword arguments for a batch (without
    ``num_inference_steps`` and ``output_type``); ``conditions(n, seed)`` draws conditions.
    """

    name: str
    pipeline: Any
    steps: int
    inputs: Callable[[list, list[torch.Generator]], dict]
    conditions: Callable[[int, int], list]


def task_from_bundle(bundle) -> Task:
    """The zoo bundle's pipeline called as its ``sample`` calls it (same guidance and resolution)."""
    s = bundle.sampler
    if bundle.family == "dit":

        def inputs(conds, gens):
            return dict(
                class_labels=[int(c) for c in conds], guidance_scale=s.guidance_scale, generator=gens, **s.extra
            )
    elif bundle.family == "pixart":

        def inputs(conds, gens):
            return dict(
                prompt=[str(c) for c in conds],
                negative_prompt="",
                guidance_scale=s.guidance_scale,
                generator=gens,
                height=s.resolution,
                width=s.resolution,
                **s.extra,
            )
    else:
        raise ValueError(f"training inputs are defined for the dit and pixart families, got {bundle.family!r}")
    return Task(bundle.name, bundle.pipeline, s.steps, inputs, bundle.conditions)


def seeds_for(seed: int, count: int) -> list[int]:
    """One noise seed per condition index: an image does not depend on the batching."""
    return [int(np.random.SeedSequence([seed, j]).generate_state(1)[0]) for j in range(count)]


def images(task: Task, conditions: list, seeds: list[int], *, grad: bool) -> torch.Tensor:
    """Decoded images in [−1, 1], N×3×H×W. ``grad``: the pipeline's own loop without its no_grad wrapper."""
    call = type(task.pipeline).__call__
    if grad:
        call = call.__wrapped__  # diffusers decorates __call__ with torch.no_grad()
    kwargs = task.inputs(list(conditions), [torch.Generator().manual_seed(s) for s in seeds])
    with torch.set_grad_enabled(grad):
        out = call(task.pipeline, **kwargs, num_inference_steps=task.steps, output_type="pt").images
    return out.float() * 2 - 1


def weights_fingerprint(pipeline) -> str:
    """sha256 (16 hex) of every network weight of the pipeline (names, dtypes, shapes, bytes): the
    checkpoint and the teacher cache are only reused for the exact weights they were made with."""
    digest = hashlib.sha256()
    for name, module in sorted(pipeline.components.items()):
        if not isinstance(module, torch.nn.Module):
            continue
        for key, tensor in module.state_dict().items():
            t = tensor.detach().cpu().contiguous()
            digest.update(f"{name}.{key} {t.dtype} {tuple(t.shape)}\n".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def lpips_to_teacher(student: torch.Tensor, teacher: torch.Tensor) -> float:
    """Mean LPIPS (AlexNet, the evaluation metric) of images in [−1, 1]; images under 32 px (test
    pipelines) are upsampled (nearest) to 32 first, the smallest size AlexNet's strides accept."""
    if min(student.shape[-2:]) < 32:
        student, teacher = (F.interpolate(x, size=32, mode="nearest") for x in (student, teacher))
    with torch.no_grad():
        return float(lpips_model("alex")(student.float(), teacher.float()).mean())


@contextlib.contextmanager
def frozen(pipeline):
    """Network weights take no gradient while training (restored afterwards)."""
    modules = [m for m in pipeline.components.values() if isinstance(m, torch.nn.Module)]
    flags = [[p.requires_grad for p in m.parameters()] for m in modules]
    for m in modules:
        m.requires_grad_(False)
    try:
        yield
    finally:
        for m, fl in zip(modules, flags):
            for p, f in zip(m.parameters(), fl):
                p.requires_grad_(f)


# -------------------------------------------------------------------------------- training forward


class TrainingPolicy(Method):
    """The student's policy (unregistered): step 0 FULL, every cell MIX(n_c(hard level)) blended by the
    soft mask of its gate row; non-cell layers REUSE after step 0 (as at inference)."""

    name = "diffsparse-train"

    def __init__(self, space: LevelSpace, score: ScoreSpec, detach_cache: bool = False, checkpoint: bool = False):
        super().__init__(MethodConfig())
        self.space = space
        self.score = score
        self.mix_detach_cache = detach_cache
        self.mix_checkpoint = checkpoint
        self.cell_of = {ell: j for j, ell in enumerate(space.cell_layers)}
        self.levels: np.ndarray | None = None
        self.gates: torch.Tensor | None = None

    def set_plan(self, levels: np.ndarray, gates: torch.Tensor) -> None:
        """Hard level per cell and gate rows (cells × levels) whose forward value is one_hot(levels)."""
        if gates.shape != (self.space.n_cells, self.space.K + 1) or len(levels) != self.space.n_cells:
            raise ValueError(
                f"a plan needs {self.space.n_cells} levels and gates of shape "
                f"({self.space.n_cells}, {self.space.K + 1}), got {len(levels)} and {tuple(gates.shape)}"
            )
        self.levels, self.gates = np.asarray(levels), gates

    def _cell(self, i: int, layer: Layer) -> int:
        return (i - 1) * len(self.space.cell_layers) + self.cell_of[layer.index]

    def reset(self, run) -> None:
        super().reset(run)
        if run.num_steps != self.space.steps:
            raise ValueError(f"the policy's level space has {self.space.steps} steps, the run makes {run.num_steps}")
        if self.levels is None:
            raise RuntimeError("TrainingPolicy: call set_plan(levels, gates) before sampling")

    def decide(self, i: int, layer: Layer) -> Decision:
        if i == 0:
            return FULL
        if layer.index not in self.cell_of:
            return REUSE
        return mix(tokens_at(self.levels[self._cell(i, layer)], self.space.K, self.run.n_tokens(layer)))

    def mix_weights(self, i: int, layer: Layer, order: torch.Tensor) -> torch.Tensor:
        """m = Σ_k G[c,k]·M_k with the nested top-n_c(k) masks M_k of the ranking."""
        n = order.shape[1]
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(n, device=order.device).expand_as(order))
        counts = torch.tensor([tokens_at(k, self.space.K, n) for k in range(self.space.K + 1)], device=order.device)
        masks = (rank.unsqueeze(-1) < counts).to(self.gates.dtype)  # B×N×levels
        return (masks @ self.gates[self._cell(i, layer)]).float()


# ------------------------------------------------------------------------------------------ losses


def _ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM of images in [0, 1] (11×11 Gaussian window σ 1.5, valid windows), differentiable."""
    coords = torch.arange(11, dtype=x.dtype, device=x.device) - 5
    g = torch.exp(-(coords**2) / (2 * 1.5**2))
    g = g / g.sum()
    window = torch.outer(g, g)[None, None].expand(x.shape[1], 1, 11, 11)

    def blur(t):
        return F.conv2d(t, window, groups=x.shape[1])

    c1, c2 = 0.01**2, 0.03**2
    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1)


def distance(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Per-image distance of images in [−1, 1]: LPIPS (VGG, real offline weights), L2 or 1 − SSIM."""
    if name == "lpips":
        model = lpips_model("vgg")
        return lambda a, b: model(a, b).flatten()
    if name == "l2":
        return lambda a, b: (a - b).pow(2).flatten(1).mean(1)
    if name == "ssim":
        return lambda a, b: 1 - _ssim((a + 1) / 2, (b + 1) / 2)
    raise ValueError(f"loss must be one of lpips, l2, ssim, got {name!r}")


# --------------------------------------------------------------------------------------- the trainer


class Trainer:
    """Algorithm 1 over a task; state (tables, optimisers, position, best validated schedule, seconds
    spent) is checkpointed after every iteration. ``minutes``: wall-clock budget of the whole training
    (teacher images and validation included), summed over calls: when it runs out the run stops after
    the current iteration and exports what it has; a later call resumes an interrupted run with the time
    that was left, re-exports a run that used its budget, and trains further only with larger ``minutes``."""

    def __init__(
        self,
        task: Task,
        config: TrainConfig,
        out: Path,
        log: Callable[[str], None] = print,
        minutes: float | None = None,
    ):
        if minutes is not None and not minutes > 0:
            raise ValueError(f"minutes (wall-clock budget) must be > 0, got {minutes}")
        self.task, self.config, self.out, self.log, self.minutes = task, config, Path(out), log, minutes
        self.out.mkdir(parents=True, exist_ok=True)

        family = adapter_for(task.pipeline.transformer).family
        self.conditions = task.conditions(config.conditions, config.condition_seed)
        self.seeds = seeds_for(config.noise_seed, len(self.conditions))
        self.val_conditions = task.conditions(config.val_conditions, config.val_seed) if config.val_conditions else []
        self.val_seeds = seeds_for(config.val_seed, len(self.val_conditions))
        self.toca, run = self.toca_run()
        self.space = level_space_of(
            task.pipeline, task.steps, config.interval, config.mode, text_tokens=max(run.n_text, 1)
        )
        self.score = selector_spec(
            family, importance=config.importance, drop=config.drop, pixart_lambda1=config.pixart_lambda1
        )
        self.table = CostTable(self.space.n_cells, self.space.K + 1)
        self.weights = self.space.weights
        self.B = self.space.budget(config.ratio)
        self.window = self.space.window(self.B)
        self.fingerprint = weights_fingerprint(task.pipeline)
        self.config_hash = config_hash({"task": task.name, "steps": task.steps, **config.recorded()})
        self.hash = f"{self.config_hash}-{self.fingerprint}"

    # -- pieces ------------------------------------------------------------------------------
    def toca_run(self):
        """ToCa's schedule for this model and steps (its defaults) and the run's shape, from one cheap
        run of one condition: ToCa's decisions depend on the model and steps, not on the content."""
        with dsbench.attach(self.task.pipeline, methods.build("toca")) as handle:
            images(self.task, self.conditions[:1], self.seeds[:1], grad=False)
            run, _ = handle.engine.latest()
            return handle.report()["schedule"], run

    def toca_init(self) -> list[int]:
        """P from ToCa's schedule; returns T_f⁰ (ToCa's full steps, i > 0)."""
        ratios, full_steps = toca_fresh_ratios(self.toca, self.space)
        self.table.init_from_ratios(ratios, self.config.alpha)
        return full_steps

    def step_cells(self, steps) -> np.ndarray:
        """Boolean mask of the cells at the given steps."""
        step_of_cell = np.repeat(np.arange(1, self.space.steps), len(self.space.cell_layers))
        return np.isin(step_of_cell, list(steps))

    def solve(self, costs: np.ndarray, forced: np.ndarray | None = None) -> np.ndarray:
        """Hard levels: forced cells FULL, the rest by the DP (or the no-DP ablation) in what remains."""
        forced = np.zeros(len(costs), dtype=bool) if forced is None else forced
        levels = np.full(len(costs), self.space.K, dtype=np.int64)
        budget = self.B - int(self.weights[forced, -1].sum())
        if budget < int(self.weights[~forced, 0].sum()):
            raise ValueError(
                f"ratio {self.config.ratio} leaves no budget beyond the forced full steps; "
                "lower ratio or use stages='single'"
            )
        solver = dp.solve if self.config.solver == "dp" else dp.solve_no_dp
        levels[~forced] = solver(costs[~forced], self.weights[~forced], budget, window=self.space.window(budget))
        return levels

    def mac_ratio(self, levels) -> float:
        return self.space.macs(levels) / self.space.base_macs

    # -- the loop ----------------------------------------------------------------------------
    def load_checkpoint(self, path: Path) -> dict | None:
        """The checkpoint of this config and these weights; one of older weights is dropped (logged)."""
        return Checkpoint(path, self.config_hash, self.fingerprint, self.log).load()

    def train(self) -> Path:
        cfg = self.config
        started = time.monotonic()
        checkpoint = Checkpoint(self.out / "checkpoint.pt", self.config_hash, self.fingerprint, self.log)
        state = checkpoint.load()
        teacher = self.teacher_images(self.conditions, self.seeds)
        val_teacher = self.teacher_images(self.val_conditions, self.val_seeds) if self.val_conditions else None
        tf0 = self.toca_init()
        init_costs = self.table.costs()
        init_levels = self.solve(init_costs)
        step_costs = StepCosts(self.space.steps, tf0)
        stages = ["1a", "1b", "2"] if cfg.stages == "two" and tf0 else ["single"]
        full_steps = tf0
        position = (0, 0)  # (stage index, iteration)
        validated: list[dict] = []  # {"label", "val_lpips", "levels"} per validated schedule
        spent = float(state.get("seconds", 0.0)) if state is not None else 0.0  # by earlier calls
        if state is not None:
            self.table.load_state_dict(state["table"])
            step_costs.load_state_dict(state["step_costs"])
            full_steps, position = state["full_steps"], tuple(state["position"])
            validated = state.get("validated", [])
            self.log(
                f"resumed at stage {stages[position[0]]}, iteration {position[1]}"
                if position[0] < len(stages)
                else "resumed after the last stage: exporting"
            )
        policy = TrainingPolicy(self.space, self.score, cfg.detach_cache, cfg.checkpoint)
        loss_fn = distance(cfg.loss)
        per_epoch = -(-len(self.conditions) // cfg.batch)
        lrs = {"1a": cfg.lr_layer, "single": cfg.lr_layer, "1b": cfg.lr_step, "2": cfg.lr_finetune}

        def state_of(position_) -> dict:
            return {
                "table": self.table.state_dict(),
                "step_costs": step_costs.state_dict(),
                "full_steps": full_steps,
                "position": position_,
                "validated": validated,
                "seconds": spent + time.monotonic() - started,
            }

        def save(position_):
            checkpoint.save(state_of(position_))

        def validate(label: str) -> None:
            """LPIPS to the teacher of the schedule exported now (DP over the whole table, hard levels)."""
            levels = init_levels if label == "ToCa init" else self.solve(self.table.costs())
            known = next((v for v in validated if v["levels"] == levels.tolist()), None)
            if known is None:
                one_hot = torch.nn.functional.one_hot(torch.as_tensor(levels), self.space.K + 1).double()
                policy.set_plan(levels, one_hot)
                student = images(self.task, self.val_conditions, self.val_seeds, grad=False)
                value = lpips_to_teacher(student, val_teacher)
            else:
                value = known["val_lpips"]
            validated.append({"label": label, "val_lpips": value, "levels": levels.tolist()})
            self.log(
                f"validation {label}: LPIPS to teacher {value:.5f} on {len(self.val_conditions)} held-out "
                f"conditions, macs_ratio {self.mac_ratio(levels):.4f}"
            )

        # [PD] with a time budget each remaining stage may run until its cumulative share of it has
        # passed (1a 0.4, 1b 0.2, 2 0.4; time a stage leaves unused carries over); the last stage's
        # deadline is the budget itself, where the run stops resumably
        shares = [STAGE_SHARES[stage] for stage in stages[position[0] :]]
        left = None if self.minutes is None else 60 * self.minutes - spent
        deadlines = (
            {position[0] + j: started + left * sum(shares[: j + 1]) / sum(shares) for j in range(len(shares))}
            if left is not None
            else {}
        )

        stopped = left is not None and left <= 0 and position[0] < len(stages)
        if stopped:
            self.log(
                f"the time budget of {self.minutes} min was used by earlier calls ({spent / 60:.1f} min): "
                "exporting what they trained (give more minutes to train further)"
            )
        with frozen(self.task.pipeline), dsbench.attach(self.task.pipeline, policy):
            if cfg.val_conditions and not validated:
                validate("ToCa init")
                save(position)
            for s in range(position[0], len(stages)):
                if stopped:
                    break
                stage = stages[s]
                param = step_costs.C if stage == "1b" else self.table.P
                opt = torch.optim.AdamW([param], lr=lrs[stage] * cfg.lr_scale, betas=(0.9, 0.999), weight_decay=0.0)
                start = position[1] if s == position[0] else 0
                if start and state is not None and (state.get("opt") or state.get("optimizer")):
                    opt.load_state_dict(state.get("opt") or state["optimizer"])
                total = per_epoch * cfg.epochs
                took: dict = {}  # the plan and start time of the iteration being taken

                def step_fn(it: int, stage=stage, took=took, full_steps=full_steps) -> torch.Tensor:
                    batch = [(it % per_epoch) * cfg.batch + j for j in range(cfg.batch)]
                    batch = [j for j in batch if j < len(self.conditions)]
                    took["t0"] = time.perf_counter()
                    took["levels"], gates = self.plan(stage, step_costs, full_steps)
                    policy.set_plan(took["levels"], gates)
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
                        student = images(
                            self.task, [self.conditions[j] for j in batch], [self.seeds[j] for j in batch], grad=True
                        )
                    return loss_fn(student.float(), teacher[batch]).mean()

                def after_step(
                    it: int, loss: float, stage=stage, total=total, took=took, full_steps=full_steps
                ) -> None:
                    self.log(
                        f"stage {stage} iter {it + 1}/{total} loss {loss:.5f} "
                        f"macs_ratio {self.mac_ratio(took['levels']):.4f} full_steps {full_steps} "
                        f"{time.perf_counter() - took['t0']:.1f}s"
                    )
                    epoch = (it + 1) // per_epoch
                    if (
                        cfg.val_conditions
                        and (it + 1) % per_epoch == 0
                        and epoch % cfg.val_every == 0
                        and it + 1 < total
                        and stage != "1b"
                    ):  # 1b leaves P (the exported costs) alone
                        validate(f"stage {stage} epoch {epoch}")

                loop = Loop(
                    f"stage {stage}",
                    None,
                    opt,
                    steps=total,
                    start=start,
                    deadline=deadlines.get(s),
                    clock=time.monotonic,
                    checkpoint=checkpoint,
                    checkpoint_every=1,
                    log=self.log,
                    log_every=None,
                    after_step=after_step,
                )
                loop.extra_state = lambda s=s, loop=loop: state_of((s, loop.step))
                if loop.run(step_fn).stopped:
                    it = loop.step
                    if s == len(stages) - 1:
                        stopped = True
                        self.log(
                            f"time budget of {self.minutes} min reached at stage {stage} iteration {it}; "
                            "checkpointed: a later call with more minutes trains further"
                        )
                    else:
                        self.log(
                            f"stage {stage}: its share of the {self.minutes} min budget is used after "
                            f"{it} iterations; next stage"
                        )
                if not stopped:
                    if stage == "1b":  # T_f = step-DP(C_f), then the warm start (Eq. 9)
                        mask = dp.step_dp(step_costs.C.detach().numpy(), len(tf0))
                        full_steps = [int(i) + 1 for i in np.flatnonzero(mask)]
                        self.table.warm_start(self.step_cells(full_steps), cfg.delta * cfg.lr_scale)
                        self.log(f"T_f = {full_steps}; warm start δ = {cfg.delta * cfg.lr_scale:g}")
                    if cfg.val_conditions:
                        validate(f"end of stage {stage}")
                    save((s + 1, 0))
        export_schedule(
            self.out / INIT_FILE,
            self.space,
            init_levels,
            budget_ratio=cfg.ratio,
            config={"task": self.task.name, "init": "toca", **cfg.recorded()},
        )
        final = self.solve(self.table.costs())
        levels, chosen = final, "the final costs"
        if validated:
            best = min(validated, key=lambda v: v["val_lpips"])  # first of equals: the earliest
            levels, chosen = np.asarray(best["levels"], dtype=np.int64), f"best on validation: {best['label']}"
            (self.out / "validation.json").write_text(
                json.dumps(
                    {
                        "conditions": len(self.val_conditions),
                        "seed": cfg.val_seed,
                        "metric": "lpips_alex",
                        "chosen": best["label"],
                        "history": [{k: v[k] for k in ("label", "val_lpips")} for v in validated],
                    },
                    indent=1,
                )
            )
        self.log(
            f"exported schedule ({chosen}{'; stopped early' if stopped else ''}): "
            f"macs_ratio {self.mac_ratio(levels):.4f} (target {1 - cfg.ratio:.4f})"
        )
        return export_schedule(
            self.out / SCHEDULE_FILE,
            self.space,
            levels,
            config={"task": self.task.name, "weights": self.fingerprint, **cfg.recorded()},
            budget_ratio=cfg.ratio,
            tables={
                "P": self.table.P.detach().numpy(),
                "C": self.table.costs(),
                "C_init": init_costs,
                "C_f": step_costs.C.detach().numpy(),
                "T_f": np.asarray(full_steps, dtype=np.int64),
                "T_f0": np.asarray(tf0, dtype=np.int64),
                "levels_init": init_levels,
                "levels_final": final,
            },
        )

    def plan(self, stage: str, step_costs: StepCosts, full_steps: list[int]) -> tuple[np.ndarray, torch.Tensor]:
        """Hard levels and STE gate rows of one iteration (docs/methods/diffsparse.md#straight-through-estimator,
        #two-stage-training)."""
        C = self.table.centred()
        K = self.space.K
        if stage in ("2", "single"):
            levels = self.solve(C.detach().numpy())
            return levels, ste_gates(C, levels, self.config.tau)
        if stage == "1a":  # T_f⁰ forced FULL (constant gates), the rest by the DP
            forced = self.step_cells(full_steps)
            levels = self.solve(C.detach().numpy(), forced)
            gates = ste_gates(C, levels, self.config.tau)
            hard = torch.nn.functional.one_hot(torch.as_tensor(levels), K + 1).to(gates.dtype)
            return levels, torch.where(torch.as_tensor(forced)[:, None], hard, gates)
        # 1b: step gates over [partial, full]; levels from the frozen P on the non-full steps.
        mask = dp.step_dp(step_costs.C.detach().numpy(), len(full_steps))
        chosen = [int(i) + 1 for i in np.flatnonzero(mask)]
        forced = self.step_cells(chosen)
        costs = C.detach().numpy()
        levels = self.solve(costs, forced)
        # [PD] the partial alternative of a cell at a chosen full step: its cheapest level below K
        partial = levels.copy()
        partial[forced] = np.argmin(costs[forced, :K], axis=1)
        g = ste_gates(step_costs.C, mask.astype(np.int64), self.config.tau)  # (T−1) × [partial, full]
        g_cell = g.repeat_interleave(len(self.space.cell_layers), dim=0)
        eye = torch.eye(K + 1, dtype=g.dtype)
        gates = g_cell[:, :1] * eye[partial] + g_cell[:, 1:] * eye[K]
        return levels, gates

    def teacher_images(self, conditions: list, seeds: list[int]) -> torch.Tensor:
        """The uncached pipeline's images, cached on disk per (condition, seed) for these model weights."""
        path = self.out / "teacher.pt"
        cache = torch.load(path) if path.exists() else {}
        if cache.get("weights") != self.fingerprint:
            cache = {"weights": self.fingerprint, "images": {}}
        stored = cache["images"]
        keys = [f"{c!r}|{s}" for c, s in zip(conditions, seeds)]
        missing = [j for j, key in enumerate(keys) if key not in stored]
        for a in range(0, len(missing), self.config.batch):
            chunk = missing[a : a + self.config.batch]
            out = images(self.task, [conditions[j] for j in chunk], [seeds[j] for j in chunk], grad=False)
            stored.update({keys[j]: img for j, img in zip(chunk, out)})
        if missing:
            torch.save(cache, path)
        return torch.stack([stored[key] for key in keys])


# ---------------------------------------------------------------------------------------- evaluation


def check_schedules(pipeline, steps: int, paths: list[Path]) -> None:
    """Every schedule file must exist and be for this pipeline's (T, L): a clear error before any sampling."""
    layers = [layer.name for layer in level_space_of(pipeline, steps).layers]
    for path in paths:
        load_schedule(path).check_run(steps, layers)


def evaluate(bundle, out: Path, n: int = 32, seed: int = 0) -> str:
    """LPIPS (AlexNet) and PSNR to the teacher on ``n`` held-out conditions (the evaluation seed) of the
    learned schedule, the ToCa-initialised schedule at the same budget (the DP on the initial costs) and
    ToCa itself, each with its 95 % bootstrap interval over the images; writes ``eval.json`` and returns a
    Markdown table."""
    out = Path(out)
    paths = [out / SCHEDULE_FILE, out / INIT_FILE]
    check_schedules(bundle.pipeline, bundle.sampler.steps, paths)
    conds = bundle.conditions(n, seed)
    teacher = bundle.sample(conds, seed)
    rows = []
    with dsbench.attach(bundle.pipeline, methods.build("full")) as handle:
        bundle.sample(conds[:1], seed)
        base = handle.report()["macs_cfg_not_counted"]
    candidates = [
        ("learned (DiffSparse)", methods.build("diffsparse", schedule=str(paths[0]))),
        ("ToCa-initialised, DP at the same budget", methods.build("diffsparse", schedule=str(paths[1]))),
        ("ToCa (its default schedule)", methods.build("toca")),
    ]
    for label, method in candidates:
        with dsbench.attach(bundle.pipeline, method) as handle:
            student = bundle.sample(conds, seed)
            macs = handle.report()["macs_cfg_not_counted"]
        lpips, psnr = lpips_per_image(teacher, student).double().numpy(), psnr_per_image(teacher, student).numpy()
        rows.append(
            {
                "schedule": label,
                "macs_ratio": macs / base,
                "lpips_alex": float(lpips.mean()),
                "lpips_alex_ci": list(stats.mean_ci(lpips)),
                "psnr_db": float(psnr.mean()),
                "psnr_db_ci": list(stats.mean_ci(psnr)),
            }
        )
    (out / "eval.json").write_text(json.dumps({"n": n, "seed": seed, "rows": rows}, indent=1))
    lines = [
        "| schedule | M_lin / full | LPIPS (AlexNet) to teacher ↓ [95 % CI] | PSNR to teacher (dB) ↑ [95 % CI] |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['schedule']} | {r['macs_ratio']:.4f} | {r['lpips_alex']:.4f} [{r['lpips_alex_ci'][0]:.4f}, "
        f"{r['lpips_alex_ci'][1]:.4f}] | {r['psnr_db']:.2f} [{r['psnr_db_ci'][0]:.2f}, {r['psnr_db_ci'][1]:.2f}] |"
        for r in rows
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ CLI


def parse_config(cls: type[pydantic.BaseModel], values: dict) -> Any:
    """A validated config; errors name the command-line flag and what it allows."""
    try:
        return cls(**values)
    except pydantic.ValidationError as err:

        def one(e) -> str:
            if not e["loc"]:
                return e["msg"].removeprefix("Value error, ")
            name = e["loc"][0]
            return f"--{str(name).replace('_', '-')}: {e['msg']} ({cls.model_fields[name].description})"

        raise ValueError("; ".join(one(e) for e in err.errors())) from None


def main(argv: list[str] | None = None) -> int:
    """``python -m dsbench.training.diffsparse`` (and the ``dsbench train`` subcommand)."""
    parser = argparse.ArgumentParser(prog="dsbench train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model zoo name with a dit or pixart pipeline")
    parser.add_argument("--out", required=True, help="output folder: schedule.json/.npz, log, checkpoint")
    parser.add_argument(
        "--evaluate",
        action="store_true",
        help="evaluate the schedules in --out on --eval-n held-out conditions and write README.md",
    )
    parser.add_argument("--eval-n", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="wall-clock budget: stop cleanly (checkpointed; rerun to resume) and export the best so far",
    )
    for name, field in TrainConfig.model_fields.items():
        flag = "--" + name.replace("_", "-")
        if field.annotation is bool:
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=field.default, help=field.description
            )
        elif isinstance(field.default, tuple):
            parser.add_argument(flag, nargs="*", default=field.default, help=field.description)
        else:  # numbers arrive as numbers: the config takes no text for a number (dsbench.validation)
            kind = next((t for t in (int, float) if field.annotation in (t, t | None)), None)
            parser.add_argument(flag, type=kind, default=field.default, help=field.description)
    args = parser.parse_args(argv)
    config = parse_config(TrainConfig, {name: getattr(args, name) for name in TrainConfig.model_fields})
    if args.minutes is not None and not args.minutes > 0:
        raise ValueError(f"--minutes (wall-clock budget) must be > 0, got {args.minutes}")
    command = "python -m dsbench.training.diffsparse " + shlex.join(sys.argv[1:] if argv is None else argv)
    if args.evaluate:
        print(evaluate_to_readme(args.model, Path(args.out), n=args.eval_n, threads=args.threads, command=command))
        return 0
    train_and_evaluate(args.model, Path(args.out), config, minutes=args.minutes, threads=args.threads, command=command)
    return 0


def train_and_evaluate(
    model: str,
    out: Path,
    config: TrainConfig,
    *,
    minutes: float | None = None,
    threads: int = 1,
    evaluate_n: int = 0,
    command: str,
) -> Path:
    """Train (resuming from ``out``'s checkpoint) and export; with ``evaluate_n`` > 0 also write the
    evaluation table to ``out/README.md``. ``command`` is what reproduces this call (recorded)."""
    torch.set_num_threads(threads)
    bundle = zoo.load(model)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_command.txt").write_text(command + "\n")
    if not (out / "checkpoint.pt").exists():  # a fresh run starts a fresh log; a resumed one appends
        (out / "train_log.txt").unlink(missing_ok=True)
    log = Log(out / "train_log.txt")
    path = Trainer(task_from_bundle(bundle), config, out, log, minutes=minutes).train()
    log(f"wrote {path}")
    if evaluate_n:
        log(
            "evaluation on held-out conditions:\n"
            + evaluate_to_readme(model, out, n=evaluate_n, threads=threads, command=command, bundle=bundle)
        )
    return path


def evaluate_to_readme(model: str, out: Path, *, n: int, threads: int, command: str, bundle=None) -> str:
    """``evaluate`` and write ``out/README.md`` around its table; returns the table."""
    torch.set_num_threads(threads)
    bundle = bundle or zoo.load(model)
    table = evaluate(bundle, out, n=n)
    (out / "README.md").write_text(_readme(model, out, table, command))
    return table


def _readme(model: str, out: Path, table: str, command: str) -> str:
    config = json.loads((out / SCHEDULE_FILE).read_text())["meta"]["config"]
    train_command = (out / "train_command.txt").read_text().strip()
    return f"""# DiffSparse schedule for `{model}` at R = {config["ratio"]}

Learned with `{train_command}` (log: `train_log.txt`; schedule: `{SCHEDULE_FILE}`, cost tables in
`schedule.npz`). Below: distance to the uncached teacher (same conditions and noise) on held-out
conditions, generated by `{command}`. The ToCa-initialised row is the DP solution at the same
budget on the initial cost table P = α|k/K − ρ_ToCa| (`{INIT_FILE}`), i.e. before training.

{table}

Training config: `{json.dumps(config, sort_keys=True)}`
"""


if __name__ == "__main__":
    sys.exit(main())
