"""Property-based fuzzing of everything a user writes: experiment files, schedule files, method parameters.

The property: a bad input is refused with a ValueError (or TypeError) whose message is one line, before any
work; never a KeyError, AttributeError, IndexError, MemoryError or other traceback. What loads must also be
internally consistent. Then explicit regression tests for each bad input a probe found.
"""

from __future__ import annotations

import copy
import json
import math
import re
import typing
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dsbench import experiment, methods
from dsbench.core import Decision, Kind, NotApplicable, RunInfo
from dsbench.methods.base import method_class
from dsbench.methods.diffsparse.schedule import load_schedule

ROOT = Path(__file__).resolve().parent.parent
SCHEDULE = ROOT / "results" / "diffsparse" / "mnist-dit" / "schedule.json"  # a valid exported schedule
# deterministic (the same examples on every run, no example database written into the checkout) and bounded:
# the whole file runs in well under 30 s on one core
FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

# -- values a user may write -------------------------------------------------------------------------------
WORDS = [
    "3",
    "0.5",
    "1e11",
    "yes",
    "all",
    "full",
    "attention",
    "norm",
    "s1",
    "B",
    "uniform",
    "mnist-dit",
    "shapes-pixart",
    "toca",
    "fora",
    "lpips",
    "fid",
    "prc",
    "prompts",
    "default",
    "ddim",
    "",
    " ",
    "..",
    "a/b",
    "x\ny",
    str(SCHEDULE),
]
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 70),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 1, 2, 10**11, 2**32, 2**63]),
    st.floats(-2.0, 2.0),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e11, -0.0, 0.25]),
    st.sampled_from(WORDS),
    st.text(st.characters(codec="utf-8"), max_size=12),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.one_of(st.sampled_from(WORDS), st.text(max_size=6)), inner, max_size=3)
    ),
    max_leaves=8,
)


def refused_cleanly(err: BaseException) -> None:
    """A refusal the CLI can print as `dsbench CMD: error: ...`: ValueError/TypeError, one non-empty line."""
    assert type(err) is not KeyError and isinstance(err, (ValueError, TypeError)), repr(err)
    message = str(err)
    assert message.strip() and "\n" not in message, repr(message)


# -- (i) experiment files ----------------------------------------------------------------------------------
BASE_EXPERIMENT = {
    "name": "fuzz",
    "models": ["mnist-dit"],
    "steps": 20,
    "eval": {"size": 4, "references": 8},
    "seeds": [0, 1],
    "metrics": ["lpips", "fid"],
    "latency": {"batch": 1, "repeats": 1, "warmup": 0},
    "methods": [
        {"name": "toca", "params": {"interval": 3}},
        {"name": "diffsparse", "params": {"schedule": str(SCHEDULE)}},
    ],
}
EXPERIMENT_PATHS = [
    ("name",),
    ("models",),
    ("models", 0),
    ("model",),
    ("sampler",),
    ("steps",),
    ("guidance",),
    ("eval",),
    ("eval", "size"),
    ("eval", "references"),
    ("eval", "seed"),
    ("eval", "set"),
    ("eval", "prompts"),
    ("seeds",),
    ("seeds", 0),
    ("metrics",),
    ("metrics", 1),
    ("budget",),
    ("budget", "macs_ratio"),
    ("latency",),
    ("latency", "batch"),
    ("latency", "repeats"),
    ("latency", "warmup"),
    ("methods",),
    ("methods", 0),
    ("methods", 0, "name"),
    ("methods", 0, "params"),
    ("methods", 0, "params", "interval"),
    ("methods", 0, "params", "ratio"),
    ("methods", 0, "models"),
    ("methods", 0, "budget"),
    ("methods", 1, "params", "schedule"),
    ("methods", 1, "params", "importance"),
    ("unknown",),
]


def mutate(data, path: tuple, value, delete: bool):
    """``data`` with the field at ``path`` set to ``value`` (or deleted); parents are created as dicts."""
    node = data
    for part in path[:-1]:
        if isinstance(node, dict):
            node = node.setdefault(part, {})
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            return data
    last = path[-1]
    if isinstance(node, dict):
        if delete:
            node.pop(last, None)
        else:
            node[last] = value
    elif isinstance(node, list) and isinstance(last, int) and last < len(node):
        if delete:
            del node[last]
        else:
            node[last] = value
    return data


