"""MACs of the arms that run another library (``cachedit``, ``diffusers_hook``) on the embedded models, over
their threshold: the measurement the budget search makes (``ModelContext.macs_of``: one image through the real
pipeline, quickstart sampler and steps, counted by dsbench's engine beside the library), as a fraction of
``full``. Writes results/benchmarks/external_arms.txt; docs/methods/cachedit.md and diffusers_hook.md quote it.

    python benchmarks/external_arms.py     # needs the extra: pip install -e ".[external]"

Not a test: nothing is asserted.
"""

from __future__ import annotations

import platform
from pathlib import Path

import torch

from dsbench import experiment, methods, runner
from dsbench.machine import cpu_name

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "benchmarks" / "external_arms.txt"
THRESHOLDS = [0.0, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0]
BUDGET_FIELDS = {"cachedit": "residual_diff_threshold", "diffusers_hook": "threshold"}


def main() -> None:
    torch.set_num_threads(1)
    exp = experiment.load(ROOT / "experiments" / "quickstart.yaml")
    exp = exp.model_copy(update={"metrics": ["psnr"]})  # no reference images needed to count MACs
    lines = [
        f"machine: {cpu_name()} ({platform.machine()}), torch {torch.__version__}, 1 thread",
        "MACs per image of one image's run (CFG not counted) / full; quickstart sampler, steps and params",
        "model          arm             " + " ".join(f"{t:>6}" for t in THRESHOLDS),
    ]
    for model in exp.models:
        ctx = runner.load_model(exp, model, progress=False)
        full = ctx.macs_full
        for entry in exp.methods:
            if entry.name not in BUDGET_FIELDS:
                continue
            arm, field, params = entry.name, BUDGET_FIELDS[entry.name], entry.params_for(model)
            ratios = [ctx.macs_of(methods.build(arm, **params, **{field: t})) / full for t in THRESHOLDS]
            lines.append(f"{model:<14} {arm:<15} " + " ".join(f"{r:6.3f}" for r in ratios))
            print(lines[-1], flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
