"""Experiment files (``experiments/*.yaml``): the schema, and loading that fails before any work.

An experiment names models, the sampler settings, the evaluation set, seeds, metrics and the methods
(with parameters, and per-model overrides of them), and optionally a compute budget::

    name: quickstart
    models: [mnist-dit, shapes-pixart]
    eval: {size: 16, references: 256}
    seeds: [0]
    metrics: [lpips, psnr, ssim, fid, kid, alignment]
    budget: {macs_ratio: 0.5}          # tune each method's budget_field until its MACs match
    methods:
      - name: full
      - name: toca
        params: {interval: 3}
        models: {shapes-pixart: {bonus_grid: 2}}   # per-model overrides of params
      - name: duca
        budget: {macs_ratio: 0.41}     # this entry's own budget (one file, several budgets)
    # or `methods: all`: every registered method with its defaults (those that cannot run are skipped)

Every error names the file, the field and the allowed values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic

from dsbench import methods
from dsbench.methods.base import config as method_config
from dsbench.methods.base import method_class
from dsbench.metrics import NEEDS
from dsbench.models import zoo
from dsbench.models.embedded import FAMILIES
from dsbench.models.hub import HUB_MODELS
from dsbench.validation import StrictModel, is_file, read_yaml, schema_errors, show

# sampler name → (diffusers scheduler class, from_config overrides); null keeps the model's own sampler
SAMPLERS = {
    "ddim-linspace": ("DDIMScheduler", {"timestep_spacing": "linspace"}),
    "ddim": ("DDIMScheduler", {}),
    "dpm-solver++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "euler": ("EulerDiscreteScheduler", {}),
}

# Sane ranges: a value past them is a typo (1e11 samples, a 10⁹-step sampler) that would otherwise fail deep
# inside numpy or torch (MemoryError, overflow) or run for ever. The paper's largest set is DiT's FID-50K.
MAX_SAMPLES = 100_000  # eval.size, eval.references
MAX_SEED = 2**32 - 1  # numpy and torch take every seed in [0, 2³² − 1]
MAX_SEEDS = 100  # runs per (model, method)
MAX_STEPS = 1000  # the training timesteps of every model in the zoo
MAX_GUIDANCE = 100.0
DIT_LATENT_CHANNELS = 4  # guidance_channels guides at most these
MAX_BATCH, MAX_REPEATS, MAX_WARMUP = 1024, 1000, 100
# distribution metrics → the fewest samples (and reference images) they are defined for: FID/KID need a
# covariance (2), precision/recall the 3 nearest neighbours of a sample (4)
MIN_SAMPLES = {"fid": 2, "kid": 2, "prc": 4, "isc": 2}

Seed = Annotated[int, pydantic.Field(ge=0, le=MAX_SEED)]


class _Strict(StrictModel):
    """Unknown fields are errors; a bool or a string is never taken for a number (dsbench.validation)."""


class EvalSet(_Strict):
    set: Literal["default", "prompts"] = pydantic.Field(
        "default", description="default (the model's evaluation conditions) or prompts (a prompt file)"
    )
    size: int = pydantic.Field(
        16, ge=1, le=MAX_SAMPLES, description=f"number of evaluation samples per run, in [1, {MAX_SAMPLES}]"
    )
    prompts: str | None = pydantic.Field(None, description="with set: prompts, the prompt file (one per line)")
    references: int | None = pydantic.Field(
        None,
        ge=2,
        le=MAX_SAMPLES,
        description=f"real reference images for FID/KID/PRC, in [2, {MAX_SAMPLES}] (default: size)",
    )
    seed: int = pydantic.Field(
        0, ge=0, le=MAX_SEED, description=f"seed of the condition draw (class ids / captions), in [0, {MAX_SEED}]"
    )

    @pydantic.model_validator(mode="after")
    def _prompts_given(self):
        if self.set == "prompts" and not self.prompts:
            raise ValueError("set: prompts needs `prompts: <file>`")
        if self.set != "prompts" and self.prompts:
            raise ValueError("`prompts` is only used with set: prompts")
        return self


class Budget(_Strict):
    macs_ratio: float | list[float] = pydantic.Field(
        ...,
        description="target MACs / MACs of full, in (0, 1]; a list runs every method with a budget field at "
        "each (a quality–compute curve)",
    )

    @pydantic.field_validator("macs_ratio")
    @classmethod
    def _in_range(cls, value):
        values = value if isinstance(value, list) else [value]
        if not values:
            raise ValueError("give at least one MAC ratio")
        if any(not 0.0 < v <= 1.0 for v in values):
            raise ValueError(f"every MAC ratio must be in (0, 1], got {value}")
        if len(set(values)) != len(values):
            raise ValueError(f"MAC ratios repeat: {value}")
        return sorted(values) if isinstance(value, list) else value

    def ratios(self) -> list[float]:
        return self.macs_ratio if isinstance(self.macs_ratio, list) else [self.macs_ratio]


class Latency(_Strict):
    batch: int = pydantic.Field(
        1, ge=1, le=MAX_BATCH, description=f"images per timed sampling call, in [1, {MAX_BATCH}]"
    )
    repeats: int = pydantic.Field(
        5, ge=1, le=MAX_REPEATS, description=f"timed repeats per arm (median reported), in [1, {MAX_REPEATS}]"
    )
    warmup: int = pydantic.Field(
        1, ge=0, le=MAX_WARMUP, description=f"untimed warm-up calls per arm, in [0, {MAX_WARMUP}]"
    )


class MethodEntry(_Strict):
    name: str = pydantic.Field(..., min_length=1, description="a registered method")
    params: dict[str, Any] = pydantic.Field(default_factory=dict, description="method parameters")
    models: dict[str, dict[str, Any]] = pydantic.Field(
        default_factory=dict, description="per-model overrides of params: {model: {param: value}}"
    )
    budget: Budget | None = pydantic.Field(
        None, description="this entry's compute budget, instead of the experiment's (several budgets in one file)"
    )

    _curve_point: bool = pydantic.PrivateAttr(False)

    def params_for(self, model: str) -> dict[str, Any]:
        return {**self.params, **self.models.get(model, {})}


class Experiment(_Strict):
    name: str = pydantic.Field(
        ...,
        min_length=1,
        max_length=200,
        description="experiment name (default: the file name): a folder name, no '/', no "
        "control characters, not '.' or '..'",
    )
    models: list[str] = pydantic.Field(..., min_length=1, description="model names from the zoo")
    sampler: str | None = pydantic.Field(None, description="scheduler override (default: the model's)")
    steps: int | None = pydantic.Field(
        None, ge=1, le=MAX_STEPS, description=f"sampler steps in [1, {MAX_STEPS}] (default: the model's)"
    )
    guidance: float | None = pydantic.Field(
        None, ge=0.0, le=MAX_GUIDANCE, description=f"CFG scale in [0, {MAX_GUIDANCE:g}] (default: the model's)"
    )
    guidance_channels: int | None = pydantic.Field(
        None,
        ge=1,
        le=DIT_LATENT_CHANNELS,
        description=f"DiT models only: guide the first N latent channels, N in [1, {DIT_LATENT_CHANNELS}] (3: the "
        "original DiT sampler), or null (the pipeline's default: all)",
    )
    eval: EvalSet = pydantic.Field(default_factory=EvalSet)
    seeds: list[Seed] = pydantic.Field(
        [0],
        min_length=1,
        max_length=MAX_SEEDS,
        description=f"sampling seeds, each in [0, {MAX_SEED}], at most {MAX_SEEDS}, no repeats; one run per seed",
    )
    metrics: list[str] = pydantic.Field(["lpips", "psnr", "ssim"], description="metrics of dsbench.metrics")
    budget: Budget | None = None
    latency: Latency = pydantic.Field(default_factory=Latency)
    methods: list[MethodEntry] | Literal["all"] = pydantic.Field(
        ..., min_length=1, description="method entries, or `all` (every registered method with its defaults)"
    )

    @pydantic.field_validator("name")
    @classmethod
    def _folder_name(cls, name: str) -> str:
        """The name is a folder under the artifacts directory and a key in the store: no path tricks."""
        if name in (".", "..") or "/" in name or "\\" in name or any(ord(ch) < 32 for ch in name):
            raise ValueError("must be a folder name: no '/' or '\\', no control characters, not '.' or '..'")
        return name

    def budget_for(self, entry: MethodEntry) -> Budget | None:
        """The one budget ``entry`` runs at: its own, else the experiment's; None where that is a list (the
        entries of :meth:`method_entries` carry one ratio each; a method without a budget field runs once)."""
        budget = entry.budget or self.budget
        return None if budget is None or isinstance(budget.macs_ratio, list) else budget

    def method_entries(self) -> list[MethodEntry]:
        """The entries to run: ``all`` expands to every registered method with its defaults."""
        entries = (
            [MethodEntry(name=name) for name in methods.available()] if self.methods == "all" else list(self.methods)
        )
        out = []
        for entry in entries:  # a list of budgets: one entry per budget for a method with a budget field or a search
            budget = entry.budget or self.budget
            if budget is None or not isinstance(budget.macs_ratio, list):
                out.append(entry)
            elif method_class(entry.name).budget_field is None and not getattr(
                method_class(entry.name), "searches", None
            ):
                out.append(entry.model_copy(update={"budget": None}))
            else:
                for ratio in budget.ratios():
                    point = entry.model_copy(update={"budget": Budget(macs_ratio=ratio)})
                    point._curve_point = True  # one point of a curve: a budget it cannot reach is a skip
                    out.append(point)
        return out


def _allowed_fields(loc: tuple) -> list[str]:
    """The fields allowed where an unknown field ``loc`` was found (top level or one nested section)."""
    sections = {"eval": EvalSet, "budget": Budget, "latency": Latency, "methods": MethodEntry}
    parent = next((p for p in reversed(loc[:-1]) if p in sections), None)  # methods[i].budget: Budget
    return list(sections.get(parent, Experiment).model_fields)


def _is_branch_label(part) -> bool:
    return part == "list[MethodEntry]" or str(part).startswith("literal[")


def _description(loc: tuple) -> str | None:
    """The description of the field at ``loc`` (what it allows), walking into the nested sections."""
    sections = {"eval": EvalSet, "budget": Budget, "latency": Latency, "methods": MethodEntry}
    model, info = Experiment, None
    for part in loc:
        if not isinstance(part, str) or _is_branch_label(part):
            continue
        info = model.model_fields.get(part) if model is not None else None
        if info is None:
            return None
        model = sections.get(part) if model is Experiment else None
    return info.description if info is not None else None


def _explain(e: dict, where: str) -> str | None:
    loc = e["loc"]
    if loc and loc[0] == "methods" and len(loc) > 1 and str(loc[1]).startswith("literal["):
        return ""  # the `all` alternative of `methods`; the list alternative's error says more
    if loc and loc[0] == "methods" and e["type"] == "list_type":
        return (
            f"field 'methods': must be a list of method entries ({', '.join(MethodEntry.model_fields)}) "
            f"or `all`; got {show(e.get('input'))}"
        )
    if e["type"] != "extra_forbidden" and (allowed := _description(loc)):
        return f"field {where!r}: {e['msg']} (got {show(e.get('input'))}); allowed: {allowed}"
    return None


def _schema_errors(source: str, err: pydantic.ValidationError) -> str:
    return schema_errors(source, err, _allowed_fields, branch_labels=_is_branch_label, explain=_explain)


def validate(exp: Experiment, source: str = "<experiment>") -> None:
    """Check names against the registries and build every method config; ValueError naming what is wrong."""
    models = zoo.available()
    for i, model in enumerate(exp.models):
        if model not in models:
            raise ValueError(
                f"{source}: field 'models[{i}]': unknown model {show(model)}; allowed: {', '.join(models)}"
            )
    if len(set(exp.models)) != len(exp.models):
        raise ValueError(f"{source}: field 'models' lists a model twice: {show(exp.models)}")
    if exp.guidance_channels is not None:
        for model in exp.models:
            if model_family(model) != "dit":
                raise ValueError(
                    f"{source}: field 'guidance_channels': model {model} is not a DiT model; only DiT "
                    "models take it (the original DiT sampler's guidance on some latent channels); "
                    "remove the field or the model"
                )
    if exp.sampler is not None and exp.sampler not in SAMPLERS:
        raise ValueError(
            f"{source}: field 'sampler': unknown sampler {show(exp.sampler)}; "
            f"allowed: {', '.join(SAMPLERS)} (or omit it for the model's own)"
        )
    for i, metric in enumerate(exp.metrics):
        if metric not in NEEDS:
            raise ValueError(
                f"{source}: field 'metrics[{i}]': unknown metric {show(metric)}; allowed: {', '.join(NEEDS)}"
            )
        if metric in exp.metrics[:i]:
            raise ValueError(f"{source}: field 'metrics[{i}]': {metric} is listed twice")
        need = MIN_SAMPLES.get(metric, 1)
        if exp.eval.size < need:
            raise ValueError(
                f"{source}: field 'eval.size': {exp.eval.size} samples are too few for metric {metric} "
                f"(it needs >= {need}); raise eval.size or remove {metric} from 'metrics'"
            )
        if metric in NEEDS and "references" in NEEDS[metric] and (exp.eval.references or exp.eval.size) < need:
            raise ValueError(
                f"{source}: field 'eval.references': {exp.eval.references} reference images are too "
                f"few for metric {metric} (it needs >= {need})"
            )
    for model in exp.models:  # what a metric needs of a model, checked before any sampling
        for i, metric in enumerate(exp.metrics):
            reason = metric_incompatibility(metric, model)
            if reason:
                raise ValueError(
                    f"{source}: field 'metrics[{i}]': {metric} cannot run on model {model}: {reason}; "
                    f"allowed for {model}: {', '.join(metrics_for(model))}"
                )
        if "vbench" in exp.metrics and len(exp.metrics) > 1:
            raise ValueError(
                f"{source}: field 'metrics': vbench scores videos and is computed alone; "
                "give `metrics: [vbench]` (image metrics in another experiment)"
            )
        if exp.eval.set == "prompts" and model_family(model) == "dit":
            raise ValueError(
                f"{source}: field 'eval.set': prompts are text conditions; model {model} is class-conditional "
                "(DiT); allowed for it: default"
            )
    for i, seed in enumerate(exp.seeds):
        if seed in exp.seeds[:i]:
            raise ValueError(
                f"{source}: field 'seeds[{i}]': seed {seed} is listed twice (one run per seed); remove the repeat"
            )
    if exp.methods == "all":
        return  # defaults only; a method that cannot run on a model is skipped at run time with its reason
    names = methods.available()
    seen: dict[str, int] = {}
    for i, entry in enumerate(exp.methods):
        key = entry.model_dump_json()
        if key in seen:  # the same run twice: one identity, one row
            raise ValueError(
                f"{source}: field 'methods[{i}]' repeats methods[{seen[key]}] ({entry.name} with the "
                "same params); give it different params or remove it"
            )
        seen[key] = i
        where = f"{source}: field 'methods[{i}]"
        if entry.name not in names:
            raise ValueError(f"{where}.name': unknown method {show(entry.name)}; allowed: {', '.join(names)}")
        for model in entry.models:
            if model not in exp.models:
                raise ValueError(
                    f"{where}.models': override for {show(model)}, which is not one of the experiment's "
                    f"models; allowed: {', '.join(exp.models)}"
                )
        budget = entry.budget or exp.budget
        tuned = method_class(entry.name).budget_field if budget is not None else None
        for model in exp.models:
            if tuned is not None and tuned in entry.params_for(model):
                raise ValueError(
                    f"{where}.params': {entry.name}.{tuned} is tuned to meet the budget "
                    f"(budget.macs_ratio = {budget.macs_ratio}); remove it or remove the budget"
                )
            try:
                method_config(entry.name, **entry.params_for(model))
            except ValueError as err:
                raise ValueError(f"{where}.{_params_field(entry, model)}' (model {model}): {err}") from None


def model_family(model: str) -> str | None:
    """A zoo model's family without loading it (None for an embedded model not in ``FAMILIES``)."""
    return HUB_MODELS[model][2] if model in HUB_MODELS else FAMILIES.get(model)


