"""The shared vocabulary of dsbench (docs/concepts.md).

Everything the engine, the adapters and the methods exchange lives here, so that each of them
depends on this module and none on another: the decisions a method returns per (step, layer)
and per step, the layers and the run a method sees, the ``Method`` interface the engine calls,
the ``Schedule`` of a whole run, and the types and row helpers adapters and the engine share.
A method only *decides* and *selects*; executing decisions, caching and counting MACs belong
to ``dsbench.engine``.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import torch

from dsbench.scores import ScoreContext, ScoreSpec, select_tokens
from dsbench.validation import StrictModel


class Kind(enum.IntEnum):
    """What a layer does at one step. The integer is the code stored in schedules."""

    REUSE = 0
    FULL = 1
    TOPK = 2
    TAYLOR = 3
    MIX = 4


# TOPK variants (docs/concepts.md#the-token-cache): where a partial self-attention takes its keys/values, and what
# the rows it does not compute receive
TOPK_KV = ("all", "selected", "stale")  # all tokens (exact-query); the computed rows only; the last
# computation's keys/values with the computed rows updated
TOPK_FILL = ("cache", "copy")  # the cache (Eq. 3); a copy of the computed row the selection names


@dataclass(frozen=True)
class Decision:
    """One (step, layer) cell: FULL, REUSE, TOPK(k) computed tokens or TAYLOR(m) order."""

    kind: Kind
    k: int = 0
    m: int = 0
    kv: str = "all"  # TOPK self-attention keys/values, one of TOPK_KV
    fill: str = "cache"  # TOPK rows not computed, one of TOPK_FILL

    def __str__(self) -> str:
        if self.kind is Kind.TOPK:
            extra = "".join(
                f",{name}={value}"
                for name, value, default in (("kv", self.kv, "all"), ("fill", self.fill, "cache"))
                if value != default
            )
            return f"TOPK({self.k}{extra})"
        if self.kind is Kind.TAYLOR:
            return f"TAYLOR({self.m})"
        if self.kind is Kind.MIX:
            return f"MIX({self.k})"
        return self.kind.name


FULL = Decision(Kind.FULL)
REUSE = Decision(Kind.REUSE)


def topk(k: int, kv: str = "all", fill: str = "cache") -> Decision:
    """TOPK(k); k must be a positive token count (use REUSE for 0 and FULL for all).

    kv and fill choose the variants of docs/concepts.md#the-token-cache (defaults: exact-query, rest from the cache).
    """
    if k < 0:
        raise ValueError(f"TOPK needs k >= 0 tokens, got {k}")
    if kv not in TOPK_KV:
        raise ValueError(f"TOPK kv must be one of {TOPK_KV}, got {kv!r}")
    if fill not in TOPK_FILL:
        raise ValueError(f"TOPK fill must be one of {TOPK_FILL}, got {fill!r}")
    return Decision(Kind.TOPK, k=int(k), kv=kv, fill=fill)


def mix(k: int) -> Decision:
    """MIX(k): compute every token, blend with the cache by the method's ``mix_weights`` (differentiable
    training forward, DiffSparse §1.1.5); cache bookkeeping as TOPK(k) on the top-k ranked tokens."""
    if k < 0:
        raise ValueError(f"MIX needs k >= 0 tokens, got {k}")
    return Decision(Kind.MIX, k=int(k))


def taylor(m: int) -> Decision:
    if m < 0:
        raise ValueError(f"TAYLOR needs order m >= 0, got {m}")
    return Decision(Kind.TAYLOR, m=int(m))


class DirectiveKind(enum.Enum):
    NORMAL = "normal"
    REUSE_OUTPUT = "reuse_output"
    BLOCK_RESIDUAL = "block_residual"
    PROBE = "probe"


@dataclass(frozen=True)
class Directive:
    """Step-level override of the per-layer grid (docs/concepts.md#step-directives).

    PROBE(front, back) is decided at run time: the engine computes a signal, hands it to
    ``Method.reuse_after_probe`` and runs the step as BLOCK_RESIDUAL(front, back) when the method answers
    True, else as NORMAL; reports show the step under the directive it became.
    """

    kind: DirectiveKind
    front: int = 0  # BLOCK_RESIDUAL / PROBE: blocks computed first (Fn); REUSE_OUTPUT: blocks run before the skip
    back: int = 0  # BLOCK_RESIDUAL / PROBE: blocks computed at the end (Bn)

    def __str__(self) -> str:
        if self.kind in (DirectiveKind.BLOCK_RESIDUAL, DirectiveKind.PROBE):
            return f"{self.kind.name}({self.front},{self.back})"
        if self.kind is DirectiveKind.REUSE_OUTPUT and self.front:
            return f"REUSE_OUTPUT({self.front})"
        return self.kind.name


NORMAL = Directive(DirectiveKind.NORMAL)
REUSE_OUTPUT = Directive(DirectiveKind.REUSE_OUTPUT)


def reuse_output(front: int = 0) -> Directive:
    """REUSE_OUTPUT after ``front`` computed blocks: their caches update, their output is discarded (DuCa-DiT's
    full step whose threshold update turns the later blocks aggressive)."""
    return Directive(DirectiveKind.REUSE_OUTPUT, front=int(front))


def block_residual(front: int, back: int) -> Directive:
    return Directive(DirectiveKind.BLOCK_RESIDUAL, front=int(front), back=int(back))


def probe(front: int, back: int) -> Directive:
    """A step that decides at run time between NORMAL and BLOCK_RESIDUAL(front, back) (adaptive caches).

    The signal: with front = 0, the image-token rows of the first layer's input (the first block's
    timestep-modulated input, TeaCache); with front >= 1, the image hidden states entering block ``front``
    minus those entering block 0 (the residual of the first Fn blocks, First-Block Cache / DBCache)."""
    return Directive(DirectiveKind.PROBE, front=int(front), back=int(back))


@dataclass(frozen=True)
class Layer:
    """One (block, stream, sub-module) triple; ``index`` is its execution order ℓ."""

    index: int
    block: int  # global block index in execution order
    stream_block: int  # block index within its stream (b in the formulas)
    stream: str  # "main" (DiT/PixArt/Wan), "double" or "single" (FLUX)
    module: str  # sa, ca, mlp (DiT/PixArt/Wan); attn, img_mlp, txt_mlp (FLUX double); attn, mlp (single)
    tokens: str  # which tokens it runs on: "image", "text" or "joint" ([text; image])
    supports_topk: bool = True

    @property
    def name(self) -> str:
        return f"{self.stream}{self.stream_block}.{self.module}"


@dataclass
class RunInfo:
    """What a method learns about a sampling run before its first step."""

    family: str  # "dit", "pixart", "flux", "wan"
    num_steps: int  # denoiser calls in this run (docs/concepts.md#step-index)
    layers: list[Layer]
    n_image: int
    n_text: int
    grid: tuple[int, int]  # image-token grid (rows, cols) for spatial terms
    batch: int  # rows per call (both CFG halves when batched)
    cfg_batched: bool
    blocks_per_stream: dict[str, int] = field(default_factory=dict)
    variant: str = ""  # e.g. "schnell" / "dev" for FLUX
    noise_channels: int | None = None  # output channels predicting the noise (learned variance excluded)

    def n_tokens(self, layer: Layer) -> int:
        return {"image": self.n_image, "text": self.n_text, "joint": self.n_image + self.n_text}[layer.tokens]

    def depth_divisor(self, layer: Layer) -> int:
        """D in the layer factors: 27 for 28-block models (and FLUX single, as in ToCa), else n-1 (§0.1)."""
        n = self.blocks_per_stream[layer.stream]
        if n == 28 or (self.family == "flux" and n in (19, 38)):
            return 27
        return max(1, n - 1)


@dataclass
class Selection:
    """What ``Method.select`` may return instead of bare indices, for a TOPK with fill="copy":
    the computed rows and, for every token, the computed token whose output it receives."""

    index: Any  # B×k token indices to compute
    source: Any  # B×n: source[b, j] is a token of index[b] (j itself when j is computed)


def ratio_to_count(ratio: float, n: int) -> int:
    """Reference ratio→count rule (§0.6): k = int(float32(clamp(ratio, 0, 1)) × N)."""
    import numpy as np

    return int(np.float32(min(max(ratio, 0.0), 1.0)) * np.float32(n))


class MethodConfig(StrictModel):
    """Base of every method's config: unknown fields are errors, values are checked on build, numbers are
    finite and never given as a bool or a string (``dsbench.validation.StrictModel``)."""

    @classmethod
    def required_hint(cls, field_name: str) -> str:
        """What to say when the required field ``field_name`` is missing (default: its description)."""
        info = cls.model_fields.get(field_name)
        return info.description if info is not None and info.description else ""


class Method:
    """Base class. Subclasses set ``name`` and ``Config`` and override the hooks they need."""

    name: ClassVar[str] = ""
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    summary: ClassVar[str] = ""
    # the config field a compute budget tunes (runner: bisect it until the run's MACs match), or None
    budget_field: ClassVar[str | None] = None
    # (module, pip command) of an optional package the method needs: a missing one fails at config validation
    requires: ClassVar[tuple[str, str] | None] = None
    taylor_order: int = 0  # >0 makes the engine keep Taylor factors on FULL layers
    taylor_from: int = 0  # first step whose FULL layers form finite differences (before: order 0 only)
    residual_spans: tuple[tuple[int, int], ...] = ()  # (Fn, Bn) pairs BLOCK_RESIDUAL may use
    mix_detach_cache: bool = False  # MIX stores its blended output detached (no backprop through time)
    mix_checkpoint: bool = False  # MIX recomputes its layer in the backward pass instead of storing activations
    extra_stats: frozenset[str] = frozenset()  # statistics to record beyond the score's (dsbench.scores)

    def __init__(self, config: MethodConfig):
        self.config = config
        self.run: RunInfo | None = None
        self.score = ScoreSpec()
        self.selection_macs = 0.0  # selection overhead of the current run, per generated image (§0.9)

    # -- hooks (docs/concepts.md#the-method-interface) -------------------------------------------------------------
    def steps_to_run(self, num_steps: int) -> int:
        """Denoiser calls the pipeline should make when asked for ``num_steps`` (step reduction)."""
        return num_steps

    def reset(self, run: RunInfo) -> None:
        """Start of a sampling run: resolve per-model defaults, clear method state."""
        self.run = run
        self.selection_macs = 0.0

    def begin_step(self, i: int) -> Directive:
        return NORMAL

    def decide(self, i: int, layer: Layer) -> Decision:
        return FULL

    def reuse_after_probe(self, i: int, signal: torch.Tensor, branch: str) -> bool:
        """A PROBE step's answer, given its signal (``core.probe``): True reuses the cached residual of the
        blocks between front and back, False computes the step. ``branch`` names the stream of calls
        (separate CFG passes each probe; docs/concepts.md#classifier-free-guidance)."""
        raise NotImplementedError(f"{self.name} returns a PROBE directive but defines no reuse_after_probe")

    def may_topk(self, layer: Layer) -> bool:
        """Whether ``decide`` can return TOPK at this layer in the current run. False lets the engine
        keep a never-TOPK attention's statistic as column sums (B×N) instead of maps (B×N×N)."""
        return layer.supports_topk

    def select(self, i: int, layer: Layer, k: int, ctx: ScoreContext) -> torch.Tensor | Selection:
        """Indices [B, k] of the tokens to recompute (a ``Selection`` for a TOPK with fill="copy"); default:
        the method's composite score."""
        return select_tokens(ctx, self.score, k)

    def mix_weights(self, i: int, layer: Layer, order):
        """MIX layers: per-token weights B×N of the fresh output (1 − weight goes to the cache), given the
        selector's full ranking ``order`` (B×N token indices, best first)."""
        raise NotImplementedError(f"{self.name} decides MIX but defines no mix_weights")

    def output_rows(self, i: int):
        """Token rows [B, k] whose model output step i computes; the engine gives the other tokens
        the previous step's output (CAT's final layer). None: the whole output is this step's."""
        return None

    def end_step(self, i: int, output) -> None:
        pass

    def install(self, pipeline, transformer) -> Callable[[], None] | None:
        """Another library's caching run as this method (cache-dit, diffusers' hooks): install it on
        ``pipeline`` (None when attached to a bare transformer) and ``transformer``, and return the function
        that removes it exactly. ``attach`` calls this after its own overrides, so the library wraps them and
        the engine counts what actually runs; ``detach`` calls the remover first. None (the default): nothing."""
        return None

    def replacement(self, transformer):
        """A model-transforming method (SparseDiT) returns the module that runs instead of ``transformer``
        while attached: same forward signature and output, a ``set_counter(counter)`` for attention MACs.
        None (the default) keeps the transformer and executes this method's per-layer decisions on it."""
        return None

    # -- description ----------------------------------------------------------------------
    def resolved_config(self) -> dict[str, Any]:
        """The parameters in effect for the current run (per-model defaults filled in)."""
        return self.config.model_dump()

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.config.model_dump().items())
        return f"{self.name}({params})"


