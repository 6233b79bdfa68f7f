"""The executor: runs a method's per-(step, layer) decisions on a diffusers transformer.

``attach`` installs per-instance overrides (never class patches) on each block's ``forward`` and, for a
pipeline, on its scheduler's ``set_timesteps`` (which every pipeline calls once at the start of a call: that
is where a run starts and how many denoiser calls it will make), and module hooks around the transformer's
calls (so whatever wraps its ``forward``, before or after, stays in the path). The block overrides come from
the model family's adapter and route each sub-module through :meth:`Engine.layer`, which owns the token cache
(docs/concepts.md#the-token-cache): FULL / REUSE / TOPK(k) / TAYLOR(m), staleness counters, stored attention
statistics, the step directives REUSE_OUTPUT and BLOCK_RESIDUAL (§0.4), and PROBE, which computes a run-time
signal and lets the method choose NORMAL or BLOCK_RESIDUAL (adaptive caches). TOPK variants say what a partial
computation uses: keys/values of all tokens (exact-query), of the selected ones only, or stale ones with the
selected rows updated; unselected rows from the cache or copied from a computed row. ``Method.output_rows``
keeps the previous model output of the tokens a step did not select.
"""

from __future__ import annotations

import functools
import inspect
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypedDict, cast

import numpy as np
import torch
import torch.utils.checkpoint

from dsbench.accounting import FIXED, MacCounter
from dsbench.adapters import adapter_for
from dsbench.core import (
    FULL,
    NORMAL,
    REUSE,
    AttentionKeys,
    CallInfo,
    Decision,
    Directive,
    DirectiveKind,
    InstanceOverride,
    Kind,
    Layer,
    LayerInput,
    LayerResult,
    Method,
    RunInfo,
    Schedule,
    Selection,
    block_residual,
    gather_rows,
    scatter_rows,
    set_instance_attr,
)
from dsbench.scores import (
    CROSS_ENTROPY,
    LAYER_INPUT,
    SELF_ATTN,
    SELF_ATTN_RECEIVED,
    SELF_KEYS,
    SELF_VALUES,
    ScoreContext,
)


def _clock() -> float:
    """perf_counter for ``selection_seconds``; not read while torch.compile traces (each read would break the
    graph), so a compiled run reports only the eager end-of-step work there (docs/compile.md)."""
    return 0.0 if torch.compiler.is_compiling() else time.perf_counter()


def _charge_selection(state: BranchState, t0: float) -> None:
    """Add the time since ``t0`` to the selection overhead, except while tracing: the graph would read (and guard
    on) the running total, which changes at every step."""
    if not torch.compiler.is_compiling():
        state.selection_seconds += time.perf_counter() - t0


class _ProbeReuse(Exception):
    """Raised by the first layer's PROBE when the method reuses: unwinds block 0's body to run_block."""


def block_runs(directive: Directive, block: int, num_blocks: int) -> bool:
    """Whether ``block`` is computed under a step directive (docs/concepts.md#step-directives)."""
    if directive.kind is DirectiveKind.REUSE_OUTPUT:
        return block < directive.front
    if directive.kind is DirectiveKind.BLOCK_RESIDUAL:
        return not directive.front <= block < num_blocks - directive.back
    return True


@dataclass
class StepRecord:
    directive: Directive
    decisions: list[Decision]
    macs_linear: float = 0.0  # per batch row
    macs_attention: float = 0.0
    macs_per_layer: dict[int, float] = field(default_factory=dict)


@dataclass
class BranchState:
    """Token cache and bookkeeping of one stream of calls (one per CFG pass when unbatched)."""

    call: CallInfo
    step: int = 0
    cache: dict[int, torch.Tensor] = field(default_factory=dict)
    staleness: dict[int, torch.Tensor] = field(default_factory=dict)
    reference_input: dict[int, torch.Tensor] = field(default_factory=dict)
    taylor: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    taylor_step: dict[int, torch.Tensor] = field(default_factory=dict)  # step of each layer's factors, as step_index
    block_stats: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    block_inputs: dict[int, tuple] = field(default_factory=dict)  # for BLOCK_RESIDUAL
    last_output: Any = None  # output of the last block (REUSE_OUTPUT)
    last_sample: torch.Tensor | None = None  # the previous call's model output (Method.output_rows)
    residual: dict[tuple[int, int], tuple] = field(default_factory=dict)
    steps: list[StepRecord] = field(default_factory=list)
    selection_seconds: float = 0.0
    # the call in progress, set by begin_call: the block overrides read these, never the step index, so that
    # torch.compile's guards do not change with every step (docs/compile.md)
    record: StepRecord | None = None
    stats_read_later: bool = True
    taylor_differences: bool = False  # this call's FULL layers form finite differences (step >= Method.taylor_from)
    # the step as a 0-dim float64 tensor for the Taylor distances: a graph input, so that torch.compile does not
    # specialise (and recompile) on the step number as it does on a Python int (docs/compile.md)
    step_index: torch.Tensor = field(default_factory=lambda: torch.zeros((), dtype=torch.float64))

    def release(self) -> None:
        """Drop the cached tensors once the run is over: a finished run is kept for its report only."""
        for cached in (self.cache, self.staleness, self.reference_input, self.taylor, self.block_stats):
            cached.clear()
        self.block_inputs.clear()
        self.residual.clear()
        self.last_output = self.last_sample = None


@dataclass
class RunRecord:
    """A run (one pipeline call) as its report needs it: the method's config and selection MACs of that run."""

    run: RunInfo
    branches: dict[str, BranchState]
    config: dict[str, Any]
    selection_macs: float


