"""Acceleration methods behind one interface (docs/concepts.md): each a validated config and a policy.

import dsbench
from dsbench import methods
methods.available()                               # registered names
m = methods.build("toca", ratio=0.3, interval=3)  # validated config
with dsbench.attach(pipe, m) as h:                # pipeline or its transformer
    images = pipe(...).images
    report = h.report()
"""

from dsbench.core import (
    FULL,
    NORMAL,
    REUSE,
    REUSE_OUTPUT,
    Decision,
    Directive,
    Kind,
    Layer,
    Method,
    MethodConfig,
    RunInfo,
    Schedule,
    block_residual,
    reuse_output,
    taylor,
    topk,
)

# registration happens on import
from dsbench.methods import (  # noqa: E402,F401
    cachedit,
    cat,
    dato,
    deepcache,
    diffsparse,
    diffusers_hook,
    duca,
    fbcache,
    fora,
    full,
    magcache,
    search,
    sparsedit,
    steps,
    taylorseer,
    teacache,
    toca,
)
from dsbench.methods.base import available, build, register

__all__ = [
    "available",
    "build",
    "register",
    "Method",
    "MethodConfig",
    "Decision",
    "Directive",
    "Kind",
    "Layer",
    "RunInfo",
    "Schedule",
    "FULL",
    "REUSE",
    "NORMAL",
    "REUSE_OUTPUT",
    "topk",
    "taylor",
    "block_residual",
    "reuse_output",
]