MUTATIONS = st.lists(st.tuples(st.sampled_from(EXPERIMENT_PATHS), VALUES, st.booleans()), min_size=1, max_size=3)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def load_experiment(path: Path) -> None:
    """What `dsbench run` does before any sampling: load (schema, names, method configs), then check inputs."""
    try:
        exp = experiment.load(path)
        experiment.check_inputs(exp)
    except (ValueError, TypeError) as err:
        refused_cleanly(err)
        return
    # what loads is what the schema promises
    assert 1 <= exp.eval.size <= experiment.MAX_SAMPLES and len(set(exp.seeds)) == len(exp.seeds)
    assert all(type(seed) is int and 0 <= seed <= experiment.MAX_SEED for seed in exp.seeds)
    assert exp.steps is None or type(exp.steps) is int and 1 <= exp.steps <= experiment.MAX_STEPS


@FUZZ
@given(mutations=MUTATIONS)
def test_fuzz_experiment_dicts(folder, mutations):
    data = copy.deepcopy(BASE_EXPERIMENT)
    for path, value, delete in mutations:
        data = mutate(data, path, value, delete)
    path = folder / "fuzz.yaml"
    try:
        path.write_text(yaml.safe_dump(data, allow_unicode=True))
    except yaml.YAMLError:  # not representable as YAML: nothing a user could write
        return
    load_experiment(path)


@FUZZ
@given(
    text=st.one_of(
        st.text(st.characters(codec="utf-8"), max_size=200),
        st.builds(
            lambda head, tail: head + tail,
            st.sampled_from(
                [
                    "models: [mnist-dit]\nmethods: all\n",
                    "name: x\n",
                    "- a\n",
                    "eval: {size: ",
                    "models: &a [*a]\n",
                    "{1: 2}\n",
                ]
            ),
            st.text(st.sampled_from("abc:[]{}-,#&*!|>'\"\n 0123456789.e"), max_size=60),
        ),
    )
)
def test_fuzz_experiment_yaml_text(folder, text):
    path = folder / "text.yaml"
    path.write_text(text, encoding="utf-8")
    load_experiment(path)


def test_baseline_experiment_loads(folder):
    path = folder / "base.yaml"
    path.write_text(yaml.safe_dump(BASE_EXPERIMENT))
    exp = experiment.load(path)
    experiment.check_inputs(exp)
    assert exp.seeds == [0, 1] and exp.eval.references == 8


# -- (ii) schedule files -----------------------------------------------------------------------------------
VALID_SCHEDULE = json.loads(SCHEDULE.read_text())
T, L = VALID_SCHEDULE["T"], len(VALID_SCHEDULE["layers"])
SCHEDULE_PATHS = st.one_of(
    st.sampled_from(
        [
            ("T",),
            ("layers",),
            ("meta",),
            ("codes",),
            ("k",),
            ("directives",),
            ("meta", "K"),
            ("meta", "T"),
            ("meta", "L"),
            ("meta", "format"),
            ("meta", "levels"),
            ("meta", "family"),
            ("meta", "mode"),
            ("meta", "cell_layers"),
            ("meta", "config"),
            ("meta", "num_levels"),
            ("meta", "config", "importance"),
            ("meta", "config", "drop"),
            ("meta", "n_tokens"),
            ("meta", "budget_ratio"),
            ("meta", "tables"),
        ]
    ),
    st.tuples(st.just("meta"), st.just("levels"), st.integers(0, T - 1)),
    st.tuples(st.just("meta"), st.just("levels"), st.integers(0, T - 1), st.integers(0, L - 1)),
    st.tuples(st.just("layers"), st.integers(0, L - 1)),
    st.tuples(st.just("meta"), st.just("cell_layers"), st.integers(0, L - 1)),
)
LEVEL_VALUES = st.one_of(VALUES, st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0, 0.3, 1.25, -0.25, 4, 0]))


@FUZZ
@given(mutations=st.lists(st.tuples(SCHEDULE_PATHS, LEVEL_VALUES, st.booleans()), min_size=1, max_size=3))
def test_fuzz_schedule_files(folder, mutations):
    body = copy.deepcopy(VALID_SCHEDULE)
    for path, value, delete in mutations:
        body = mutate(body, path, value, delete)
    path = folder / "schedule.json"
    path.write_text(json.dumps(body))
    try:
        learned = load_schedule(path)
    except (ValueError, TypeError) as err:
        refused_cleanly(err)
        assert str(path) in str(err)
        return
    # what loads runs: a T × L grid of levels 0..K, every layer computed at step 0, a decision for every cell
    assert type(learned.K) is int and learned.K >= 1 and learned.levels.shape == (learned.T, len(learned.layers))
    assert learned.levels.min() >= 0 and learned.levels.max() <= learned.K and (learned.levels[0] == learned.K).all()
    for i in range(learned.T):
        for ell in range(len(learned.layers)):
            decision = learned.decision(i, ell, 64)
            assert isinstance(decision, Decision) and (i > 0 or decision.kind is Kind.FULL)
    learned.check_run(learned.T, list(learned.layers))