class Engine:
    def __init__(
        self,
        transformer: torch.nn.Module,
        adapter,
        method: Method,
        *,
        cfg_batched: bool,
        num_steps: int | None,
        seed: int = 0,
    ):
        self.transformer = transformer
        self.adapter = adapter
        self.method = method
        self.cfg_batched = cfg_batched
        self.layers: list[Layer] = adapter.layers
        self.num_blocks = adapter.num_blocks
        self.planned_steps = num_steps  # denoiser calls per run, set by set_timesteps or by the user
        self.seed = seed
        self.counter = MacCounter(transformer)
        self.branch = "main"
        self.branches: dict[str, BranchState] = {}
        self.plan: dict[int, tuple[Directive, list[Decision]]] = {}
        self.shared_indices: dict[tuple[int, int], torch.Tensor | Selection] = {}  # (step, layer) → indices
        self.run: RunInfo | None = None
        self.generator: torch.Generator | None = None
        self.history: list[RunRecord] = []  # every finished run since attach, oldest first
        self._wants: dict[int, frozenset[str]] = {}
        self._state: BranchState | None = None

    # -- run boundaries -----------------------------------------------------------------
    def new_run(self, num_calls: int | None = None) -> None:
        """Drop every cache; the next call starts a run (called at each pipeline call)."""
        self._archive()
        if num_calls is not None:
            self.planned_steps = num_calls
        self.run = None

    def _archive(self) -> None:
        if self.run is not None and any(b.steps for b in self.branches.values()):
            for branch in self.branches.values():
                branch.release()
            self.history.append(self._record(self.run))
        self.branches = {}
        self.plan = {}
        self.shared_indices = {}

    def _start_run(self, call: CallInfo) -> None:
        if self.planned_steps is None:
            raise RuntimeError(
                "the number of denoiser calls per run is unknown: attach to the pipeline, or pass "
                "num_steps= to dsbench.attach() when attaching to a bare transformer"
            )
        self._archive()
        run = RunInfo(
            family=self.adapter.family,
            variant=self.adapter.variant,
            num_steps=self.planned_steps,
            layers=self.layers,
            n_image=call.n_image,
            n_text=call.n_text,
            grid=call.grid,
            batch=call.batch,
            cfg_batched=self.cfg_batched and call.batch % 2 == 0,
            blocks_per_stream=self.adapter.blocks_per_stream,
            noise_channels=self.adapter.noise_channels,
        )
        self.run = run
        self.method.reset(run)
        self.generator = torch.Generator().manual_seed(self.seed)
        needed = self.method.score.stats_needed() | self.method.extra_stats
        # the engine records layer inputs itself; attention statistics come from the adapters
        own = needed & {LAYER_INPUT}
        self._wants = {layer.index: (needed & self.adapter.provides(layer)) | own for layer in self.layers}
        for layer in self.layers:  # no TOPK replaces rows of its map: s1 reads only its column sums
            if SELF_ATTN in self._wants[layer.index] and not self.method.may_topk(layer):
                self._wants[layer.index] = self._wants[layer.index] - {SELF_ATTN} | {SELF_ATTN_RECEIVED}

    # -- per call ---------------------------------------------------------------------------
    def _live(self) -> BranchState:
        """The branch state of the call in progress (between ``begin_call`` and ``end_call``)."""
        state = self._state
        if state is None:
            raise RuntimeError("no denoiser call in progress: the engine runs inside an attached forward")
        return state

    def _current_run(self) -> RunInfo:
        """The run in progress (started by the first call of a run)."""
        run = self.run
        if run is None:
            raise RuntimeError("no run in progress: the engine runs inside an attached forward")
        return run

    @torch.compiler.disable  # bookkeeping in Python, run eagerly under torch.compile (docs/compile.md)
    def begin_call(self, call: CallInfo) -> None:
        state = self.branches.get(self.branch)
        known = state.call if state is not None else next((b.call for b in self.branches.values()), None)
        if (
            self.run is None
            or (known is not None and known.key() != call.key())
            or (state is not None and state.step >= self.run.num_steps)
        ):
            self._start_run(call)  # new run, shape change, or a bare transformer's next run
        state = self.branches.get(self.branch)
        if state is None:
            state = self.branches[self.branch] = BranchState(call=call)
        self._state = state
        i = state.step
        if i not in self.plan:
            self.plan[i] = self._plan_step(i)
        directive, decisions = self.plan[i]
        state.record = StepRecord(directive=directive, decisions=decisions)
        state.steps.append(state.record)
        state.stats_read_later = self._stats_read_later(state)
        state.taylor_differences = state.step >= self.method.taylor_from
        state.step_index = torch.tensor(float(state.step), dtype=torch.float64)
        self.counter.batch = call.batch
        self.counter.take()

    def _plan_step(self, i: int) -> tuple[Directive, list[Decision]]:
        directive = self.method.begin_step(i)
        if i == 0 and directive.kind not in (DirectiveKind.NORMAL, DirectiveKind.PROBE):
            raise RuntimeError(f"{self.method.name}: step 0 must be a NORMAL step (caches are empty), got {directive}")
        if directive.kind is DirectiveKind.PROBE and (
            (directive.front, directive.back) not in self.method.residual_spans
            or directive.front + directive.back >= self.num_blocks
        ):
            raise RuntimeError(
                f"{self.method.name}: {directive} needs (front, back) in its residual_spans and front + back "
                f"below the model's {self.num_blocks} blocks"
            )
        decisions = []
        for layer in self.layers:
            # decisions apply in the blocks a step computes; a skipped block's layers are reported as REUSE
            d = self.method.decide(i, layer) if block_runs(directive, layer.block, self.num_blocks) else REUSE
            d = self._normalise(d, layer)
            if i == 0 and d.kind is not Kind.FULL:
                raise RuntimeError(
                    f"{self.method.name}: step 0 must be FULL at every layer (caches are "
                    f"created there), got {d} at {layer.name}"
                )
            decisions.append(d)
        return directive, decisions

    def _normalise(self, d: Decision, layer: Layer) -> Decision:
        """TOPK(0) ≡ REUSE and TOPK(N) ≡ FULL (docs/guarantees.md#verification-checklist); reject impossible
        decisions."""
        if d.kind is Kind.TOPK:
            n = self._current_run().n_tokens(layer)
            if d.k <= 0:
                return REUSE
            if d.k >= n:
                return FULL
            if not layer.supports_topk:
                raise ValueError(
                    f"{self.method.name}: layer {layer.name} cannot compute a token subset "
                    f"(TOPK); use FULL, REUSE or TAYLOR there"
                )
            if SELF_ATTN_RECEIVED in self._wants[layer.index]:
                raise RuntimeError(
                    f"{self.method.name}: TOPK at {layer.name}, where its may_topk() said "
                    f"it never would (its attention maps were not kept)"
                )
            if d.kv != "all" and layer.module not in self.adapter.partial_keys:
                raise ValueError(
                    f"{self.method.name}: layer {layer.name} cannot run TOPK with kv={d.kv!r}; "
                    f"{self.adapter.family} supports it on {sorted(self.adapter.partial_keys) or 'no layer'}"
                )
        if d.kind is Kind.MIX and not 0 <= d.k <= (n := self._current_run().n_tokens(layer)):
            raise ValueError(f"{self.method.name}: MIX({d.k}) at {layer.name} needs 0 <= k <= {n} tokens")
        if d.kind is Kind.TAYLOR and self.method.taylor_order < d.m:
            raise ValueError(f"{self.method.name}: TAYLOR({d.m}) needs taylor_order >= {d.m} on the method")
        return d

    @torch.compiler.disable
    def end_call(self, output, counts: tuple[float, float, dict[int, float]] | None = None):
        """Close the call and return its output; ``counts`` (linear, attention, per layer) replaces the
        counted MACs when the call was not executed (MAC-only simulation of a call already seen with
        the same decisions)."""
        state = self._live()
        record = state.steps[-1]
        if counts is None:
            linear, attention = self.counter.take()
            counts = (sum(linear.values()), attention, {k: v for k, v in linear.items() if k != FIXED})
        record.macs_linear, record.macs_attention, record.macs_per_layer = counts
        if output is not None:
            output = self._keep_previous_output(state, output)
        t0 = time.perf_counter()
        self.method.end_step(state.step, output)
        state.selection_seconds += time.perf_counter() - t0  # end-of-step selection work is overhead
        state.step += 1
        self._state = None
        return output

    def _keep_previous_output(self, state: BranchState, output):
        """Tokens outside ``Method.output_rows`` take the previous call's model output."""
        rows = self.method.output_rows(state.step)
        if rows is not None:
            if state.last_sample is None:
                raise RuntimeError(f"{self.method.name}: output_rows at step {state.step} before any computed output")
            output = self.adapter.keep_output_rows(output, state.last_sample, rows)
        state.last_sample = self.adapter.output_sample(output)
        return output

    @property
    def current(self) -> StepRecord:
        return self._live().steps[-1]

    @property
    def directive(self) -> Directive:
        return self._live().steps[-1].directive

    @property
    def step(self) -> int:
        return self._live().step

    # -- one layer ----------------------------------------------------------------------------
    def layer(
        self,
        ell: int,
        h: torch.Tensor | LayerInput,
        compute: Callable[[torch.Tensor | None, frozenset[str]], LayerResult],
    ) -> torch.Tensor:
        """Pre-gate output F_ℓ of layer ``ell`` for input ``h`` (B×n×C) under this step's decision.

        ``compute(index, want)`` computes the layer for the token rows ``index`` (all when None)
        and the statistics named in ``want``.
        """
        if not isinstance(h, LayerInput):
            h = LayerInput.of(h)
        state = self._live()
        record = cast(StepRecord, state.record)
        directive = record.directive
        if ell == 0 and directive.kind is DirectiveKind.PROBE and directive.front == 0:
            signal = h.full()
            if self.layers[0].tokens == "joint":  # [text; image]: the image rows
                signal = signal[:, state.call.n_text :]
            if self._probe(state, signal):
                raise _ProbeReuse  # caught by run_block of block 0, which adds the cached residual
        d = record.decisions[ell]
        layer = self.layers[ell]
        normal = record.directive.kind is not DirectiveKind.BLOCK_RESIDUAL
        self.counter.bucket = ell
        try:
            if d.kind is Kind.FULL:
                want = self._wants[ell] if state.stats_read_later else frozenset()
                res = compute(None, want)
                out = res.out
                state.cache[ell] = out
                if normal or ell not in state.staleness:
                    state.staleness[ell] = torch.zeros(out.shape[:2], dtype=torch.int32, device=out.device)
                self._record_stats(state, layer, None, res)
                if LAYER_INPUT in want:
                    state.reference_input[ell] = h.full().detach().clone()
                if self.method.taylor_order:
                    self._update_taylor(state, ell, out)
                return out
            if ell not in state.cache:
                raise RuntimeError(f"{self.method.name}: {d} at {layer.name} before any FULL computation")
            if d.kind is Kind.REUSE:
                state.staleness[ell] += 1
                return state.cache[ell]
            if d.kind is Kind.TAYLOR:
                state.staleness[ell] += 1
                return self._forecast(state, ell, d.m)
            if d.kind is Kind.MIX:
                return self._mix(state, layer, h, compute, d.k)
            # TOPK
            t0 = _clock()
            ctx = self._score_context(state, layer, h)
            selected = self._select(state, layer, d.k, ctx)
            index, source = (selected.index, selected.source) if isinstance(selected, Selection) else (selected, None)
            if (d.fill == "copy") != (source is not None):
                raise RuntimeError(
                    f"{self.method.name}: TOPK fill={d.fill!r} at {layer.name} needs select() to "
                    f"return {'a Selection with sources' if source is None else 'bare indices'}"
                )
            _charge_selection(state, t0)
            keys = self._attention_keys(state, layer, d)
            if keys is None:
                res = compute(index, self._wants[ell])
            else:  # only sub-modules in adapter.partial_keys get here (_normalise): their computation takes keys=
                res = cast(Callable[..., LayerResult], compute)(index, self._wants[ell], keys=keys)
            out = scatter_rows(state.cache[ell], index, res.out)
            if source is not None:  # every row takes the output of the computed token it names
                out = gather_rows(out, source)
            state.cache[ell] = out
            stale = state.staleness[ell]
            stale += 1
            stale.scatter_(1, index, 0)
            self._record_stats(state, layer, index, res)
            if ell in state.reference_input:
                state.reference_input[ell] = scatter_rows(state.reference_input[ell], index, h.rows(index))
            return out
        finally:
            self.counter.bucket = FIXED

    def _score_context(self, state: BranchState, layer: Layer, h: LayerInput) -> ScoreContext:
        """What the method's selection reads for ``layer`` at this call (TOPK and MIX alike)."""
        ell = layer.index
        return ScoreContext(
            layer_tokens=layer.tokens,
            n_image=state.call.n_image,
            n_text=state.call.n_text,
            grid=state.call.grid,
            cfg_batched=self._current_run().cfg_batched,
            staleness=state.staleness[ell],
            layer_input_fn=h.full,
            stats=state.block_stats.get(layer.block, {}),
            reference_input=state.reference_input.get(ell),
            generator=self.generator,
            hidden_states=h.hidden,
        )

    def _stats_read_later(self, state: BranchState) -> bool:
        """Statistics recorded now are read by a TOPK of this step or a later one; none follows the
        run's last step (computing them there would only cost time)."""
        return state.step < self._current_run().num_steps - 1 or any(
            d.kind in (Kind.TOPK, Kind.MIX) for d in state.steps[-1].decisions
        )

    def _mix(self, state: BranchState, layer: Layer, h: LayerInput, compute, k: int) -> torch.Tensor:
        """MIX(k): all rows computed and blended out of place with the cache, F = w⊙f + (1−w)⊙Cache, by
        the method's per-token weights w (autograd sees the blend); Cache ← F. Staleness, statistics and
        reference inputs change only for the k top-ranked tokens, exactly as TOPK(k) would change them,
        so the ranking at later steps is the one inference sees (DiffSparse training forward)."""
        ell = layer.index
        t0 = _clock()
        ctx = self._score_context(state, layer, h)
        order = self._select(state, layer, ctx.n, ctx)
        if isinstance(order, Selection):
            raise RuntimeError(
                f"{self.method.name}: MIX at {layer.name} needs select() to return a ranking, not a Selection"
            )
        _charge_selection(state, t0)
        if self.method.mix_checkpoint:  # the input first, so the recomputation repeats exactly the layer
            h.full()
            res = torch.utils.checkpoint.checkpoint(compute, None, self._wants[ell], use_reentrant=False)
        else:
            res = compute(None, self._wants[ell])
        weight = self.method.mix_weights(state.step, layer, order).unsqueeze(-1)
        cache = state.cache[ell]
        out = (weight * res.out + (1 - weight) * cache).to(res.out.dtype)
        state.cache[ell] = out.detach() if self.method.mix_detach_cache else out
        if k == ctx.n:  # every token computed: bookkeeping of FULL
            state.staleness[ell] = torch.zeros_like(state.staleness[ell])
            self._record_stats(state, layer, None, res)
            if ell in state.reference_input:
                state.reference_input[ell] = h.full().detach().clone()
            return out
        index = order[:, :k]
        stale = state.staleness[ell]
        stale += 1
        stale.scatter_(1, index, 0)
        if k:  # k = 0 is a REUSE: statistics untouched
            rows = {
                name: gather_rows(v, index) if name == SELF_ATTN else torch.gather(v, 1, index)
                for name, v in res.stats.items()
                if name in (SELF_ATTN, CROSS_ENTROPY)
            }
            self._record_stats(state, layer, index, LayerResult(res.out, {**res.stats, **rows}))
        if ell in state.reference_input:
            state.reference_input[ell] = scatter_rows(state.reference_input[ell], index, h.rows(index))
        return out

    def _attention_keys(self, state: BranchState, layer: Layer, d: Decision) -> AttentionKeys | None:
        """Keys/values of a TOPK self-attention other than exact-query (``Decision.kv``)."""
        if d.kv == "all":
            return None
        if d.kv == "selected":
            return AttentionKeys("selected")
        stats = state.block_stats.get(layer.block, {})
        if SELF_KEYS not in stats or SELF_VALUES not in stats:
            raise RuntimeError(
                f"{self.method.name}: kv='stale' at {layer.name} needs the keys/values of an earlier "
                f"computation: put {SELF_KEYS!r} and {SELF_VALUES!r} in Method.extra_stats"
            )
        return AttentionKeys("stale", stats[SELF_KEYS], stats[SELF_VALUES])

    def _select(self, state: BranchState, layer: Layer, k: int, ctx: ScoreContext) -> torch.Tensor | Selection:
        """The method's selection; with separate CFG passes and shared selection, the first pass's
        indices serve the later passes of the same step (docs/concepts.md#classifier-free-guidance)."""
        if self._current_run().cfg_batched or self.method.score.cfg_selection != "shared":
            return self.method.select(state.step, layer, k, ctx)
        key = (state.step, layer.index)
        index = self.shared_indices.get(key)
        if index is None or (index.index if isinstance(index, Selection) else index).shape[0] != ctx.batch:
            index = self.shared_indices[key] = self.method.select(state.step, layer, k, ctx)
        return index

    def _record_stats(self, state: BranchState, layer: Layer, index, res: LayerResult) -> None:
        """FULL replaces the statistics; TOPK replaces the rows it recomputed (docs/concepts.md#the-token-cache)."""
        if not res.stats:
            return
        stats = state.block_stats.setdefault(layer.block, {})
        for name, value in res.stats.items():
            value = value.detach()
            if index is None or name not in stats or value.shape == stats[name].shape:
                stats[name] = value
            elif value.dim() == 3:  # B×q×K query rows
                stats[name] = stats[name].scatter(1, index.unsqueeze(-1).expand(-1, -1, value.shape[-1]), value)
            else:  # B×q per-query values
                stats[name] = stats[name].scatter(1, index, value.to(stats[name].dtype))

    def _update_taylor(self, state: BranchState, ell: int, out: torch.Tensor) -> None:
        """Finite differences in step-index units between FULL steps from step ``Method.taylor_from`` on
        (docs/methods/taylorseer.md); before it a FULL layer keeps its output only."""
        old = state.taylor.get(ell, []) if state.taylor_differences else []
        factors = [out.clone()]  # the cache itself may be scatter-updated in place by a later TOPK
        if old:
            dist = state.step_index - state.taylor_step[ell]
            for j in range(min(self.method.taylor_order, len(old))):
                factors.append((factors[j] - old[j]) / dist)
        state.taylor[ell] = factors
        state.taylor_step[ell] = state.step_index

    def _forecast(self, state: BranchState, ell: int, order: int) -> torch.Tensor:
        factors = state.taylor.get(ell) or [state.cache[ell]]
        delta = state.step_index - state.taylor_step.get(ell, state.step_index)
        out = factors[0]
        for j in range(1, min(order, len(factors) - 1) + 1):
            out = out + factors[j] * (delta**j / math.factorial(j))
        return out

    # -- one block: directives ------------------------------------------------------------------
    def run_block(self, b: int, body: Callable[[], Any], state_in: tuple, as_output: Callable[[tuple], Any]):
        """Run block ``b`` under the step directive.

        ``state_in`` is the tuple of tensors the block transforms ((hidden,) or (text, image)),
        ``as_output`` turns such a tuple into the block's return value and ``body`` runs the block.
        """
        state = self._live()
        record = cast(StepRecord, state.record)
        if record.directive.kind is DirectiveKind.PROBE and b == record.directive.front > 0:
            self._probe(state, state_in[-1] - state.block_inputs[0][-1])  # every adapter's state ends with the image
        directive = record.directive
        last = self.num_blocks - 1
        if directive.kind is DirectiveKind.REUSE_OUTPUT and b >= directive.front:
            if state.last_output is None:
                raise RuntimeError(f"{self.method.name}: REUSE_OUTPUT before any computed step")
            return state.last_output if b == last else as_output(state_in)
        if directive.kind is DirectiveKind.BLOCK_RESIDUAL:
            if not block_runs(directive, b, self.num_blocks):
                return self._add_residual(state, directive, b, state_in, as_output)
        elif self.method.residual_spans:  # NORMAL (or PROBE) step of a method that may skip blocks later
            state.block_inputs[b] = state_in
        try:
            out = body()
        except _ProbeReuse:  # the first layer's probe chose BLOCK_RESIDUAL(0, back): block 0 is skipped
            return self._add_residual(state, record.directive, b, state_in, as_output)
        if b == last:
            state.last_output = out
            if record.directive.kind is DirectiveKind.NORMAL and self.method.residual_spans:
                self._store_residuals(state, self.adapter.output_state(out))
        return out

    def _add_residual(self, state: BranchState, directive: Directive, b: int, state_in: tuple, as_output):
        """A block BLOCK_RESIDUAL skips: the first one adds the cached residual, the others pass their input on."""
        front, back = directive.front, directive.back
        if b != front:
            return as_output(state_in)
        residual = state.residual.get((front, back))
        if residual is None:
            raise RuntimeError(f"{self.method.name}: BLOCK_RESIDUAL({front},{back}) before any refresh")
        return as_output(tuple(x + r for x, r in zip(state_in, residual)))

    def _probe(self, state: BranchState, signal: torch.Tensor) -> bool:
        """Ask the method about a PROBE step and turn the step's record into the directive it chose:
        BLOCK_RESIDUAL(front, back) (the skipped blocks' layers become REUSE) or NORMAL."""
        record = state.steps[-1]
        front, back = record.directive.front, record.directive.back
        if signal.device.type == "meta":
            raise ValueError(
                f"{self.method.name} decides from values computed at run time; counting on shapes alone "
                "(meta device, dsbench macs) cannot run it: measure its MACs with a real run (dsbench run)"
            )
        reuse = bool(self.method.reuse_after_probe(state.step, signal.detach(), self.branch))
        if not reuse:
            record.directive = NORMAL
            return False
        if (front, back) not in state.residual:
            raise RuntimeError(
                f"{self.method.name}: reuse at step {state.step} before a computed step stored the residual"
            )
        record.directive = block_residual(front, back)
        record.decisions = [
            d if block_runs(record.directive, layer.block, self.num_blocks) else REUSE
            for layer, d in zip(self.layers, record.decisions)
        ]
        return True

    def _store_residuals(self, state: BranchState, final: tuple) -> None:
        """R = h_{L−Bn} − h_{Fn} for every (Fn, Bn) span the method may use (docs/methods/deepcache.md)."""
        for front, back in self.method.residual_spans:
            end = final if back == 0 else state.block_inputs[self.num_blocks - back]
            start = state.block_inputs[front]
            state.residual[(front, back)] = tuple(e - s for e, s in zip(end, start))
        state.block_inputs.clear()

    # -- reporting ----------------------------------------------------------------------------
    def _record(self, run: RunInfo) -> RunRecord:
        return RunRecord(run, self.branches, self.method.resolved_config(), self.method.selection_macs)

    def runs(self) -> list[RunRecord]:
        """Every run since attach, the one in progress last if it made a call."""
        if self.run is not None and any(b.steps for b in self.branches.values()):
            return [*self.history, self._record(self.run)]
        return list(self.history)

    def latest(self) -> tuple[RunInfo, dict[str, BranchState]]:
        """The run in progress if it made a call, else the last finished one."""
        runs = self.runs()
        if not runs:
            raise RuntimeError("no run yet: call the pipeline (or transformer) while attached first")
        return runs[-1].run, runs[-1].branches