# metrics → why a model cannot give them what they need (the zoo's bundles, known without loading a model)
TEXT_METRICS = ("clip", "image_reward")  # text prompts as conditions
VIDEO_METRICS = ("vbench",)  # videos


def metric_incompatibility(metric: str, model: str) -> str | None:
    """Why ``metric`` cannot be computed on ``model`` (None when it can): text metrics need text conditions,
    vbench needs videos, distribution metrics real reference images and ``alignment`` the model's alignment
    hook (the embedded models provide both; the hub models neither)."""
    family, embedded = model_family(model), model in zoo.available("embedded")
    if metric in TEXT_METRICS + VIDEO_METRICS and family == "dit":
        return f"it needs text prompts as conditions and {model} is class-conditional (DiT)"
    if metric in VIDEO_METRICS and family != "wan":
        return f"it scores videos and {model} generates images"
    if metric not in VIDEO_METRICS and family == "wan":
        return f"{model} generates videos, which only vbench scores"
    if "references" in NEEDS.get(metric, ()) and not embedded:
        return f"it needs real reference images, which {model} does not provide here (the embedded models do)"
    if metric == "alignment" and not embedded:
        return f"it needs the model's alignment hook (a classifier), which {model} does not have"
    return None


def metrics_for(model: str) -> list[str]:
    """The metrics ``model`` can be evaluated with."""
    return [m for m in NEEDS if metric_incompatibility(m, model) is None]


