"""The error every metric raises when it cannot run here."""


class MetricUnavailable(RuntimeError):
    """A metric cannot run here: its weights, package or interpreter are missing (the message says which)."""