class Handle:
    """What ``dsbench.attach`` returns: a context manager that detaches on exit."""

    def __init__(self, engine: Engine, undo: list[Callable[[], None]]):
        self.engine = engine
        self._undo = undo
        self._uninstall: Callable[[], None] | None = None  # the method's own library (Method.install), removed first
        self.attached = True

    def __enter__(self) -> Handle:
        return self

    def __exit__(self, *exc) -> None:
        self.detach()

    def detach(self) -> None:
        """Restore every overridden attribute; the pipeline is then exactly as before (the same objects in
        each instance's ``__dict__``, or their absence). Refused, changing nothing, while another library
        still wraps one of them (it was attached after dsbench): restoring would silently drop its wrapper."""
        if not self.attached:
            return
        if self._uninstall is not None:
            self._uninstall()
            self._uninstall = None
        covered = [u for u in self._undo if isinstance(u, InstanceOverride) and not u.intact()]
        if covered:
            o = covered[0]
            raise RuntimeError(
                f"cannot detach: {type(o.obj).__name__}.{o.name} was overridden again after dsbench attached "
                "(by another library?); remove that override first, then detach"
            )
        for undo in reversed(self._undo):
            undo()
        self.engine.counter.remove()
        self.attached = False

    def new_run(self, num_steps: int | None = None) -> None:
        """Drop all caches now (e.g. between batches driven by your own sampling loop)."""
        self.engine.new_run(num_steps)

    def report(self) -> AttachReport:
        """MACs and overhead over every pipeline call since attach, the per-(step, layer) decisions of the
        most recent one and each call's own report under ``per_call`` (keys: ``AttachReport``)."""
        runs = self.engine.runs()
        if not runs:
            raise RuntimeError("no run yet: call the pipeline (or transformer) while attached first")
        return aggregate_reports([build_report(self.engine.method.name, record) for record in runs])