def _params_field(entry: MethodEntry, model: str) -> str:
    return "params" if model not in entry.models else f"models.{model}"


# file-valued method parameters → the command that writes the file
TRAIN_COMMANDS = {
    ("diffsparse", "schedule"): "python -m dsbench.training.diffsparse --model {model} --out {folder}` "
    "(or list it in a training file, experiments/train_*.yaml, and run "
    "`dsbench train diffsparse FILE"
}


def check_inputs(exp: Experiment) -> None:
    """Build every method as it will run, and check the files the run reads: the prompt set, the learned
    schedules (which must exist and fit). Validation does not read them, so an experiment for models trained
    elsewhere (the paper tables) validates here; the runner calls this before any sampling. ValueError naming
    the field and the command that writes a missing file."""
    if exp.eval.set == "prompts" and not is_file(exp.eval.prompts):
        raise ValueError(
            f"experiment {exp.name}: field 'eval.prompts': {exp.eval.prompts} does not exist (a prompt "
            "set, one prompt per line; the experiment file's comments say where it comes from)"
        )
    if exp.methods == "all":
        return  # defaults only: a method that cannot run on a model is skipped at run time with its reason
    for i, entry in enumerate(exp.methods):
        for model in exp.models:
            params = entry.params_for(model)
            where = f"experiment {exp.name}: field 'methods[{i}].{_params_field(entry, model)}"
            for (name, field_name), command in TRAIN_COMMANDS.items():
                path = params.get(field_name)
                if entry.name == name and isinstance(path, str) and not is_file(path):
                    train = command.format(model=model, folder=Path(path).parent)
                    raise ValueError(
                        f"{where}.{field_name}' (model {model}): {path} does not exist; make it first "
                        f"with `{train}` (and the options of this variant; see the experiment file)"
                    )
            try:
                method = methods.build(entry.name, **params)
            except ValueError as err:
                raise ValueError(f"{where}' (model {model}): {err}") from None
            learned = getattr(method, "learned", None)  # a DiffSparse schedule is tied to its step count
            if exp.steps is not None and learned is not None and learned.T != exp.steps:
                raise ValueError(
                    f"{where}.schedule' (model {model}): {learned.path} was trained for T={learned.T} "
                    f"steps; this experiment samples steps = {exp.steps}. Use a schedule trained for "
                    f"{exp.steps} steps or set steps: {learned.T}"
                )


