"""torch.compile on an attached pipeline (docs/compile.md): the embedded mnist-dit DiTPipeline, compiled with
the aot_eager backend (dynamo + AOTAutograd, no code generation: what inductor would be given, at CPU-test
cost). Outputs and MACs equal eager; the engine's bookkeeping runs outside the graphs, so graphs are compiled
per distinct step plan, not per step."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch._dynamo

import dsbench
from dsbench import methods
from dsbench.macs import level_space_of
from dsbench.methods.diffsparse.schedule import export_schedule
from dsbench.models import zoo

STEPS = 10


class Counting:
    """A dynamo backend around aot_eager that counts the graphs it compiles."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        return torch._dynamo.lookup_backend("aot_eager")(gm, example_inputs)


@pytest.fixture(scope="module")
def pipe():
    torch.set_num_threads(1)
    return zoo.load("mnist-dit").pipeline


@pytest.fixture(scope="module")
def half_schedule(pipe, tmp_path_factory):
    """A DiffSparse schedule for STEPS steps: every cell at half its tokens (an untrained, valid schedule)."""
    space = level_space_of(pipe, STEPS)
    path = tmp_path_factory.mktemp("schedule") / "schedule.json"
    return export_schedule(path, space, np.full(space.n_cells, space.K // 2), budget_ratio=0.4)


def build(name: str, schedule) -> dsbench.core.Method:
    return methods.build("diffsparse", schedule=str(schedule)) if name == "diffsparse" else methods.build(name)


def sample(pipe) -> torch.Tensor:
    return pipe(
        class_labels=[1, 7],
        num_inference_steps=STEPS,
        guidance_scale=3.0,
        generator=torch.manual_seed(0),
        output_type="pt",
    ).images


def eager(pipe, method):
    with torch.no_grad(), dsbench.attach(pipe, method) as handle:
        return sample(pipe), handle.report()


def compiled(pipe, method, order: str):
    """Attach then compile (the pipeline's transformer replaced by ``torch.compile(...)``), or the reverse."""
    plain, backend = pipe.transformer, Counting()
    torch._dynamo.reset()
    if order == "attach-compile":
        handle = dsbench.attach(pipe, method)
        pipe.transformer = torch.compile(plain, backend=backend)
    else:
        pipe.transformer = torch.compile(plain, backend=backend)
        handle = dsbench.attach(pipe, method)
    try:
        with torch.no_grad():
            images = sample(pipe)
        return images, handle.report(), backend.graphs
    finally:
        handle.detach()
        pipe.transformer = plain
        torch._dynamo.reset()


def plans(report) -> int:
    """Distinct (directive, decisions) plans of a run: what a compiled graph may depend on."""
    return len({(d, tuple(ds)) for d, ds in zip(report["directives"], report["decisions"])})


@pytest.mark.parametrize("name", ["full", "toca", "fora", "taylorseer", "diffsparse"])
def test_attach_then_compile_equals_eager(pipe, half_schedule, name):
    reference, ref_report = eager(pipe, build(name, half_schedule))
    images, report, graphs = compiled(pipe, build(name, half_schedule), "attach-compile")
    torch.testing.assert_close(images, reference, rtol=1e-5, atol=1e-5)
    assert report["macs_cfg_counted"] == ref_report["macs_cfg_counted"]
    assert report["decisions"] == ref_report["decisions"]
    # step plans, not steps, make graphs: the first call (empty caches), the plan's steady state, the last
    # step (no statistics kept) — at most three per plan; TaylorSeer's factor lists also grow by one entry per
    # differenced full step until they hold `order` differences, and each length is a graph of its own
    growth = report["config"]["order"] if name == "taylorseer" else 0
    assert graphs <= 3 * plans(report) + growth, (graphs, plans(report), growth)
    if name in ("full", "fora", "taylorseer"):
        assert graphs < STEPS


def test_compile_then_attach_reaches_the_module_and_detaches(pipe):
    reference, _ = eager(pipe, methods.build("toca"))
    images, report, _ = compiled(pipe, methods.build("toca"), "compile-attach")
    torch.testing.assert_close(images, reference, rtol=1e-5, atol=1e-5)
    assert report["method"] == "toca" and any("TOPK" in d for s in report["decisions"] for d in s)
    assert "forward" not in vars(pipe.transformer)  # the per-instance override went with the detach