class AttachReport(TypedDict):
    """What ``Handle.report()`` returns: a plain dict at run time, with these keys (stable; new keys may be
    added, none removed or renamed without a changelog entry). MACs are per generated image over the whole
    run (docs/accounting.md); "CFG counted" charges both classifier-free-guidance passes, "not counted" one.
    After several pipeline calls (runs), the MAC keys average the calls weighted by their images and
    ``selection_seconds`` sums them; the per-step keys (``num_steps`` to ``schedule``) describe the most
    recent call, and ``per_call`` holds every call's own report (oldest first)."""

    method: str  # the method's registered name ("toca", "fora", ...)
    config: dict[str, Any]  # its parameters in effect for the run (per-model defaults filled in)
    family: str  # the model family: "dit", "pixart", "flux", "wan"
    num_steps: int  # denoiser calls the run made (one branch's, with separate CFG passes)
    cfg_batched: bool  # whether each call carried [cond, uncond] halves in one batch
    branches: list[str]  # the streams of calls: ["main"], or one per cache_context name (separate CFG passes)
    macs_cfg_counted: float  # Linear/Conv MACs, both CFG passes charged
    macs_cfg_not_counted: float  # Linear/Conv MACs of one pass
    macs_attention_cfg_counted: float  # attention-product MACs (QKᵀ and AV), both CFG passes charged
    macs_attention_cfg_not_counted: float  # attention-product MACs of one pass
    macs_per_step: list[float]  # Linear/Conv MACs of each call, one batch row, first branch
    full_steps: list[int]  # steps whose every layer was FULL under a NORMAL directive
    directives: list[str]  # per step: "NORMAL", "REUSE_OUTPUT" or "BLOCK_RESIDUAL(front,back)"
    reused_steps: list[int]  # steps that reused cached block outputs (REUSE_OUTPUT / BLOCK_RESIDUAL): for
    # adaptive methods (PROBE steps) the steps they decided at run time to reuse; first branch
    decisions: list[list[str]]  # [step][layer]: "FULL", "REUSE", "TOPK(k...)", "TAYLOR(m)", "MIX(k)"
    layers: list[str]  # layer names in execution order ("main0.sa", "double3.attn", ...)
    selection_seconds: float  # wall time spent in the method's token selection and end-of-step work
    selection_macs: float  # the method's selection overhead in MACs, per generated image
    schedule: Schedule  # the whole run's directives and decisions (``Schedule.digest``, ``to_dict``)
    images: int  # images generated (over all calls)
    calls: int  # pipeline calls (runs) since attach
    per_call: list[AttachReport]  # each call's own report, oldest first (these keys but ``per_call``)


