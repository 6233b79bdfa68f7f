"""The method interface (METHODS §0.7): decision types, the run description a method sees,
the validated-config base class and the registry.

A method only *decides* (which steps and layers to compute, on how many tokens) and
*selects* (which tokens). Executing decisions, caching and MAC counting belong to
``harness.engine``; a method never touches the model.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pydantic

from harness.scores import ScoreContext, ScoreSpec, select_tokens
from harness.validation import StrictModel, one_line, show


class Kind(enum.IntEnum):
    """What a layer does at one step. The integer is the code stored in schedules."""

    REUSE = 0
    FULL = 1
    TOPK = 2
    TAYLOR = 3
    MIX = 4


# TOPK variants (METHODS §0.3): where a partial self-attention takes its keys/values, and what
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
            extra = "".join(f",{name}={value}" for name, value, default in
                            (("kv", self.kv, "all"), ("fill", self.fill, "cache")) if value != default)
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

    kv and fill choose the variants of METHODS §0.3 (defaults: exact-query, rest from the cache).
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


@dataclass(frozen=True)
class Directive:
    """Step-level override of the per-layer grid (METHODS §0.4)."""

    kind: DirectiveKind
    front: int = 0  # BLOCK_RESIDUAL: blocks computed at the start (Fn)
    back: int = 0  # BLOCK_RESIDUAL: blocks computed at the end (Bn)

    def __str__(self) -> str:
        if self.kind is DirectiveKind.BLOCK_RESIDUAL:
            return f"BLOCK_RESIDUAL({self.front},{self.back})"
        return self.kind.name


NORMAL = Directive(DirectiveKind.NORMAL)
REUSE_OUTPUT = Directive(DirectiveKind.REUSE_OUTPUT)


def block_residual(front: int, back: int) -> Directive:
    return Directive(DirectiveKind.BLOCK_RESIDUAL, front=int(front), back=int(back))


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
    num_steps: int  # denoiser calls in this run (METHODS §0.2)
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
    finite and never given as a bool or a string (``harness.validation.StrictModel``)."""

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
    taylor_order: int = 0  # >0 makes the engine keep Taylor factors on FULL layers
    residual_spans: tuple[tuple[int, int], ...] = ()  # (Fn, Bn) pairs BLOCK_RESIDUAL may use
    mix_detach_cache: bool = False  # MIX stores its blended output detached (no backprop through time)
    mix_checkpoint: bool = False  # MIX recomputes its layer in the backward pass instead of storing activations
    extra_stats: frozenset[str] = frozenset()  # statistics to record beyond the score's (harness.scores)

    def __init__(self, config: MethodConfig):
        self.config = config
        self.run: RunInfo | None = None
        self.score = ScoreSpec()
        self.selection_macs = 0.0  # selection overhead of the current run, per generated image (§0.9)

    # -- hooks (METHODS §0.7) -------------------------------------------------------------
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

    def may_topk(self, layer: Layer) -> bool:
        """Whether ``decide`` can return TOPK at this layer in the current run. False lets the engine
        keep a never-TOPK attention's statistic as column sums (B×N) instead of maps (B×N×N)."""
        return layer.supports_topk

    def select(self, i: int, layer: Layer, k: int, ctx: ScoreContext):
        """Indices [B, k] of the tokens to recompute; default: the method's composite score."""
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


_REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    if not cls.name:
        raise TypeError(f"{cls.__name__} needs a non-empty `name`")
    if cls.name in _REGISTRY:
        raise ValueError(f"method {cls.name!r} is registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def available() -> list[str]:
    """Names of all registered methods, sorted."""
    return sorted(_REGISTRY)


def method_class(name: str) -> type[Method]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; available methods: {', '.join(available())}") from None


def config(name: str, **params: Any) -> MethodConfig:
    """The validated config of method ``name`` without building the method (which may read files, e.g. a
    learned schedule); a bad field raises ValueError naming it."""
    cls = method_class(name)
    try:
        return cls.Config(**params)
    except pydantic.ValidationError as err:
        raise ValueError(_format_validation_error(name, cls.Config, err)) from None


def build(name: str, **params: Any) -> Method:
    """Build a method from validated parameters; a bad field raises ValueError naming it."""
    return method_class(name)(config(name, **params))


def _format_validation_error(method: str, config_cls: type[MethodConfig], err: pydantic.ValidationError) -> str:
    """One line: every problem, joined by "; " (the CLI prints errors on one line)."""
    lines = []
    for e in err.errors():
        field_name = ".".join(str(p) for p in e["loc"]) or "(config)"
        if e["type"] == "extra_forbidden":
            allowed = ", ".join(config_cls.model_fields) or "(none)"
            lines.append(f"{method}: unknown parameter {field_name!r}; allowed parameters: {allowed}")
            continue
        if e["type"] == "missing":
            hint = config_cls.required_hint(field_name)
            lines.append(f"{method}: parameter {field_name!r} is required" + (f": {hint}" if hint else ""))
            continue
        info = config_cls.model_fields.get(field_name)
        allowed = f" ({info.description})" if info is not None and info.description else ""
        lines.append(f"{method}: parameter {field_name!r} = {show(e.get('input'))} is invalid: {e['msg']}{allowed}")
    return one_line("; ".join(lines))
