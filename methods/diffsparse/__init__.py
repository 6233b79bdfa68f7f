"""DiffSparse (METHODS §1.1): learned layer-wise token sparsity.

space (cells, levels, MACs, budget), dp (solvers), selector (Eq. 5/10), schedule (export/import),
cost + train (training), method (the ``diffsparse`` inference method, registered on import).
"""

from methods.diffsparse import method  # noqa: F401  (registers "diffsparse")
