"""dsbench: attach a caching method to a diffusers pipeline, measure it, compare it at equal compute.

    import dsbench
    from dsbench import methods
    with dsbench.attach(pipe, methods.build("toca", ratio=0.3)) as handle:
        images = pipe(...).images
        report = handle.report()

``dsbench.methods`` holds the methods (policies), ``dsbench.engine`` executes them on a transformer;
the layers are described in docs/architecture.md.
"""

from dsbench.engine import Handle, attach

__all__ = ["attach", "Handle"]
