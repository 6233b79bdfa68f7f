"""``mnist-dit``'s data: padded MNIST digits as the VAE and the classifier see them, the evaluation
conditions and the real reference digits."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from dsbench.data.mnist import load_mnist, padded

NUM_CLASSES = 10
RESOLUTION = 32


def mnist(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Padded MNIST ``split``: uint8 (N, 32, 32) images and int64 (N,) labels."""
    images, labels = load_mnist(split)
    return padded(images, RESOLUTION), labels.astype(np.int64)


def to_rgb_uint8(gray: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W) grey → uint8 (N, 3, H, W)."""
    gray = torch.as_tensor(np.asarray(gray))
    return gray[:, None].expand(-1, 3, -1, -1).contiguous()


def to_unit(gray_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W) → float (N, 3, H, W) in [-1, 1] (the VAE's input)."""
    return to_rgb_uint8(gray_uint8).float().div(127.5).sub(1)


def shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Random translations by up to ``max_shift`` pixels (zero fill), per sample; x: (N, H, W)."""
    n, h, w = x.shape
    pad = F.pad(x, (max_shift,) * 4)
    dy, dx = (torch.randint(0, 2 * max_shift + 1, (n,), generator=gen) for _ in range(2))
    rows = (dy[:, None] + torch.arange(h))[:, :, None].expand(n, h, w)
    cols = (dx[:, None] + torch.arange(w))[:, None, :].expand(n, h, w)
    return pad[torch.arange(n)[:, None, None], rows, cols]


def conditions(n: int, seed: int) -> list[int]:
    """``n`` class ids, balanced over the 10 digits (n/10 each when divisible), in a seeded order."""
    rng = np.random.default_rng(seed)
    return [int(c) for c in rng.permutation(np.arange(n) % NUM_CLASSES)]


def references(n: int, seed: int = 0) -> torch.Tensor:
    """``n`` real MNIST test digits (a fixed seeded subset), uint8 N×3×32×32 like the samples."""
    images, _ = mnist("test")
    if n > len(images):
        raise ValueError(f"MNIST has {len(images)} test images, {n} requested")
    order = np.random.default_rng(seed).permutation(len(images))[:n]
    return to_rgb_uint8(images[order])
