"""What the embedded models' training and loading code shares: atomic writes, offline loading of a
diffusers model from its folder, a training log, bf16 autocast, per-image generators and the original DiT
sampler's guidance on some latent channels (the last two serve the hub models' samplers too)."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch


def atomic_dir(final: Path, write: Callable[[Path], None]) -> None:
    """Write a directory with ``write(tmp)`` and swap it into place (a crash leaves the old one intact)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp, old = final.with_name(final.name + ".tmp"), final.with_name(final.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    write(tmp)
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def atomic_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def diffusers_model(cls, folder: Path):
    """A diffusers model from ``folder`` (config.json + safetensors), without any hub lookup."""
    from safetensors.torch import load_file

    config = {k: v for k, v in json.loads((folder / "config.json").read_text()).items() if not k.startswith("_")}
    model = cls.from_config(config)
    model.load_state_dict(load_file(folder / "diffusion_pytorch_model.safetensors"), strict=True)
    return model.eval()


class Log:
    """Lines to stdout (through tqdm, so bars stay intact) and appended to a log file."""

    def __init__(self, path: Path | None):
        self.path = path
        if path:
            path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, msg: str) -> None:
        from tqdm import tqdm

        line = f"[{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M:%S')}] {msg}"
        tqdm.write(line)
        if self.path:
            with open(self.path, "a") as f:
                f.write(line + "\n")


@functools.cache
def native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (avx512_bf16 / AMX). Without it, bf16 is emulated
    and about 8× slower than fp32 (measured on an AVX2-only EPYC), so autocast must stay off."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def bf16_autocast(enabled: bool = True):
    """bf16 autocast on the CPU where it is native (about 4× faster than fp32 with avx512_bf16);
    fp32 elsewhere."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled and native_bf16())


def generators(seed: int, start: int, count: int) -> list[torch.Generator]:
    """One generator per image, seeded by (seed, image index): an image does not depend on the batching."""
    return [
        torch.Generator().manual_seed(int(np.random.SeedSequence([seed, i]).generate_state(1)[0]))
        for i in range(start, start + count)
    ]


def sample_in_batches(
    conditions: list,
    seed: int,
    batch_size: int,
    resolution: int,
    generate: Callable[[list, list[torch.Generator]], torch.Tensor],
    start: int = 0,
) -> torch.Tensor:
    """uint8 N×3×H×W images (N×T×3×H×W videos): ``generate(batch_conditions, generators)`` returns floats
    in [0, 1] per batch; each image gets the generator of its (seed, index), so batching does not change it.
    ``start`` is the index of ``conditions[0]`` in the whole evaluation set: a shard (one rank's slice) draws
    the same noise for image i as a single process would."""
    out = []
    for i in range(0, len(conditions), batch_size):
        batch = conditions[i : i + batch_size]
        images = generate(batch, generators(seed, start + i, len(batch)))
        out.append((images.float().clamp(0, 1) * 255).round().to(torch.uint8).cpu())
    return torch.cat(out) if out else torch.zeros(0, 3, resolution, resolution, dtype=torch.uint8)


@contextlib.contextmanager
def guided_channels(pipe, channels: int | None, guidance_scale: float):
    """Classifier-free guidance on the first ``channels`` latent channels only, as the original DiT sampler
    (``forward_with_cfg``: "for exact reproducibility reasons") does; diffusers' DiTPipeline guides all of them.

    A forward hook on the transformer copies the cond rows of eps channels ``channels``… into the uncond rows of
    the batched [cond; uncond] output, so the pipeline's u + s·(c − u) leaves them at the cond prediction, the
    half the sample is taken from; the learned-σ channels after the latent ones are untouched. None, or a
    guidance scale the pipeline does not batch (<= 1), changes nothing.
    """
    if channels is None or guidance_scale <= 1:
        yield
        return
    latent = pipe.transformer.config.in_channels

    def hook(_module, _args, output):
        sample = (output[0] if isinstance(output, tuple) else output.sample).clone()  # may be a method's cache
        half = len(sample) // 2
        sample[half:, channels:latent] = sample[:half, channels:latent]
        return (sample, *output[1:]) if isinstance(output, tuple) else type(output)(sample=sample)

    handle = pipe.transformer.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
