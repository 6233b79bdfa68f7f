"""``mnist-dit``'s checks: a sample grid and the class accuracy of generated digits (``check``)."""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

import torch

from dsbench.models.embedded.common import atomic_text
from dsbench.models.embedded.mnist_dit.data import NUM_CLASSES, conditions, mnist, to_rgb_uint8
from dsbench.models.embedded.mnist_dit.model import NAME, RESULTS, SAMPLER, load


def _save_png(images: torch.Tensor, nrow: int, path: Path, scale: int = 2) -> None:
    from PIL import Image
    from torchvision.utils import make_grid

    grid = make_grid(images, nrow=nrow, padding=2, pad_value=128)
    grid = grid.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid.permute(1, 2, 0).numpy()).save(path)


def grid(
    out: Path = RESULTS / "samples.png",
    per_class: int = 8,
    seed: int = 0,
    steps: int | None = None,
    guidance_scale: float | None = None,
    weights: Path | None = None,
) -> dict:
    """Rows = digits 0–9, columns = seeds: the bundle's sampler unless overridden."""
    bundle = load(weights=weights)
    labels = [c for c in range(NUM_CLASSES) for _ in range(per_class)]
    t0 = time.perf_counter()
    images = bundle.sample(labels, seed, steps=steps, guidance_scale=guidance_scale)
    seconds = time.perf_counter() - t0
    _save_png(images, per_class, Path(out))
    acc = bundle.alignment(images, labels)["class_accuracy"]
    info = {
        "path": str(out),
        "images": len(labels),
        "seconds": round(seconds, 2),
        "class_accuracy": acc,
        "steps": steps or SAMPLER.steps,
        "guidance_scale": SAMPLER.guidance_scale if guidance_scale is None else guidance_scale,
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(info))
    return info


def check(
    n: int = 500,
    seed: int = 0,
    steps: int | None = None,
    guidance_scale: float | None = None,
    threshold: float = 0.90,
    out_dir: Path = RESULTS,
    weights: Path | None = None,
    write: bool = True,
) -> dict:
    """Class accuracy of the domain classifier on ``n`` generated digits (balanced classes) — ≥ ``threshold``."""
    bundle = load(weights=weights)
    conds = conditions(n, seed)
    bundle.sample(conds[:8], seed)  # warm-up
    t0 = time.perf_counter()
    images = bundle.sample(conds, seed, steps=steps, guidance_scale=guidance_scale)
    seconds = time.perf_counter() - t0
    predicted = bundle.classifier.predict(images)
    target = torch.as_tensor(conds)
    per_class = {str(c): float((predicted[target == c] == c).float().mean()) for c in range(NUM_CLASSES)}
    test_x, test_y = mnist("test")
    real_acc = float((bundle.classifier.predict(to_rgb_uint8(test_x)) == torch.from_numpy(test_y)).float().mean())
    acc = float((predicted == target).float().mean())
    g = SAMPLER.guidance_scale if guidance_scale is None else guidance_scale
    result = {
        "model": NAME,
        "n": n,
        "seed": seed,
        "scheduler": SAMPLER.scheduler,
        "steps": steps or SAMPLER.steps,
        "guidance_scale": g,
        "class_accuracy": acc,
        "threshold": threshold,
        "passed": acc >= threshold,
        "per_class_accuracy": per_class,
        "classifier_test_accuracy_real_mnist": real_acc,
        "seconds": round(seconds, 2),
        "seconds_per_64_images": round(seconds / n * 64, 2),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "command": "python -m dsbench.models.embedded.mnist_dit " + shlex.join(sys.argv[1:]) if write else None,
    }
    if write:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_text(out_dir / "check.json", json.dumps(result, indent=2) + "\n")
        rows = "\n".join(f"| {c} | {a:.3f} |" for c, a in per_class.items())
        atomic_text(
            out_dir / "check.md",
            f"""# {NAME}: class accuracy of generated digits

`{result["command"]}`

{n} generated digits (balanced over the 10 classes, seed {seed}), DDIM (linspace) {result["steps"]} steps,
classifier-free guidance {g}, classified by the domain classifier (its accuracy on the 10 000 real MNIST test
digits: {real_acc:.4f}).

**Class accuracy: {acc:.3f}** (required ≥ {threshold}: {"passed" if result["passed"] else "FAILED"})

Sampling: {result["seconds"]} s for {n} images ({result["seconds_per_64_images"]} s per 64 images,
{result["threads"]} threads, fp32, batches of 64 with CFG).

| class | accuracy |
|---|---|
{rows}

Samples: [samples.png](samples.png) (rows = digits 0–9).
""",
        )
    print(json.dumps(result, indent=2))
    return result
