"""Attaching next to other wrappers of the transformer's or the blocks' ``forward``, in either order: a plain
``(*args, **kwargs)`` wrapper, and cache-dit when it is installed (the ``external`` extra)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import PIPELINES

import dsbench
from dsbench import methods

STEPS = 6


def passthrough(fn):
    """What many libraries put on ``forward``: a wrapper that names no argument."""

    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs)

    return wrapper


def watched(pipe) -> tuple:
    """The objects attach overrides: the transformer and its blocks whole (a pipeline call changes neither's
    ``__dict__``), the scheduler's and the pipeline's per-instance attributes of those names only (calls do
    change their state)."""
    t = pipe.transformer
    return (t, *t.transformer_blocks), [vars(o).get("set_timesteps") for o in (pipe, pipe.scheduler)]


def snapshot(pipe) -> tuple:
    modules, others = watched(pipe)
    return [dict(vars(o)) for o in modules], others


def same_objects(pipe, before: tuple, ignore: frozenset[str] = frozenset()) -> bool:
    """Each watched instance ``__dict__`` holds exactly the objects it held before (identity, not equality),
    but for the names in ``ignore``, and the transformer carries no hook."""
    modules, others = watched(pipe)
    t = pipe.transformer
    for o, b in zip(modules, before[0]):
        now = {k: v for k, v in vars(o).items() if k not in ignore}
        if now.keys() != b.keys() - ignore or any(now[k] is not b[k] for k in now):
            return False
    return all(a is b for a, b in zip(others, before[1])) and not (t._forward_pre_hooks or t._forward_hooks)


def fora_run(make, run):
    """The single-method reference: FORA alone on a fresh pipeline (its images and counted MACs)."""
    pipe = make()
    with dsbench.attach(pipe, methods.build("fora", interval=2)) as handle:
        return run(pipe, steps=STEPS), handle.report()["macs_cfg_counted"]


def test_attach_after_a_plain_forward_wrapper_binds_by_the_class_signature(family):
    make, run = PIPELINES[family]
    reference, macs = fora_run(make, run)
    pipe = make()
    t = pipe.transformer
    wrapper = t.forward = passthrough(t.forward)
    before = snapshot(pipe)
    with dsbench.attach(pipe, methods.build("fora", interval=2)) as handle:
        out = run(pipe, steps=STEPS)
        assert handle.report()["macs_cfg_counted"] == macs
    assert np.array_equal(out, reference)
    assert same_objects(pipe, before) and vars(t)["forward"] is wrapper


def test_a_plain_forward_wrapper_after_attach_stays_in_the_path(family):
    make, run = PIPELINES[family]
    reference, macs = fora_run(make, run)
    pipe = make()
    t = pipe.transformer
    before = snapshot(pipe)
    calls = []

    def counting(*args, **kwargs):
        calls.append(1)
        return type(t).forward(t, *args, **kwargs)

    with dsbench.attach(pipe, methods.build("fora", interval=2)) as handle:
        t.forward = counting
        out = run(pipe, steps=STEPS)
        assert handle.report()["macs_cfg_counted"] == macs
    assert np.array_equal(out, reference)
    assert len(calls) == STEPS  # the wrapper ran at every call
    assert vars(t).pop("forward") is counting  # detach left the other library's wrapper alone
    assert same_objects(pipe, before)


def test_a_block_wrapped_before_attach_is_refused_and_nothing_changes(family):
    make, _run = PIPELINES[family]
    pipe = make()
    t = pipe.transformer
    block = t.transformer_blocks[1]
    block.forward = passthrough(block.forward)
    before = snapshot(pipe)
    with pytest.raises(RuntimeError, match=r"block 1 .* per-instance forward .* attach dsbench first"):
        dsbench.attach(pipe, methods.build("full"))
    assert same_objects(pipe, before)


def test_detach_under_a_later_block_wrapper_is_refused_until_it_is_removed(family):
    make, run = PIPELINES[family]
    pipe = make()
    plain = run(pipe, steps=STEPS)
    t = pipe.transformer
    before = snapshot(pipe)
    handle = dsbench.attach(pipe, methods.build("full"))
    block = t.transformer_blocks[0]
    ours = block.forward
    block.forward = passthrough(ours)
    assert np.abs(run(pipe, steps=STEPS) - plain).max() <= 1e-6
    with pytest.raises(RuntimeError, match=r"cannot detach: .*forward was overridden again"):
        handle.detach()
    assert handle.attached and vars(block)["forward"] is not ours  # refused before undoing anything
    block.forward = ours  # the other library removes its wrapper
    handle.detach()
    assert same_objects(pipe, before)
    assert np.array_equal(run(pipe, steps=STEPS), plain)


# -- with cache-dit (optional extra `external`) -------------------------------------------------------------------
def dbcache(threshold: float):
    cache_dit = pytest.importorskip("cache_dit")
    return cache_dit.DBCacheConfig(
        Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=threshold, max_warmup_steps=0
    )


def disable_cache_dit(pipe) -> None:
    """cache-dit's disable, then what it leaves behind on the transformer (its patched forward on DiT)."""
    import cache_dit

    cache_dit.disable_cache(pipe)  # it patches the pipeline class's __call__: never leave it enabled
    for name in ("forward", "_is_patched"):
        vars(pipe.transformer).pop(name, None)


