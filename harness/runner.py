"""Run an experiment: per (model, method, seed) one measured run, stored as one row (docs/architecture.md).

For each model: the teacher (uncached pipeline, same seeds and conditions) comes once from the teacher
cache; the MACs of ``full`` are measured once. For each method: with a budget, its ``budget_field`` is
tuned by bisection until its MACs are closest to, but not above, ``macs_ratio`` × MACs of full; then the
evaluation samples are drawn with the method attached, the metrics computed against the teacher and the
real references, latency timed interleaved with ``full`` (same process, after warm-up, median), peak
memory measured, and the row written atomically with its artifacts (sample grid, per-(step, layer)
decision map). Runs whose identity is already stored are skipped (resume); ``force`` reruns them.
Under ``accelerate launch`` every sampling pass is split across the ranks (:mod:`dsbench.shard`); rank 0
does everything else.

MACs per image do not depend on the batch or on the conditions (the decisions of every method here are
a function of step and layer only; token *indices* vary, token *counts* do not), so the budget search
measures each candidate on a one-image run through the engine: the count is of exactly what executes.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import json
import logging
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

import dsbench
from dsbench import machine, methods, metrics
from dsbench import report as reporting  # `report` names the engine's report of a run here
from dsbench.core import DirectiveKind, NotApplicable
from dsbench.experiment import SAMPLERS, Experiment, MethodEntry, check_inputs
from dsbench.files import sha256_file
from dsbench.metrics import NEEDS, cost
from dsbench.models import zoo
from dsbench.shard import Shard
from dsbench.store import Store, StoreError, keep_pending, pending_dir
from dsbench.teacher_cache import TeacherCache
from dsbench.teacher_cache import code_version as models_version
from dsbench.training import search

log = logging.getLogger("dsbench.runner")

# Sources whose change can change samples or numbers: part of every run's identity (with harness/models,
# which the teacher cache's code version covers). Reporting and IO modules are deliberately left out.
_RESULT_SOURCES = (
    "harness/engine.py",
    "harness/scores.py",
    "harness/accounting.py",
    "harness/runner.py",
    "harness/teacher_cache.py",
    "harness/training/search.py",
    "harness/adapters",
    "harness/metrics",
    "methods",
)
CODE_VERSION_ENV = "DSBENCH_CODE_VERSION"
# short names of budget fields and common parameters in run labels (cache-dit style: toca_N3_R0.30)
# the adaptive caches' and library arms' thresholds too: a budget search stores runs that differ only there
ABBREV = {
    "interval": "N",
    "ratio": "R",
    "fraction": "F",
    "num_steps": "S",
    "threshold": "th",
    "residual_diff_threshold": "th",
}
# a run whose MACs are further than this from the budget (relative) gets a budget_note saying why
BUDGET_TOLERANCE = 0.02


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """Hash of the sources that determine a run's samples and numbers, and of the models' code and weights
    (``$DSBENCH_CODE_VERSION`` when set: a sweep's workers take the version their parent started with)."""
    if os.environ.get(CODE_VERSION_ENV):
        return os.environ[CODE_VERSION_ENV]

    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256(models_version().encode())
    for entry in _RESULT_SOURCES:
        path = root / entry
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for file in files:
            digest.update(f"{file.relative_to(root).as_posix()} {sha256_file(file)}\n".encode())
    return digest.hexdigest()[:16]


def run_id(exp: Experiment, model: str, entry: MethodEntry, seed: int) -> str:
    """A run's identity: everything that determines a run's stored values — model, sampler, steps,
    guidance, method config and budget, eval set, seed, the metric list, the latency protocol, the code and
    the content of the files the method's params name — and nothing else: the experiment's name is not part of
    it, so experiments share rows (the store's members).
    [PD] The identity holds the *requested* config (budget included), not the tuned value, so a resume
    can skip a run before its budget search."""
    payload = {
        "model": model,
        "sampler": exp.sampler,
        "steps": exp.steps,
        "guidance": exp.guidance,
        "method": entry.name,
        "params": entry.params_for(model),
        "budget_macs_ratio": _budget_ratio(exp, entry),
        "eval": exp.eval.model_dump(),
        "seed": seed,
        "metrics": sorted(exp.metrics),
        "latency": exp.latency.model_dump(),
        "code_version": code_version(),
        "inputs": input_files(entry.params_for(model)),
        # only when set: the runs of files without it keep the identity they had before the field existed
        **({"guidance_channels": exp.guidance_channels} if exp.guidance_channels is not None else {}),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def input_files(params: dict[str, Any]) -> dict[str, str]:
    """Content hashes of the files a method's params name (a learned schedule, fine-tuned weights): a file
    retrained at the same path makes a new run instead of reusing the rows of the old one."""
    out = {}
    for key, value in sorted(params.items()):
        if isinstance(value, str) and Path(value).is_file():
            stat = Path(value).stat()
            out[key] = _digest(str(Path(value).resolve()), stat.st_mtime_ns, stat.st_size)
    return out


@functools.lru_cache(maxsize=256)
def _digest(path: str, mtime_ns: int, size: int) -> str:
    """sha256 of a file, computed once per (path, modification time, size)."""
    return sha256_file(Path(path))


def _budget_ratio(exp: Experiment, entry: MethodEntry) -> float | None:
    budget = exp.budget_for(entry)
    return budget.macs_ratio if budget is not None else None


def run_label(method: str, config: dict, given: dict, seed: int | None = None) -> str:
    """Run name encoding the config: abbreviated fields first (``toca_N3_R0.30``), then given params."""
    parts = [method]
    for field, short in ABBREV.items():
        if config.get(field) is not None:
            parts.append(f"{short}{_fmt(config[field])}")
    parts += [f"{k}{_fmt(v, k)}" for k, v in sorted(given.items()) if k not in ABBREV and v is not None]
    if seed is not None:
        parts.append(f"s{seed}")
    return "_".join(parts)


def _fmt(value, name: str | None = None) -> str:
    if isinstance(value, str) and "/" in value:  # a file (a schedule, weights): a short name, not its path
        path = Path(value)
        # a file named after its parameter (schedule=.../r43/schedule.json) is told apart by its folder
        return "-" + (path.parent.name if path.stem == name and path.parent.name else path.name)
    return f"{value:.2f}" if isinstance(value, float) else str(value)


# -- progress ---------------------------------------------------------------------------------------------
def interactive() -> bool:
    """Whether progress redraws in place: only on a terminal. Elsewhere (CI logs, a file) it is plain lines."""
    stream = sys.stderr
    if not getattr(stream, "isatty", lambda: False)():
        return False
    try:  # a terminal of no width (a pty nobody sized) shows no bar at all: plain lines there too
        return os.get_terminal_size(stream.fileno()).columns > 0
    except (OSError, ValueError, AttributeError):
        return True


def echo(line: str) -> None:
    """One line for the person watching: above the bars on a terminal, a plain line elsewhere."""
    if interactive():
        tqdm.write(line, file=sys.stderr)
    else:
        print(line, file=sys.stderr, flush=True)


class Progress:
    """One progress level: level 0 the runs (or the set-up of the methods), level 1 what one run does (the
    images it draws, a budget search), level 2 the denoising steps of one batch.

    On a terminal: a tqdm bar at ``position=level`` with ``n/total unit``; the inner ones vanish when done
    (``leave=False``), so nested bars do not pile up. Elsewhere, plain lines: ``start`` prints one line per item
    of level 0 (``small 2/3 run: mnist-dit toca seed 0``) and ``result`` one line when an inner level is done;
    the in-between states (``phase``) are shown on a terminal only."""

    def __init__(
        self, desc: str | None, total: int | None = None, unit: str = "", *, level: int = 0, enabled: bool = True
    ):
        self.desc, self.total, self.unit, self.level = desc, total, unit, level
        self.enabled = bool(enabled and desc is not None)
        self.n = 0
        self._result: str | None = None
        self.bar = None
        if self.enabled and interactive():
            count = "{n_fmt}/{total_fmt}" if total is not None else "{n_fmt}"
            self.bar = tqdm(
                total=total,
                desc=desc,
                unit=unit,
                position=level,
                leave=level == 0,
                dynamic_ncols=True,
                bar_format=f"{{desc}} {count} {unit} "
                + ("{bar:20} " if total is not None else "")
                + "[{elapsed}"
                + ("<{remaining}" if total is not None else "")
                + "]{postfix}",
            )

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def counted(self) -> str:
        return f"{self.n}/{self.total} {self.unit}" if self.total is not None else f"{self.n} {self.unit}"

    def start(self, item: str) -> None:
        """Item ``n + 1`` begins: shown beside the bar, or as a line (``desc n+1/total unit: item``)."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_postfix_str(item)
        else:
            upcoming = f"{self.n + 1}/{self.total}" if self.total is not None else str(self.n + 1)
            echo(f"{self.desc} {upcoming} {self.unit}: {item}")

    def phase(self, text: str) -> None:
        """What the current item is doing (a terminal's bar only)."""
        if self.bar is not None:
            self.bar.set_postfix_str(text)

    def advance(self, n: int = 1, text: str | None = None) -> None:
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
            if text is not None:
                self.bar.set_postfix_str(text)
        if text is not None:
            self._result = text

    def result(self, text: str) -> None:
        """The outcome of this level, printed once when it closes (beside the bar while it runs)."""
        self._result = text
        self.phase(text)

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.level > 0 and self._result is not None:  # an inner level's outcome stays, as one line
            echo(f"{self.desc}: {self.counted()}, {self._result}")
        self.enabled = False


def bisection_text(field: str, value, macs: float, budget: float, full: float | None = None) -> str:
    """A budget search's state in words: ``ratio=0.06: MACs 0.612 of full, budget 0.600`` (with the full model's
    MACs), else the ratio to the budget, labelled as such (``MACs 1.020 × the budget``). A float field shows
    four significant digits: the last steps of a bisection differ beyond the label's two decimals."""
    shown = f"{value:.4g}" if isinstance(value, float) else str(value)
    if full:
        return f"{field}={shown}: MACs {macs / full:.3f} of full, budget {budget / full:.3f}"
    return f"{field}={shown}: MACs {macs / budget:.3f} × the budget"


def _batch_size(sample: Callable) -> int | None:
    """The number of conditions a bundle's ``sample`` draws per pipeline call (None when it does not say)."""
    try:
        default = inspect.signature(sample).parameters["batch_size"].default
    except (KeyError, TypeError, ValueError):
        return None
    return default if isinstance(default, int) and default > 0 else None


# library output that is noise in a run's log: matplotlib's font cache ("generated new fontManager" in a fresh
# HOME), image plugins' debug lines, the hub libraries' notices (their warnings stay)
_QUIET = {
    "matplotlib": logging.WARNING,
    "PIL": logging.WARNING,
    "urllib3": logging.WARNING,
    "filelock": logging.WARNING,
    "httpx": logging.WARNING,
    "fsspec": logging.WARNING,
    "huggingface_hub": logging.WARNING,
    "torch": logging.WARNING,
}


def quiet_libraries() -> None:
    """Silence the libraries' lines that say nothing about the run: matplotlib's font manager, diffusers' and
    transformers' notices (their verbosity set to errors, through the environment too, so a later import keeps
    it), and their pipeline progress bars (the runner draws its own)."""
    for name, level in _QUIET.items():
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET or logger.level < level:
            logger.setLevel(level)
    for library in ("diffusers", "transformers"):
        os.environ.setdefault(f"{library.upper()}_VERBOSITY", "error")
        if library in sys.modules:  # already configured from the environment at import: set it now
            try:
                __import__(f"{library}.utils.logging", fromlist=["set_verbosity_error"]).set_verbosity_error()
            except (ImportError, AttributeError):
                logging.getLogger(library).setLevel(logging.ERROR)


# -- one model's context --------------------------------------------------------------------------------
@dataclasses.dataclass
class ModelContext:
    """What every run of one model shares: the bundle, sampler settings, conditions, references."""

    bundle: Any
    sampler: str
    steps: int
    guidance: float
    guidance_given: bool  # pass guidance_scale to bundle.sample only when the experiment sets it
    guidance_channels: int | None  # DiT: guide only the first N latent channels (None: the sampler's default)
    conditions: list
    references: torch.Tensor | None
    progress: bool
    _macs_full: float | None = None

    def sample(
        self, conditions: list, seed: int, method: methods.Method | None = None, desc: str | None = None, start: int = 0
    ) -> tuple[torch.Tensor, dict | None]:
        """uint8 images of ``conditions`` (with ``method`` attached when given) and the engine's report;
        ``start``: the index of ``conditions[0]`` in the evaluation set (it picks the images' noise)."""
        pipe = self.bundle.pipeline
        shown = self.progress and desc is not None
        # the pipeline's own bar counts one batch's denoising steps, under the images bar (terminal only)
        pipe.set_progress_bar_config(
            desc="    batch",
            unit="step",
            position=2,
            leave=False,
            dynamic_ncols=True,
            bar_format="{desc} {n_fmt}/{total_fmt} step {bar:20} [{elapsed}<{remaining}]",
            disable=not (shown and interactive()),
        )
        kwargs = {
            "steps": self.steps,
            "guidance_scale": self.guidance if self.guidance_given else None,
            "guidance_channels": self.guidance_channels,
        }
        if method is None:
            return self._draw(conditions, seed, start, desc if shown else None, kwargs), None
        with torch.no_grad(), dsbench.attach(pipe, method, seed=seed) as handle:
            images = self._draw(conditions, seed, start, desc if shown else None, kwargs)
            return images, handle.report()

    def _draw(self, conditions: list, seed: int, start: int, desc: str | None, kwargs: dict) -> torch.Tensor:
        """The bundle's images of ``conditions``; with ``desc``, batch by batch (the bundle's own batch size,
        so the images are the same) under a bar counting images."""
        given = {"steps": kwargs["steps"]}
        given |= {"guidance_scale": kwargs["guidance_scale"]} if kwargs["guidance_scale"] is not None else {}
        given |= {"guidance_channels": kwargs["guidance_channels"]} if kwargs["guidance_channels"] is not None else {}
        batch = _batch_size(self.bundle.sample) if desc is not None else None
        if batch is None or len(conditions) <= batch:
            with Progress(desc, total=len(conditions), unit="image", level=1, enabled=desc is not None) as bar:
                images = self.bundle.sample(conditions, seed, start=start, **given)
                bar.advance(len(conditions))
            return images
        parts = []
        with Progress(desc, total=len(conditions), unit="image", level=1) as bar:
            for i in range(0, len(conditions), batch):
                chunk = conditions[i : i + batch]
                parts.append(self.bundle.sample(chunk, seed, start=start + i, **given))
                bar.advance(len(chunk))
        return torch.cat(parts)

    def sample_sharded(
        self, seed: int, shard: Shard, method: methods.Method | None = None, desc: str | None = None
    ) -> tuple[torch.Tensor | None, dict | None]:
        """The evaluation conditions' images: this rank draws its slice, rank 0 gets them all (other ranks
        None), with the report of rank 0's slice (MACs per image do not depend on the conditions)."""
        start, stop = shard.span(len(self.conditions))
        images, report = (
            self.sample(self.conditions[start:stop], seed, method, desc, start=start)
            if stop > start
            else (torch.zeros(0, dtype=torch.uint8), None)
        )
        return shard.gather(images), report

    def macs_of(self, method: methods.Method) -> float:
        """M_lin per image over the whole run (CFG not counted), from a one-image run through the engine."""
        _, report = self.sample(self.conditions[:1], 0, method)
        return cost.macs(report)["macs"]

    @property
    def macs_full(self) -> float:
        if self._macs_full is None:
            self._macs_full = self.macs_of(methods.build("full"))
        return self._macs_full


def load_model(exp: Experiment, name: str, progress: bool, device: torch.device | None = None) -> ModelContext:
    """Model ``name`` from the zoo, set up as experiment ``exp`` runs it (sampler, steps, evaluation conditions,
    reference images its metrics need); the context counts a method's MACs (``macs_of``) and generates with it.

    ``device``: where a GPU rank under ``accelerate launch`` puts the model (default: the bundle's own)."""
    from diffusers import schedulers

    bundle = zoo.load(name, **({"device": device} if device is not None and device.type == "cuda" else {}))
    needs_refs = any("references" in NEEDS[m] for m in exp.metrics)
    if needs_refs and bundle.references is None:
        wanted = [m for m in exp.metrics if "references" in NEEDS[m]]
        raise ValueError(
            f"metrics {', '.join(wanted)} need real reference images, which model {name} does not "
            "provide here; remove them from the experiment's metrics"
        )
    sampler = bundle.sampler.scheduler
    if exp.sampler is not None and exp.sampler != sampler:
        cls_name, overrides = SAMPLERS[exp.sampler]
        pipe = bundle.pipeline
        pipe.scheduler = getattr(schedulers, cls_name).from_config(pipe.scheduler.config, **overrides)
        sampler = exp.sampler
    if exp.eval.set == "prompts":
        lines = [ln.strip() for ln in Path(exp.eval.prompts).read_text().splitlines() if ln.strip()]
        if len(lines) < exp.eval.size:
            raise ValueError(f"eval.prompts {exp.eval.prompts} has {len(lines)} prompts; eval.size is {exp.eval.size}")
        conditions = lines[: exp.eval.size]
    else:
        conditions = bundle.conditions(exp.eval.size, exp.eval.seed)
    references = bundle.references(exp.eval.references or exp.eval.size) if needs_refs else None
    return ModelContext(
        bundle=bundle,
        sampler=sampler,
        steps=exp.steps or bundle.sampler.steps,
        guidance=bundle.sampler.guidance_scale if exp.guidance is None else exp.guidance,
        guidance_given=exp.guidance is not None,
        guidance_channels=exp.guidance_channels,
        conditions=conditions,
        references=references,
        progress=progress,
    )


# -- budget search ----------------------------------------------------------------------------------------
class BudgetUnreachable(ValueError):
    pass


def _bounds(cls: type[methods.Method], field: str, steps: int) -> tuple[float, float, bool]:
    """(low, high, is_integer) of a budget field from its pydantic constraints. [PD] An integer field
    without an upper bound (an interval, a count) is searched up to the number of steps, beyond which
    it changes nothing."""
    info = cls.Config.model_fields[field]
    is_int = int in getattr(info.annotation, "__args__", (info.annotation,))
    low = high = None
    for c in info.metadata:
        if hasattr(c, "ge"):
            low = c.ge
        elif hasattr(c, "gt"):
            low = c.gt + (1 if is_int else 1e-6)
        elif hasattr(c, "le"):
            high = c.le
        elif hasattr(c, "lt"):
            high = c.lt - (1 if is_int else 1e-6)
    if is_int and high is None:
        high = steps
    if low is None or high is None:
        raise ValueError(f"{cls.name}.{field} has no bounds to search a budget in (constrain it with ge/le)")
    return low, high, is_int


def _accepted_high(name: str, params: dict, field: str, low: float, high: float, is_int: bool) -> float:
    """The largest value of [low, high] the config accepts: a validator may narrow a field's declared
    bounds (e.g. DaTo's ratio ≤ 1 − 1/s²), found by bisecting between accepted and rejected values."""

    def accepted(v) -> bool:
        try:
            methods.build(name, **params, **{field: v})
            return True
        except ValueError:
            return False

    if accepted(high):
        return high
    good, bad = low, high
    while (bad - good > 1) if is_int else (bad - good > 1e-6 * (high - low)):
        mid = (good + bad) // 2 if is_int else (good + bad) / 2
        good, bad = (mid, bad) if accepted(mid) else (good, mid)
    return good


def tune(
    name: str,
    params: dict,
    field: str,
    budget: float,
    macs_of: Callable[[methods.Method], float],
    steps: int,
    *,
    tolerance: float = 1e-3,
    close: float = 2e-3,
    progress: bool = False,
    full: float | None = None,
) -> dict:
    """Bisect ``field`` of method ``name`` until its MACs are closest to, but not above, ``budget``.

    Integer fields are bisected over integers; a float field until the bracket is narrower than
    ``tolerance`` × its range or the MACs are within ``close`` × budget below it. MACs are assumed monotone in
    the field (either direction, found from the two ends); the answer is nevertheless the best of all values
    measured. Returns {"value", "macs", "evaluations": [(value, macs), ...]}; BudgetUnreachable when even the
    cheapest end is above budget. ``full``: the full model's MACs, to show progress as fractions of it
    (``MACs 0.612 of full, budget 0.600``); without it, as the ratio to the budget.
    """
    cls = dsbench.methods.base.method_class(name)
    low, high, is_int = _bounds(cls, field, steps)
    high = _accepted_high(name, params, field, low, high, is_int)
    seen: dict[float, float] = {}
    bar = Progress(f"budget search {name}.{field}", unit="MAC counts", level=1, enabled=progress)

    def measure(v):
        v = int(v) if is_int else float(v)
        if v not in seen:
            seen[v] = macs_of(methods.build(name, **params, **{field: v}))
            bar.advance(1, bisection_text(field, v, seen[v], budget, full))
        return seen[v]

    try:
        if min(measure(low), measure(high)) > budget:
            cheapest = min(seen, key=seen.get)
            raise BudgetUnreachable(
                f"{name}: the budget of {budget:.4g} MACs is below its cheapest setting "
                f"({field}={_fmt(cheapest)}: {seen[cheapest]:.4g} MACs)"
            )
        good, bad = (low, high) if seen[low] <= budget else (high, low)  # good: within budget
        if seen[bad] > budget:
            while (
                (abs(bad - good) > 1)
                if is_int
                else (abs(bad - good) > tolerance * (high - low) and budget - seen[good] > close * budget)
            ):
                mid = (good + bad) // 2 if is_int else (good + bad) / 2
                if measure(mid) <= budget:
                    good = mid
                else:
                    bad = mid
        feasible = {v: m for v, m in seen.items() if m <= budget}
        value = max(feasible, key=lambda v: (feasible[v], -abs(v - good)))
        bar.result("chose " + bisection_text(field, value, feasible[value], budget, full))
    finally:
        bar.close()
    return {"value": value, "macs": feasible[value], "evaluations": sorted(seen.items())}


# -- artifacts ----------------------------------------------------------------------------------------------
def decision_map(report: dict) -> np.ndarray:
    """Kept fraction per (step, layer): FULL 1, TOPK(k) k/N, REUSE and TAYLOR 0; a skipped step (REUSE_OUTPUT) 0."""
    schedule = report["schedule"]
    n = np.asarray(schedule.meta["n_tokens"], dtype=float)
    kept = np.asarray(schedule.counts(), dtype=float) / n
    for i, d in enumerate(schedule.directives):
        if d.kind is DirectiveKind.REUSE_OUTPUT and not d.front:
            kept[i] = 0.0
    return kept


def save_artifacts(
    folder: Path,
    images: torch.Tensor,
    report: dict,
    teacher: torch.Tensor,
    *,
    model: str | None = None,
    label: str | None = None,
    experiment: str | None = None,
) -> None:
    """samples.png (method row under teacher row), decisions.npy/.json/.png (the step × layer map, with the
    MACs of every step for the W&B history)."""
    from PIL import Image
    from torchvision.utils import make_grid

    folder.mkdir(parents=True, exist_ok=True)
    n = min(len(images), 8)
    grid = make_grid(torch.cat([teacher[:n], images[:n]]), nrow=n, padding=2, pad_value=128)
    grid = grid.repeat_interleave(2, 1).repeat_interleave(2, 2)
    Image.fromarray(grid.permute(1, 2, 0).numpy()).save(folder / "samples.png")
    kept = decision_map(report)
    np.save(folder / "decisions.npy", kept)
    (folder / "decisions.json").write_text(
        json.dumps(
            {
                "kept_fraction": kept.tolist(),
                "layers": report["layers"],
                "directives": report["directives"],
                "schedule": report["schedule"].to_dict(),
                "macs_per_step": report["macs_per_step"],
            },
            default=str,
        )
    )
    reporting.heatmap(
        kept,
        report["layers"],
        folder / "decisions.png",
        f"{label or report['method']} on {model}" if model else None,
        model=model,
        method=report["method"],
        config=report["config"],
        experiment=experiment,
        n_samples=len(images),
    )


# -- the experiment ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Outcome:
    stored: list[dict] = dataclasses.field(default_factory=list)  # rows written by this call
    resumed: list[str] = dataclasses.field(default_factory=list)  # run ids already in the store
    pending: list[str] = dataclasses.field(default_factory=list)  # side files of rows the store could not take
    skipped: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)  # (model, method, reason)
    artifacts: str | None = None  # the folder of the runs' artifact folders
    started: float = dataclasses.field(default_factory=time.time)  # when the call began (files newer are its own)

    @property
    def brackets(self) -> int:
        """Stored runs of the setting just above an off-budget one (measured for the interpolation)."""
        return sum(row.get("bracket") == "above" for row in self.stored)


def run_experiment(
    exp: Experiment,
    store: Store | None,
    *,
    force: bool = False,
    artifacts: str | Path | None = None,
    tracker=None,
    teacher_cache=None,
    progress: bool = True,
    shard: Shard | None = None,
) -> Outcome:
    """Run every (model, method, seed) of ``exp`` that ``store`` does not have (all of them with ``force``).

    Everything that can fail without sampling is checked first: the inputs, the metrics' weights, the
    artifacts folder, and every method set up on every model (its budget tuned, its schedule checked against
    the model); only a method that cannot run on a model family at all is skipped. A run another experiment
    already computed is reported by this one too, not recomputed. A row the store cannot take after sampling
    (locked, full disk) is kept next to it and imported by the next run (:func:`dsbench.store.keep_pending`).

    artifacts: folder of per-run artifact directories (default: ``artifacts/`` next to the store file).
    tracker: a :class:`dsbench.tracking.Tracker` (or None) mirroring each stored row.
    shard: this process's rank under ``accelerate launch`` (default: accelerate's state). Every rank draws
    its slice of the samples; only rank 0 needs ``store``, ``tracker`` and the teacher cache, and only it
    writes (the other ranks pass ``store=None`` and return an empty Outcome).
    """
    shard = shard or Shard()
    main = shard.is_main
    if main and store is None:
        raise ValueError("store: rank 0 needs the results store")
    check_inputs(exp)  # files the methods read (schedules, weights) exist: fail before any sampling
    check_searches(exp)
    if main:
        if artifacts is None:
            artifacts = (
                Path(tempfile.mkdtemp(prefix="dsbench-artifacts-"))
                if store.path == ":memory:"
                else Path(store.path).parent / "artifacts"
            )
        artifacts = Path(artifacts)
        check_writable(artifacts, "artifacts")
        imported = store.import_pending() if store.path != ":memory:" else 0
        if imported:
            log.info("imported %d run(s) kept in %s from an earlier run", imported, pending_dir(store.path))
    cache = (teacher_cache or TeacherCache()) if main else None
    entries = exp.method_entries()
    outcome = Outcome()
    todo: dict[str, list] = {}
    if main:  # rank 0 decides what is left to run; the other ranks follow its list
        for model in exp.models:
            for seed in exp.seeds:
                for index, entry in enumerate(entries):
                    rid = run_id(exp, model, entry, seed)
                    if not force and (store.member(exp.name, rid) or store.adopt(exp.name, rid)):
                        outcome.resumed.append(rid)
                    else:
                        todo.setdefault(model, []).append((seed, index, rid))
    todo = shard.broadcast(todo)
    progress = progress and main
    if main:
        outcome.artifacts = str(artifacts)
    if progress:
        quiet_libraries()
        count = sum(map(len, todo.values()))
        echo(
            f"{exp.name}: {count + len(outcome.resumed)} runs, {len(outcome.resumed)} already in the store, "
            f"{count} to measure"
        )
    with _redirect_logging(progress):
        _measure(exp, store, todo, entries, outcome, force, artifacts, tracker, cache, progress, shard)
    if tracker is not None and outcome.stored:
        tracker.summary(exp.name, store.frame(exp.name))
    for model, method, reason in outcome.skipped:
        log.warning("skipped %s on %s: %s", method, model, reason)
    return outcome


def _redirect_logging(progress: bool):
    """Log lines printed above the bars on a terminal (not through them); nothing changed elsewhere."""
    import contextlib

    if not (progress and interactive()):
        return contextlib.nullcontext()
    from tqdm.contrib.logging import logging_redirect_tqdm

    return logging_redirect_tqdm()


def _measure(exp, store, todo, entries, outcome, force, artifacts, tracker, cache, progress, shard) -> None:
    """Set every method up on every model, then measure the runs of ``todo``; rows into ``outcome``."""
    main = shard.is_main
    contexts, setups = {}, {}
    place = search_place(store.path) if main else None
    count = sum(len({index for _, index, _ in runs}) for runs in todo.values())
    with Progress(f"{exp.name} set-up", total=count, unit="method", enabled=progress and count > 0) as bar:
        for model, runs in todo.items():  # set every method up on every model before any evaluation sampling
            bar.phase(f"loading {model}")
            contexts[model] = ctx = load_model(exp, model, progress, shard.state.device)
            if main:  # the metrics' weights installed (or a one-line error) before any sampling
                metrics.prepare(exp.metrics, bundle=ctx.bundle)
            for index in sorted({index for _, index, _ in runs}):
                budget = _budget_ratio(exp, entries[index])
                bar.start(f"{model} {entries[index].name}" + (f" at budget {budget:g}" if budget is not None else ""))
                setups[model, index] = shard.broadcast(_setup(exp, ctx, entries[index], place) if main else None)
                bar.advance(1)
    bar = Progress(exp.name, total=sum(map(len, todo.values())), unit="run", enabled=progress)
    try:
        for model, runs in todo.items():
            ctx = contexts[model]
            teachers: dict[int, torch.Tensor] = {}
            for seed, index, rid in runs:
                entry, setup = entries[index], setups[model, index]
                bar.start(f"{model} {entry.name} seed {seed}" + (" (skipped)" if "skip" in setup else ""))
                if "skip" in setup:
                    if main and seed == exp.seeds[0]:
                        outcome.skipped.append((model, entry.name, setup["skip"]))
                    bar.advance(1)
                    continue
                if seed not in teachers:
                    teachers[seed] = _teacher(cache, ctx, model, seed, shard)
                row = _run_one(exp, ctx, model, entry, setup, seed, rid, teachers[seed], artifacts, bar, shard)
                if setup.get("above"):  # off budget: the setting just above it too, stored first (resume-safe)
                    above = _run_one(
                        exp,
                        ctx,
                        model,
                        entry,
                        {"tuned": setup["above"], "note": None},
                        seed,
                        bracket_id(rid),
                        teachers[seed],
                        artifacts,
                        bar,
                        shard,
                    )
                    if above is not None:
                        _store(store, {**above, "bracket": "above"}, force, outcome, tracker)
                bar.advance(1)
                if row is not None:
                    _store(store, row, force, outcome, tracker)
    finally:
        bar.close()


def _store(store: Store, row: dict, force: bool, outcome: Outcome, tracker) -> None:
    """Write a computed row; when the store cannot take it, keep it next to the store instead of losing it."""
    try:
        store.put(row, replace=force)
    except StoreError:
        raise
    except ValueError:  # another sweep worker stored this identity meanwhile: its row stands, and is ours too
        if not store.adopt(row["experiment"], row["run_id"]):
            raise
        outcome.resumed.append(row["run_id"])
        return
    except (sqlite3.Error, OSError) as err:
        kept = keep_pending(store.path, row, replace=force)
        outcome.pending.append(str(kept))
        log.warning(
            "the store %s could not take run %s (%s): kept in %s; the next run on this store imports it",
            store.path,
            row["label"],
            err,
            kept,
        )
        return
    outcome.stored.append(row)
    log.info(
        "stored %s %s: macs_ratio %.3f, speedup %.2f×", row["model"], row["label"], row["macs_ratio"], row["speedup"]
    )
    if tracker is not None:
        tracker.log_run(row)


def check_writable(folder: Path, field: str) -> None:
    """A folder the run will write into exists (or can be made) and takes a file: checked before sampling."""
    blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise ValueError(
            f"{field}: cannot write into {folder}: {blocker} is a file, not a folder; move it or "
            "pass another output folder"
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as err:
        raise ValueError(f"{field}: cannot write into {folder} ({err.strerror}); pass another output folder") from None


def _teacher(cache, ctx: ModelContext, model: str, seed: int, shard: Shard) -> torch.Tensor | None:
    """The uncached samples (on rank 0; None elsewhere): from the cache, else drawn sharded and cached."""
    sampler = dataclasses.replace(
        ctx.bundle.sampler, scheduler=ctx.sampler, steps=ctx.steps, guidance_scale=ctx.guidance
    )
    fields = {
        "model": model,
        "sampler": sampler,
        "steps": ctx.steps,
        "seed": seed,
        "conditions": ctx.conditions,
        **({"guidance_channels": ctx.guidance_channels} if ctx.guidance_channels is not None else {}),
    }
    desc = f"  {model} teacher samples"
    if shard.count == 1:
        return cache.get_or_create(fields, lambda: ctx.sample(ctx.conditions, seed, desc=desc)[0])
    cached = cache.get(fields) if shard.is_main else None
    if shard.broadcast(cached is not None):
        return cached
    images, _ = ctx.sample_sharded(seed, shard, desc=desc)
    return cache.get_or_create(fields, lambda: images) if shard.is_main else None


def budget_note(
    name: str, field: str | None, budget_ratio: float, ratio: float, tuning: dict | None = None, macs_full: float = 1.0
) -> str | None:
    """Why a run's MAC ratio is more than :data:`BUDGET_TOLERANCE` off the budget (None when it is not):
    no budget field, a field whose steps jump over the budget, or one whose range cannot reach it.
    ``tuning``: the result of :func:`tune`, whose evaluations show the nearest reachable ratios."""

    def shown(v) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    if abs(ratio / budget_ratio - 1) <= BUDGET_TOLERANCE:
        return None
    if field is None or tuning is None:
        return f"{name} has no budget field (its MACs are fixed by its config): it runs at {ratio:.3f} of full"
    reached = [(value, macs / macs_full) for value, macs in tuning["evaluations"]]
    below = max((r for r in reached if r[1] <= budget_ratio), key=lambda r: r[1])
    above = [r for r in reached if r[1] > budget_ratio]
    if not above:
        return (
            f"{field} cannot spend the budget: its most expensive accepted setting ({field}={shown(below[0])}) "
            f"reaches {below[1]:.3f} of full"
        )
    above = min(above, key=lambda r: r[1])
    why = f"{field} is an integer" if isinstance(below[0], int) else f"MACs move in steps as {field} changes"
    return (
        f"{why}: nearest reachable {below[1]:.3f} ({field}={shown(below[0])}) / {above[1]:.3f} "
        f"({field}={shown(above[0])}); the run takes the one within budget"
    )


def search_place(store_path: str) -> tuple[str | None, Path]:
    """(Optuna storage URL, folder) of the searched schedules (``ga``, ``random``): the sweeps' study database
    next to the store (``<store>-optuna.db``) and ``searches/`` beside it; an in-memory store searches in memory."""
    if store_path == ":memory:":
        return None, Path(tempfile.mkdtemp(prefix="dsbench-searches-"))
    path = Path(store_path)  # the folder as given: a relative store keeps its rows' schedule paths relative
    return f"sqlite:///{path.resolve().with_name(path.stem + '-optuna.db')}", path.parent / "searches"


def searched(name: str) -> str | None:
    """The search a method needs before it samples (``ga``, ``random``), or None."""
    return getattr(dsbench.methods.base.method_class(name), "searches", None) or None


def check_searches(exp: Experiment) -> None:
    """The search arms' settings an experiment cannot run with, as one-line errors before any work: no budget,
    a schedule given by hand, or a fitness set drawn with a seed the evaluation uses."""
    if exp.methods == "all":
        return  # defaults, and a method without what it needs is skipped at set-up
    for i, entry in enumerate(exp.methods):
        if searched(entry.name) is None:
            continue
        where = f"experiment {exp.name}: field 'methods[{i}]"
        if entry.budget is None and exp.budget is None:
            raise ValueError(
                f"{where}' ({entry.name}): searches a schedule under the run's MAC budget; give the experiment "
                "(or this entry) budget: {macs_ratio: R} with R in (0, 1]"
            )
        for model in exp.models:
            config = dsbench.methods.base.config(entry.name, **entry.params_for(model))
            if config.schedule is not None:
                raise ValueError(
                    f"{where}.params.schedule' (model {model}): {entry.name} writes its schedule by searching; leave "
                    "schedule unset (to run a schedule you have, use the diffsparse method)"
                )
            taken = sorted({*exp.seeds, exp.eval.seed})
            if config.fitness_seed in taken:
                raise ValueError(
                    f"{where}.params.fitness_seed' (model {model}): {config.fitness_seed} is a seed the evaluation "
                    f"draws with (seeds and eval.seed: {', '.join(map(str, taken))}); the search's fitness images "
                    "must not be the scored ones: take any other seed in [0, 4294967295]"
                )


def prepare(exp: Experiment, ctx: ModelContext, entry: MethodEntry, params: dict, place) -> dict:
    """The parameters a method gets from work before its runs ({} for most): the ``ga`` and ``random`` arms
    search a schedule under the entry's budget (resumable, reused when finished) and get it as ``schedule``."""
    kind = searched(entry.name)
    if kind is None:
        return {}
    if ctx.bundle.family not in dsbench.methods.base.families(entry.name):
        raise NotApplicable(
            f"{entry.name} searches on {', '.join(dsbench.methods.base.families(entry.name))} models, "
            f"not {ctx.bundle.family}"
        )
    budget = _budget_ratio(exp, entry)
    if budget is None:
        raise ValueError(f"{entry.name} searches a schedule under the run's MAC budget; the experiment sets none")
    config = dsbench.methods.base.config(entry.name, **params)
    model = ctx.bundle.name
    key = {
        "model": model,
        "sampler": ctx.sampler,
        "steps": ctx.steps,
        "guidance": ctx.guidance,
        "guidance_channels": ctx.guidance_channels,
        "macs_ratio": budget,
        "config": {k: v for k, v in config.model_dump().items() if k not in search.LIMIT_FIELDS},
        "code_version": code_version(),
    }
    study = f"{entry.name}-{model}-{hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]}"
    storage, folder = place
    bar = Progress(
        f"  search {entry.name} on {model}", total=config.evaluations, unit="evaluations", level=1, enabled=ctx.progress
    )
    stored = 0

    def step(value: float, best: float, replayed: bool) -> None:
        nonlocal stored
        stored += replayed
        bar.advance(1, f"best LPIPS {best:.4f}" + (f" ({stored} from the study)" if stored else ""))

    try:
        path, result, space = search.search_schedule(
            kind,
            config,
            ctx.bundle,
            steps=ctx.steps,
            macs_ratio=budget,
            draw=lambda conditions, seed, method: ctx.sample(conditions, seed, method)[0],
            build=lambda candidate: methods.build(entry.name, **params, schedule=candidate),
            storage=storage,
            study=study,
            folder=folder / study,
            callback=step,
        )
        bar.result(
            f"best LPIPS {result.fitness:.4f} at {result.macs / space.base_macs:.3f} of full MACs (budget {budget:g}); "
            f"{result.fresh} evaluated, {stored} from study {study} ({result.seconds:.0f} s of evaluations)"
        )
    except search.UnreachableBudget as err:
        raise BudgetUnreachable(str(err)) from None
    finally:
        bar.close()
    return {"schedule": str(path)}


def _setup(exp: Experiment, ctx: ModelContext, entry: MethodEntry, place: tuple[str | None, Path]) -> dict:
    """{"tuned": {field: value}, "note": budget note or None, "above": the setting just above an off budget or
    None}, or {"skip": reason} when the method cannot run on this model family at all (or, for ``methods:
    all``, needs a parameter it has no default for; or cannot reach one budget of a list). Any other
    failure — an unreachable budget, a schedule that does not fit the model — stops the run here, before
    sampling, as a ValueError naming model and method."""
    params = entry.params_for(ctx.bundle.name)
    budget = _budget_ratio(exp, entry)
    field = dsbench.methods.base.method_class(entry.name).budget_field if budget is not None else None
    tuned: dict = {}
    try:
        tuned = prepare(exp, ctx, entry, params, place)
        method = methods.build(entry.name, **params, **tuned)
    except BudgetUnreachable as err:  # a search arm's: a budget of a curve it cannot reach is a skip
        if exp.methods == "all" or entry._curve_point:
            return {"skip": f"budget {budget}: {err}"}
        raise ValueError(f"{entry.name} on {ctx.bundle.name}: {err}") from None
    except ValueError as err:
        if exp.methods == "all":
            return {"skip": f"{err} (methods: all runs each method with its defaults)"}
        if tuned or searched(entry.name) is None:
            raise
        raise ValueError(f"{entry.name} on {ctx.bundle.name}: {err}") from None
    except NotApplicable as err:
        return {"skip": str(err)}
    try:
        macs = ctx.macs_of(method)
        result = None
        if field is not None:
            result = tune(
                entry.name,
                params,
                field,
                budget * ctx.macs_full,
                ctx.macs_of,
                ctx.steps,
                progress=ctx.progress,
                full=ctx.macs_full,
            )
            tuned, macs = {**tuned, field: result["value"]}, result["macs"]
    except NotApplicable as err:
        return {"skip": str(err)}
    except BudgetUnreachable as err:
        if entry._curve_point:  # one budget of a curve this method cannot reach: the curve goes without it
            return {"skip": f"budget {budget}: {err}"}
        raise ValueError(f"{entry.name} on {ctx.bundle.name}: {err}") from None
    except (ValueError, TypeError) as err:
        raise ValueError(f"{entry.name} on {ctx.bundle.name}: {err}") from None
    note, above = None, None
    if budget is not None and entry.name != "full":
        note = budget_note(entry.name, field, budget, macs / ctx.macs_full, result, ctx.macs_full)
        if note:
            log.info("%s on %s is off budget: %s", entry.name, ctx.bundle.name, note)
        over = [(v, m) for v, m in (result or {}).get("evaluations", []) if m > budget * ctx.macs_full]
        if note and over:  # the cheapest setting above the budget: reports interpolate between the two
            above = {field: min(over, key=lambda e: e[1])[0]}
    return {"tuned": tuned, "note": note, "above": above}


def bracket_id(rid: str) -> str:
    """Identity of the run that brackets run ``rid`` from above its budget."""
    return hashlib.sha256(f"{rid}:above".encode()).hexdigest()[:24]


def _run_one(
    exp: Experiment,
    ctx: ModelContext,
    model: str,
    entry: MethodEntry,
    setup: dict,
    seed: int,
    rid: str,
    teacher: torch.Tensor | None,
    artifacts: Path | None,
    bar,
    shard: Shard,
) -> dict | None:
    """One measured run with the method as set up by :func:`_setup`: its row on rank 0, None on the others."""
    params = entry.params_for(model)
    tuned = setup["tuned"]
    method = methods.build(entry.name, **params, **tuned)

    bar.phase(f"{model} {entry.name}: samples")
    images, report = ctx.sample_sharded(seed, shard, method, desc=f"  {model} {entry.name} samples")
    if not shard.is_main:
        return None
    bar.phase(f"{model} {entry.name}: metrics")
    scores = metrics.compute(
        images,
        teacher=teacher,
        references=ctx.references,
        conditions=ctx.conditions,
        bundle=ctx.bundle,
        metrics=exp.metrics,
        per_sample=True,
    )
    bar.phase(f"{model} {entry.name}: latency")
    lat = exp.latency
    timed = [ctx.conditions[i % len(ctx.conditions)] for i in range(lat.batch)]
    full = methods.build("full")
    times = cost.interleaved(
        {"method": lambda: ctx.sample(timed, seed, method), "full": lambda: ctx.sample(timed, seed, full)},
        repeats=lat.repeats,
        warmup=lat.warmup,
    )
    memory = cost.peak_memory(lambda: ctx.sample(timed, seed, method))
    macs = cost.macs(report)
    label = run_label(entry.name, report["config"], params, seed if len(exp.seeds) > 1 else None)
    folder = artifacts / exp.name / f"{model}__{label}__{rid[:8]}"
    try:
        save_artifacts(folder, images, report, teacher, model=model, label=label, experiment=exp.name)
        artifacts_note = None
    except OSError as err:  # the numbers are computed: keep them, say what is missing
        log.warning(
            "artifacts of %s %s could not be written to %s (%s); the row is stored without them",
            model,
            label,
            folder,
            err,
        )
        folder, artifacts_note = None, f"not written: {err}"
    return {
        "run_id": rid,
        "experiment": exp.name,
        "model": model,
        "family": ctx.bundle.family,
        "method": entry.name,
        "label": label,
        "params": params,
        "config": report["config"],
        "tuned": tuned,
        "budget_macs_ratio": _budget_ratio(exp, entry),
        "budget_note": setup["note"],
        "sampler": ctx.sampler,
        "steps": ctx.steps,
        "guidance": ctx.guidance,
        "eval_set": exp.eval.prompts or exp.eval.set,
        "n_samples": len(images),
        "seed": seed,
        "code_version": code_version(),
        "macs": macs["macs"],
        "macs_cfg_counted": macs["macs_cfg_counted"],
        "macs_full": ctx.macs_full,
        "macs_ratio": macs["macs"] / ctx.macs_full,
        "macs_attention": macs["macs_attention"],
        "full_steps": report["full_steps"],
        "latency_s": times["method"]["latency_median"],
        "latency_full_s": times["full"]["latency_median"],
        "speedup": times["full"]["latency_median"] / times["method"]["latency_median"],
        "latency_batch": lat.batch,
        "latency_repeats": lat.repeats,
        # the interleaved timings themselves, repeat by repeat: reports resample them for the speedup's interval
        "latency_seconds": times["method"]["seconds"],
        "latency_full_seconds": times["full"]["seconds"],
        "peak_memory_mb": memory["peak_memory_bytes"] / 2**20,
        "artifacts": str(folder) if folder else None,
        "artifacts_note": artifacts_note,
        "machine": machine.describe(),
        "report_metrics": list(ctx.bundle.report_metrics),
        "created_at": time.time(),
        **scores,
    }
