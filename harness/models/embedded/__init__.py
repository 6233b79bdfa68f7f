"""Embedded models: small models of the real diffusers classes, trained here, weights in the repo.

Each model is a package (``model``: configs, classifier, files and ``load``; ``data``; ``train``; ``check``;
``__main__``: ``python -m dsbench.models.embedded.<package> train|grid|check``) that provides ``NAME`` and
``load``; ``dsbench.models.zoo`` lists them. ``common`` holds what they share, ``loop`` the one resumable
training loop (also used by ``dsbench.training``), ``weights/<name>/`` the committed weights.
"""

from dsbench.models.embedded import (
    mnist_dit,  # noqa: F401
    shapes_pixart,  # noqa: F401
)

# model → family, known without loading the model (experiment files are validated before any work)
FAMILIES = {mnist_dit.NAME: "dit", shapes_pixart.NAME: "pixart", shapes_pixart.TRANSFER_NAME: "pixart"}