# the keys that average over calls, weighted by each call's images (per generated image, docs/accounting.md)
AVERAGED = (
    "macs_cfg_counted",
    "macs_cfg_not_counted",
    "macs_attention_cfg_counted",
    "macs_attention_cfg_not_counted",
    "selection_macs",
)


def aggregate_reports(per_call: list[AttachReport]) -> AttachReport:
    """One report over several calls: MACs averaged weighted by images, selection time summed, the rest of
    the most recent call (``AttachReport``)."""
    last = per_call[-1]
    if len(per_call) == 1:
        return cast(AttachReport, {**last, "per_call": [last]})
    images = sum(r["images"] for r in per_call)
    out = cast(dict[str, Any], {**last})
    for key in AVERAGED:
        out[key] = sum(r[key] * r["images"] for r in per_call) / images  # type: ignore[literal-required]
    out |= {
        "selection_seconds": sum(r["selection_seconds"] for r in per_call),
        "images": images,
        "calls": len(per_call),
        "per_call": per_call,
    }
    return cast(AttachReport, out)


def build_report(method: str, record: RunRecord) -> AttachReport:
    """One run, per generated image (docs/accounting.md), in both CFG conventions (``AttachReport``)."""
    run, branches = record.run, record.branches
    first = next(iter(branches))
    steps = branches[first].steps
    linear = {name: sum(s.macs_linear for s in b.steps) for name, b in branches.items()}
    attention = {name: sum(s.macs_attention for s in b.steps) for name, b in branches.items()}
    if run.cfg_batched:  # one call carries both halves: an image costs two rows
        counted, attn_counted = 2 * linear[first], 2 * attention[first]
    else:  # no CFG, or separate cond / uncond passes (one branch each)
        counted, attn_counted = sum(linear.values()), sum(attention.values())
    schedule = Schedule(
        T=len(steps),
        layers=run.layers,
        directives=[s.directive for s in steps],
        decisions=[s.decisions for s in steps],
        meta={
            "method": method,
            "config": record.config,
            "n_tokens": [run.n_tokens(layer) for layer in run.layers],
        },
    )
    return {
        "method": method,
        "config": record.config,
        "family": run.family,
        "num_steps": len(steps),
        "cfg_batched": run.cfg_batched,
        "branches": list(branches),
        "macs_cfg_counted": counted,
        "macs_cfg_not_counted": linear[first],
        "macs_attention_cfg_counted": attn_counted,
        "macs_attention_cfg_not_counted": attention[first],
        "macs_per_step": [s.macs_linear for s in steps],
        "full_steps": schedule.full_steps(),
        "directives": [str(s.directive) for s in steps],
        "reused_steps": [
            i
            for i, s in enumerate(steps)
            if s.directive.kind in (DirectiveKind.REUSE_OUTPUT, DirectiveKind.BLOCK_RESIDUAL)
        ],
        "decisions": [[str(d) for d in s.decisions] for s in steps],
        "layers": [layer.name for layer in run.layers],
        "selection_seconds": sum(b.selection_seconds for b in branches.values()),
        "selection_macs": record.selection_macs,
        "schedule": schedule,
        "images": run.batch // 2 if run.cfg_batched else run.batch,
        "calls": 1,
        "per_call": [],
    }


