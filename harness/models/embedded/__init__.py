"""Embedded models: small models of the real diffusers classes, trained here, weights in the repo.

Each module registers its bundle with ``harness.models.zoo.register``.
"""
