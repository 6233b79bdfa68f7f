"""``full``: no acceleration; every layer computed at every step (the reference)."""

from dsbench.core import Method
from dsbench.methods.base import register


@register
class Full(Method):
    name = "full"
    summary = "no acceleration (the uncached model, through the same executor)"