def with_cache_dit(pipe, run, threshold: float, method, dsbench_first: bool):
    """Images and dsbench's report of one pipeline call with cache-dit DBCache F1B0 and ``method`` attached in
    the given order; detaches in the reverse order and returns whether dsbench's detach put back exactly the
    transformer, blocks and scheduler attributes it found."""
    import cache_dit

    handle = None
    try:
        if dsbench_first:
            before = snapshot(pipe)
            handle = dsbench.attach(pipe, method)
        cache_dit.enable_cache(pipe, cache_config=dbcache(threshold))
        if not dsbench_first:
            before = snapshot(pipe)
            handle = dsbench.attach(pipe, method)
        images, report = run(pipe, steps=STEPS), handle.report()
        if not dsbench_first:
            handle.detach()
            stats = frozenset(k for k in vars(pipe.transformer) if k.endswith(("_steps", "_diffs")))
            restored = same_objects(pipe, before, ignore=stats)  # cache-dit's per-call statistics aside
    finally:
        disable_cache_dit(pipe)
        if handle is not None:
            handle.detach()
    if dsbench_first:
        restored = same_objects(pipe, before)
    return images, report, restored


@pytest.mark.parametrize("dsbench_first", [True, False], ids=["dsbench-first", "cache-dit-first"])
def test_cache_dit_in_either_order(family, dsbench_first):
    make, run = PIPELINES[family]
    dbcache(0.0)  # skips without cache-dit
    reference, macs = fora_run(make, run)
    pipe = make()
    plain = run(pipe, steps=STEPS)
    with dsbench.attach(pipe, methods.build("full")) as handle:
        run(pipe, steps=STEPS)
        full_macs = handle.report()["macs_cfg_counted"]

    # cache-dit transparent (threshold 0): the result of FORA alone
    images, report, restored = with_cache_dit(pipe, run, 0.0, methods.build("fora", interval=2), dsbench_first)
    assert np.array_equal(images, reference) and report["macs_cfg_counted"] == macs and restored

    # dsbench transparent (full): cache-dit's own result, and dsbench counts the blocks cache-dit skipped
    import cache_dit

    cache_dit.enable_cache(pipe, cache_config=dbcache(0.5))
    try:
        alone = run(pipe, steps=STEPS)
    finally:
        disable_cache_dit(pipe)
    images, report, restored = with_cache_dit(pipe, run, 0.5, methods.build("full"), dsbench_first)
    assert not np.array_equal(alone, plain)  # cache-dit really reused something at this threshold
    assert np.abs(images - alone).max() <= 1e-6 and restored
    assert report["macs_cfg_counted"] < full_macs