@FUZZ
@given(
    text=st.one_of(
        st.text(max_size=80),
        st.sampled_from(["null", "[]", '{"meta": null}', '{"meta": {}}', "1e999", '{"T": 1e999}', "[" * 5000]),
    )
)
def test_fuzz_schedule_text(folder, text):
    path = folder / "text.json"
    path.write_text(text)
    with pytest.raises((ValueError, TypeError)) as err:
        load_schedule(path)
    refused_cleanly(err.value)


# -- (iii) method parameters -------------------------------------------------------------------------------
def numeric(annotation) -> bool:
    """Whether a config field takes a number (int or float, possibly optional)."""
    args = typing.get_args(annotation)
    return annotation in (int, float) or (bool not in args and any(a in (int, float) for a in args))


@FUZZ
@given(data=st.data())
def test_fuzz_method_parameters(data):
    name = data.draw(st.sampled_from(methods.available()))
    fields = list(method_class(name).Config.model_fields)
    keys = (
        st.one_of(st.sampled_from(fields), st.sampled_from(["intervall", "ratio", "schedule", "x"]))
        if fields
        else st.sampled_from(["ratio", "x"])
    )
    params = data.draw(st.dictionaries(keys, VALUES, max_size=3))
    try:
        method = methods.build(name, **params)
    except (ValueError, TypeError) as err:
        refused_cleanly(err)
        return
    # what builds holds numbers where numbers are asked for: a bool never slips through as 0 or 1
    config = method_class(name).Config
    for key, value in params.items():
        if numeric(config.model_fields[key].annotation):
            assert not isinstance(value, (bool, str)), (name, key, value)
            got = getattr(method.config, key)
            assert got is None or not isinstance(got, bool) and math.isfinite(got)
    repr(method)


# -- regressions: each bad input the probe found -----------------------------------------------------------
def test_bool_is_not_an_integer_for_any_method():
    with pytest.raises(ValueError, match=r"^fora: parameter 'interval' = True is invalid: True is a boolean"):
        methods.build("fora", interval=True)
    with pytest.raises(ValueError, match=r"toca: parameter 'ratio' = False is invalid"):
        methods.build("toca", ratio=False)
    with pytest.raises(ValueError, match=r"'3' is text, not a number"):
        methods.build("fora", interval="3")
    with pytest.raises(ValueError, match=r"dato: parameter 'schedule'.*True is a boolean"):
        methods.build("dato", schedule=[["full", 0], [True, 0.3]])  # d = True once ran as d = 1
    with pytest.raises(ValueError, match=r"'bonus' = inf is invalid: Input should be a finite number"):
        methods.build("toca", bonus=float("inf"))
    assert methods.build("fora", interval=3).config.interval == 3
    assert methods.build("sparsedit", prune=True).config.prune is True  # a real bool field still takes bools


def test_several_bad_parameters_are_reported_on_one_line():
    with pytest.raises(ValueError) as err:
        methods.build("toca", ratio=2.0, interval=0)
    assert "\n" not in str(err.value) and "'ratio'" in str(err.value) and "'interval'" in str(err.value)


def test_diffsparse_without_schedule_points_to_committed_schedules_and_training():
    with pytest.raises(ValueError) as err:
        methods.build("diffsparse")
    message = str(err.value)
    assert "Field required" not in message and "{}" not in message
    assert "results/diffsparse/mnist-dit/schedule.json" in message and "dsbench train diffsparse FILE" in message


def test_schedule_with_K_zero_or_missing_fields_is_refused_on_build(tmp_path):
    for edit, field in (
        (lambda m: m.update(K=0), "meta.K"),
        (lambda m: m.pop("K"), "meta.K"),
        (lambda m: m["config"].update(importance="entropy"), "meta.config.importance"),
    ):
        body = copy.deepcopy(VALID_SCHEDULE)
        edit(body["meta"])
        path = tmp_path / "s.json"
        path.write_text(json.dumps(body))
        with pytest.raises(ValueError, match=rf"schedule {path}: field '{field}'"):
            methods.build("diffsparse", schedule=str(path))
    body = copy.deepcopy(VALID_SCHEDULE)
    body["meta"] = "x"
    path.write_text(json.dumps(body))
    with pytest.raises(ValueError, match=r"field 'meta' = 'x' is invalid: must be an object"):
        methods.build("diffsparse", schedule=str(path))


