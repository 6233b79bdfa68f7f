"""Embedded models: small models of the real diffusers classes, trained here, weights in the repo.

Each module provides ``NAME`` and ``load``; ``dsbench.models.zoo`` lists them.
"""

from dsbench.models.embedded import (
    mnist_dit,  # noqa: F401
    shapes_pixart,  # noqa: F401
)

# model → family, known without loading the model (experiment files are validated before any work)
FAMILIES = {mnist_dit.NAME: "dit", shapes_pixart.NAME: "pixart", shapes_pixart.TRANSFER_NAME: "pixart"}
