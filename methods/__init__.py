"""Acceleration methods behind one interface (DESIGN.md §3).

    import methods
    methods.available()                               # registered names
    m = methods.build("toca", ratio=0.3, interval=3)  # validated config
    with methods.attach(pipe, m) as h:                # pipeline or its transformer
        images = pipe(...).images
        report = h.report()
"""

from methods.base import (FULL, NORMAL, REUSE, REUSE_OUTPUT, Decision, Directive, Kind, Layer, Method,
                          MethodConfig, RunInfo, available, block_residual, build, register, taylor, topk)
from methods.schedule import Schedule

# registration happens on import
from methods import full, steps, fora, toca, duca, deepcache, taylorseer, sparsedit, diffsparse  # noqa: E402,F401
from methods import cat, dato  # noqa: E402,F401


def attach(target, method: Method, **options):
    """Attach ``method`` to a diffusers pipeline or transformer; returns a context-manager handle.

    Options: ``num_steps`` (denoiser calls per run; needed for a bare transformer),
    ``cfg_batched`` (override the family's CFG layout), ``seed`` (random token scores).
    """
    from harness.engine import attach as _attach

    return _attach(target, method, **options)


__all__ = ["available", "build", "attach", "register", "Method", "MethodConfig", "Decision", "Directive",
           "Kind", "Layer", "RunInfo", "Schedule", "FULL", "REUSE", "NORMAL", "REUSE_OUTPUT", "topk", "taylor",
           "block_residual"]