@pytest.mark.parametrize(
    "field, value, expected",
    [
        (("eval", "size"), 1e11, r"field 'eval.size': .*less than or equal to 100000.*allowed: .*\[1, 100000\]"),
        (("eval", "size"), True, r"field 'eval.size': True is a boolean"),
        (("eval", "references"), 10**9, r"field 'eval.references'.*\[2, 100000\]"),
        (("eval", "seed"), -1, r"field 'eval.seed'"),
        (("seeds",), [0, 2**40], r"field 'seeds\[1\]'.*4294967295"),
        (("seeds",), [3, 3], r"field 'seeds\[1\]': seed 3 is listed twice"),
        (("seeds",), list(range(101)), r"field 'seeds'.*at most 100"),
        (("steps",), 10**9, r"field 'steps'.*\[1, 1000\]"),
        (("steps",), "20", r"field 'steps': '20' is text, not a number"),
        (("guidance",), float("nan"), r"field 'guidance': Input should be a finite number"),
        (("latency", "batch"), 10**6, r"field 'latency.batch'.*\[1, 1024\]"),
        (("latency", "repeats"), 0, r"field 'latency.repeats'"),
        (("latency", "warmup"), 10**4, r"field 'latency.warmup'.*\[0, 100\]"),
        (("name",), "../evil", r"field 'name'.*folder name"),
        (("methods",), [], r"field 'methods'"),
        (("metrics",), ["lpips", "lpips"], r"field 'metrics\[1\]': lpips is listed twice"),
        (("metrics",), ["prc"], r"field 'eval.size': 3 samples are too few for metric prc \(it needs >= 4\)"),
    ],
)
def test_experiment_fields_out_of_range_are_refused_on_one_line(tmp_path, field, value, expected):
    data = copy.deepcopy(BASE_EXPERIMENT)
    data["eval"] = {"size": 3}
    data = mutate(data, field, value, delete=False)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError) as err:
        experiment.load(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)
    assert re.search(expected, str(err.value)), str(err.value)


@pytest.mark.parametrize("size", ["1e11", "1.0e+11", "100000000000"])
def test_eval_size_1e11_in_a_yaml_file_is_refused_before_any_work(tmp_path, size):
    """It once reached numpy and failed there with a MemoryError (YAML 1.1 reads 1e11 as text, pydantic took it)."""
    path = tmp_path / "big.yaml"
    path.write_text(f"models: [mnist-dit]\nmethods: all\neval: {{size: {size}}}\n")
    with pytest.raises(ValueError, match=r"big.yaml: field 'eval.size': .*allowed: .*\[1, 100000\]"):
        experiment.load(path)


def test_yaml_key_that_is_a_number_is_an_unknown_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("models: [mnist-dit]\nmethods: all\n1: 2\n")
    with pytest.raises(ValueError, match=r"bad.yaml: unknown field 1; allowed fields: name, models"):
        experiment.load(path)


def test_invalid_yaml_is_reported_on_one_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("models: [mnist-dit\nmethods: all\n")
    with pytest.raises(ValueError) as err:
        experiment.load(path)
    assert str(err.value).startswith(f"{path}: not valid YAML") and "\n" not in str(err.value)
    path.write_bytes(b"name: \xff\xfe\n")
    with pytest.raises(ValueError, match="not UTF-8 text"):
        experiment.load(path)


def test_schedule_for_other_steps_fails_in_check_inputs(tmp_path):
    data = {**copy.deepcopy(BASE_EXPERIMENT), "steps": 10}
    exp = experiment.parse(data, "x.yaml")
    with pytest.raises(
        ValueError, match=r"methods\[1\]\.params\.schedule' \(model mnist-dit\).*T=20 steps.*steps = 10"
    ):
        experiment.check_inputs(exp)


def run_info(family: str) -> RunInfo:
    return RunInfo(
        family=family,
        num_steps=4,
        layers=[],
        n_image=16,
        n_text=0,
        grid=(4, 4),
        batch=1,
        cfg_batched=False,
        blocks_per_stream={"double": 2, "single": 2},
    )


@pytest.mark.parametrize("name", ["cat", "dato"])
def test_pruning_methods_refuse_other_families_as_not_applicable(name):
    """CAT and DaTo rebuild BasicTransformerBlocks: on FLUX/Wan they cannot run at all (a listed skip)."""
    for family in ("flux", "wan"):
        with pytest.raises(NotApplicable, match=rf"{name} runs on DiT and PixArt .* not {family}"):
            methods.build(name).reset(run_info(family))
    assert issubclass(NotApplicable, TypeError)
