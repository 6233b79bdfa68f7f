"""``steps``: step reduction ("x% steps", docs/methods/steps.md): the same sampler with fewer steps.

Attached to a pipeline, it shortens the run where the scheduler's timesteps are set, so the
ordinary pipeline call is unchanged; every remaining step is computed in full.
"""

from __future__ import annotations

import pydantic

from dsbench.core import Method, MethodConfig
from dsbench.methods.base import register


class StepsConfig(MethodConfig):
    fraction: float | None = pydantic.Field(
        None, gt=0.0, le=1.0, description="fraction of the requested steps to run, in (0, 1]; default 0.5"
    )
    num_steps: int | None = pydantic.Field(None, ge=1, description="absolute number of steps, >= 1")

    @pydantic.model_validator(mode="after")
    def _one_of(self):
        if self.fraction is not None and self.num_steps is not None:
            raise ValueError("give either fraction or num_steps, not both")
        return self


@register
class Steps(Method):
    name = "steps"
    Config = StepsConfig
    budget_field = "fraction"
    summary = "step reduction: the same sampler with fewer steps (e.g. 50% steps)"

    def steps_to_run(self, num_steps: int) -> int:
        if self.config.num_steps is not None:
            return self.config.num_steps
        fraction = 0.5 if self.config.fraction is None else self.config.fraction
        return max(1, round(fraction * num_steps))