# -- attach ----------------------------------------------------------------------------------------
def attach(
    target, method: Method, *, num_steps: int | None = None, cfg_batched: bool | None = None, seed: int = 0
) -> Handle:
    """Attach ``method`` to a diffusers pipeline or to its transformer (per instance).

    num_steps: denoiser calls per run; only needed for a bare transformer (a pipeline's
      scheduler tells it). cfg_batched: whether calls carry [cond, uncond] halves in one batch
      (default: the family's convention, docs/concepts.md#models-layers-and-tokens). seed: seeds random token scores.
    """
    if not isinstance(method, Method):
        raise TypeError(f"expected a method from dsbench.methods.build(...), got {type(method).__name__}")
    transformer = getattr(target, "transformer", None)
    scheduler = getattr(target, "scheduler", None)
    if transformer is None:
        if not isinstance(target, torch.nn.Module):
            raise TypeError(f"cannot attach to {type(target).__name__}: pass a diffusers pipeline or its transformer")
        transformer, scheduler = target, None
    # torch.compile(transformer) wraps it; the wrapper calls the module's own __call__, so the overrides go there
    transformer = cast(torch.nn.Module, getattr(transformer, "_orig_mod", transformer))
    attached: Handle | None = getattr(transformer, "_dsbench_handle", None)
    if attached is not None:
        raise RuntimeError(
            f"a method ({attached.engine.method.name}) is already attached to "
            "this transformer; detach it first (handle.detach() or leave its `with` block)"
        )
    if num_steps is not None and num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    adapter = adapter_for(transformer)  # TypeError naming the supported classes
    replacement = method.replacement(transformer)  # a rebuilt model (SparseDiT) or None
    engine = Engine(
        transformer if replacement is None else replacement,
        adapter,
        method,
        cfg_batched=adapter.default_cfg_batched if cfg_batched is None else cfg_batched,
        num_steps=method.steps_to_run(num_steps) if num_steps is not None else None,
        seed=seed,
    )
    undo: list[Callable[[], None]] = []
    try:
        if replacement is None:
            _refuse_wrapped_blocks(adapter)
            adapter.install(engine, undo)
        else:
            _install_replacement(transformer, replacement, engine, undo)
        _hook_calls(transformer, engine, adapter, undo)
        if hasattr(transformer, "cache_context"):
            _wrap_cache_context(transformer, engine, undo)
        if scheduler is not None:
            _wrap_set_timesteps(scheduler, engine, undo)
        handle = Handle(engine, undo)
        set_instance_attr(transformer, "_dsbench_handle", handle, undo)
        # last: the method's own library wraps all of the above and its remover restores this state
        handle._uninstall = method.install(target if target is not transformer else None, transformer)
    except Exception:
        for u in reversed(undo):
            u()
        engine.counter.remove()
        raise
    return handle


