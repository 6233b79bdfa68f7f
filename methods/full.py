"""``full``: no acceleration; every layer computed at every step (the reference)."""

from methods.base import Method, register


@register
class Full(Method):
    name = "full"
    summary = "no acceleration (the uncached model, through the same executor)"