class NotApplicable(TypeError):
    """The method cannot run on this model family at all (SparseDiT on PixArt): a listed skip, not a failure.
    Every other error while a method is set up on a model is the user's to fix and stops the run."""


# -- a whole run --------------------------------------------------------------------------------
@dataclass
class Schedule:
    T: int
    layers: list[Layer]
    directives: list[Directive]
    decisions: list[list[Decision]]  # [step][layer]
    meta: dict[str, Any] = field(default_factory=dict)

    def full_steps(self) -> list[int]:
        """Steps whose every layer is FULL under a NORMAL directive."""
        return [
            i
            for i, (d, row) in enumerate(zip(self.directives, self.decisions))
            if d.kind is DirectiveKind.NORMAL and all(c.kind is Kind.FULL for c in row)
        ]

    def codes(self) -> list[list[int]]:
        """One integer per cell: the Kind code (REUSE 0, FULL 1, TOPK 2, TAYLOR 3)."""
        return [[int(c.kind) for c in row] for row in self.decisions]

    def counts(self) -> list[list[int]]:
        """Tokens computed per cell (TOPK k, FULL n, else 0), given ``n_tokens`` per layer in meta."""
        n = self.meta.get("n_tokens")
        if n is None:
            raise ValueError("schedule meta lacks n_tokens")
        return [
            [n[ell] if c.kind is Kind.FULL else c.k if c.kind is Kind.TOPK else 0 for ell, c in enumerate(row)]
            for row in self.decisions
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "T": self.T,
            "layers": [layer.name for layer in self.layers],
            "directives": [str(d) for d in self.directives],
            "codes": self.codes(),
            "k": [[c.k for c in row] for row in self.decisions],
            "m": [[c.m for c in row] for row in self.decisions],
            "meta": self.meta,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def digest(self) -> str:
        """Hash of the decisions alone: equal for runs that made the same choices."""
        body = {k: v for k, v in self.to_dict().items() if k != "meta"}
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


# -- engine and adapters ------------------------------------------------------------------------
@dataclass
class LayerResult:
    """What an adapter's sub-module computation returns for the computed rows."""

    out: torch.Tensor  # B×q×C pre-gate output rows
    stats: dict[str, torch.Tensor] = field(default_factory=dict)  # recorded statistics, see dsbench.scores


@dataclass
class AttentionKeys:
    """Keys/values of a partial self-attention other than all current tokens (TOPK ``kv``)."""

    mode: str  # "selected": from the computed rows only; "stale": ``keys``/``values`` with those rows updated
    keys: torch.Tensor | None = None  # B×N×C key projections of the last computation (stale)
    values: torch.Tensor | None = None


@dataclass
class CallInfo:
    """Shape of one denoiser call, read by the adapter from the transformer's inputs."""

    batch: int
    n_image: int
    n_text: int
    grid: tuple[int, int]

    def key(self) -> tuple:
        return self.batch, self.n_image, self.n_text, self.grid


class LayerInput:
    """A layer's input, computed only as far as a decision needs it.

    REUSE needs none of it and an MLP's TOPK only its selected rows; a per-token prologue
    (norm + modulation) computed on all tokens at such steps would cost as much as the saved
    MACs on a CPU. ``rows`` computes just the given rows (must equal gathering from ``full``).
    """

    def __init__(
        self,
        full: Callable[[], torch.Tensor],
        rows: Callable[[torch.Tensor], torch.Tensor] | None = None,
        hidden: torch.Tensor | None = None,
    ):
        self._full_fn, self._rows_fn = full, rows
        self._full: torch.Tensor | None = None
        self.hidden = hidden  # the hidden states before norm and modulation, when the adapter knows them

    @classmethod
    def of(cls, x: torch.Tensor) -> LayerInput:
        layer_input = cls(lambda: x)
        layer_input._full = x
        return layer_input

    def full(self) -> torch.Tensor:
        full = self._full
        if full is None:
            full = self._full = self._full_fn()
        return full

    def rows(self, index: torch.Tensor | None) -> torch.Tensor:
        if index is None:
            return self.full()
        if self._full is None and self._rows_fn is not None:
            return self._rows_fn(index)
        return gather_rows(self.full(), index)


class LayerExecutor(Protocol):
    """What an adapter's block forward calls (``dsbench.engine.Engine`` implements it)."""

    counter: Any  # the MacCounter attention MACs are added to

    def layer(
        self,
        ell: int,
        h: torch.Tensor | LayerInput,
        compute: Callable[[torch.Tensor | None, frozenset[str]], LayerResult],
    ) -> torch.Tensor: ...

    def run_block(self, b: int, body: Callable[[], Any], state_in: tuple, as_output: Callable[[tuple], Any]) -> Any: ...


def _flat_rows(index: torch.Tensor, n: int) -> torch.Tensor:
    """Positions of the rows ``index`` (B×k) in the (B·N)×C view of a B×N×C tensor.

    Whole-row index_select / index_copy_ on that view are several times faster on a CPU than
    gather / scatter_ along dim 1 with an index expanded over the channels (same values)."""
    return (index + torch.arange(index.shape[0], device=index.device).unsqueeze(1) * n).reshape(-1)


def gather_rows(x: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    """Rows ``index`` (B×k) of x (B×N×C); all rows when index is None."""
    if index is None:
        return x
    b, n, c = x.shape
    return x.reshape(b * n, c).index_select(0, _flat_rows(index, n)).view(*index.shape, c)


def scatter_rows(dst: torch.Tensor, index: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """dst with rows ``index`` replaced; in place unless autograd must see the old value."""
    idx = index.unsqueeze(-1).expand(-1, -1, dst.shape[-1])
    if torch.is_grad_enabled() and (dst.requires_grad or rows.requires_grad):
        return dst.scatter(1, idx, rows.to(dst.dtype))
    if dst.is_contiguous():
        c = dst.shape[-1]
        dst.view(-1, c).index_copy_(0, _flat_rows(index, dst.shape[1]), rows.reshape(-1, c).to(dst.dtype))
        return dst
    return dst.scatter_(1, idx, rows.to(dst.dtype))


@dataclass(eq=False)
class InstanceOverride:
    """An ``obj.name = value`` made on the instance only; calling it puts back what was there (the old
    object, or its absence). ``intact`` tells whether the value is still ours: when another library
    overrode the attribute after us, restoring it would silently remove that library's override."""

    obj: Any
    name: str
    value: Any
    had: bool
    old: Any

    def intact(self) -> bool:
        return self.name in vars(self.obj) and vars(self.obj)[self.name] is self.value

    def __call__(self) -> None:
        if self.had:
            setattr(self.obj, self.name, self.old)
        else:
            delattr(self.obj, self.name)


def set_instance_attr(obj, name: str, value, undo: list) -> None:
    """``obj.name = value`` on the instance only; ``undo`` gets the ``InstanceOverride`` that restores it."""
    override = InstanceOverride(obj, name, value, had=name in vars(obj), old=vars(obj).get(name))
    setattr(obj, name, value)
    undo.append(override)


def check_plain_attention(attn, where: str) -> None:
    """Our kernel reproduces AttnProcessor2_0 for the plain configuration only."""
    if (
        attn.spatial_norm is not None
        or attn.group_norm is not None
        or attn.residual_connection
        or attn.rescale_output_factor != 1.0
        or attn.norm_cross
    ):
        raise TypeError(
            f"{where}: unsupported Attention configuration (spatial/group norm, residual "
            "connection, output rescaling or cross norm)"
        )