def _install_replacement(transformer, replacement: Any, engine: Engine, undo: list) -> None:
    """Run a model-transforming method's module in place of the transformer's forward (per instance).

    Its own blocks run, not the adapter's, so there are no per-layer decisions; the engine's counter
    (built on the replacement) counts its Linear/Conv MACs and the module reports its attention MACs.
    """
    wrapper = vars(transformer).get("forward")
    if wrapper is not None:
        raise RuntimeError(
            f"{engine.method.name} runs its own model in place of {type(transformer).__name__}.forward, which "
            f"already has a per-instance override ({getattr(wrapper, '__qualname__', type(wrapper).__name__)}) "
            "that it would bypass: attach dsbench first and the other library after it"
        )
    engine.layers = []
    replacement.set_counter(engine.counter)
    undo.append(lambda: replacement.set_counter(None))
    set_instance_attr(transformer, "forward", replacement.forward, undo)


def _hook_calls(transformer, engine: Engine, adapter, undo: list) -> None:
    """Open and close each denoiser call with module hooks rather than a ``forward`` override: hooks run in
    ``Module.__call__`` around whatever ``forward`` is at call time, so a library that wraps or replaces the
    transformer's ``forward`` before or after dsbench attaches (cache-dit does both) stays in the path."""

    def before(_module, args, kwargs):
        engine.begin_call(adapter.call_info(args, kwargs))

    def after(_module, _args, output):
        return engine.end_call(output)

    undo.append(transformer.register_forward_pre_hook(before, with_kwargs=True).remove)
    undo.append(transformer.register_forward_hook(after).remove)


