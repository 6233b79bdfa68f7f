"""DiffSparse (docs/methods/diffsparse.md): learned layer-wise token sparsity.

space (cells, levels, MACs, budget), dp (solvers; ``solve`` is public here), selector (Eq. 5/10),
schedule (export/import), cost + train (training), method (the ``diffsparse`` inference method,
registered on import), compare (learned vs search baselines at equal wall time).
"""

from dsbench.methods.diffsparse import method  # noqa: F401  (registers "diffsparse")
from dsbench.methods.diffsparse.dp import solve

__all__ = ["solve"]