def parse(data: Any, source: str = "<experiment>", default_name: str | None = None) -> Experiment:
    """An Experiment from already-parsed YAML ``data``; ValueError naming ``source``, field and allowed values."""
    if not isinstance(data, dict):
        raise ValueError(
            f"{source}: an experiment file must be a mapping of fields, got {type(data).__name__}; "
            f"allowed fields: {', '.join(Experiment.model_fields)}"
        )
    data = dict(data)
    for key in data:
        if not isinstance(key, str):  # YAML `1: 2` or `null: x`
            raise ValueError(f"{source}: unknown field {key!r}; allowed fields: {', '.join(Experiment.model_fields)}")
    if "model" in data:  # `model: x` is shorthand for `models: [x]`
        if "models" in data:
            raise ValueError(f"{source}: give either field 'model' or field 'models', not both")
        data["models"] = [data.pop("model")]
    if default_name and "name" not in data:
        data["name"] = default_name
    try:
        exp = Experiment.model_validate(data)  # not **data: a YAML key may be a number
    except pydantic.ValidationError as err:
        raise ValueError(_schema_errors(source, err)) from None
    validate(exp, source)
    return exp


def load(path: str | Path) -> Experiment:
    """Read and validate an experiment file (its name defaults to the file's stem)."""
    path = Path(path)
    return parse(read_yaml(path, "experiment"), str(path), default_name=path.stem)