def _refuse_wrapped_blocks(adapter) -> None:
    """dsbench runs its own forward for every block: a per-instance ``forward`` already there (another
    library's wrapper) would be bypassed, its effect silently lost, so attaching refuses instead."""
    for b, (block, _stream) in enumerate(adapter.blocks):
        wrapper = vars(block).get("forward")
        if wrapper is not None:
            raise RuntimeError(
                f"block {b} ({type(block).__name__}) already has a per-instance forward "
                f"({getattr(wrapper, '__qualname__', type(wrapper).__name__)}), which dsbench's block forward would "
                "bypass: attach dsbench first and the other library after it"
            )


def _wrap_cache_context(transformer, engine: Engine, undo: list) -> None:
    """Pipelines that run cond and uncond as separate calls name them with cache_context."""
    from contextlib import contextmanager

    original = transformer.cache_context

    @contextmanager
    def cache_context(name, *args, **kwargs):
        previous, engine.branch = engine.branch, str(name)
        try:
            with original(name, *args, **kwargs):
                yield
        finally:
            engine.branch = previous

    set_instance_attr(transformer, "cache_context", cache_context, undo)


def _wrap_set_timesteps(scheduler, engine: Engine, undo: list) -> None:
    original = scheduler.set_timesteps
    signature = inspect.signature(original)

    @functools.wraps(original)
    def set_timesteps(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        _apply_step_reduction(engine.method, bound)
        original(*bound.args, **bound.kwargs)
        engine.new_run(len(scheduler.timesteps))

    set_instance_attr(scheduler, "set_timesteps", set_timesteps, undo)


def _apply_step_reduction(method: Method, bound: inspect.BoundArguments) -> None:
    """Let a step-reduction method shorten the run before the scheduler builds its timesteps."""
    args = bound.arguments
    requested: int | None
    if args.get("timesteps") is not None:
        requested = len(args["timesteps"])
    elif args.get("sigmas") is not None:
        requested = len(args["sigmas"])
    else:
        requested = args.get("num_inference_steps")
    if requested is None:
        return
    target = method.steps_to_run(int(requested))
    if target == requested:
        return
    if args.get("timesteps") is not None:
        raise ValueError(f"{method.name}: cannot shorten a custom timestep list; pass num_inference_steps={target}")
    if args.get("sigmas") is not None:
        sigmas = np.asarray(args["sigmas"], dtype=np.float64)
        if not np.allclose(sigmas, np.linspace(1.0, 1.0 / requested, requested)):
            raise ValueError(
                f"{method.name}: cannot shorten a custom sigma schedule; "
                f"call the pipeline with num_inference_steps={target}"
            )
        args["sigmas"] = np.linspace(1.0, 1.0 / target, target)  # the FLUX pipelines' own default
        if "num_inference_steps" in args and args["num_inference_steps"] is not None:
            args["num_inference_steps"] = target
        return
    args["num_inference_steps"] = target
