"""Helpers shared by the token-pruning methods (docs/methods/dato.md, docs/methods/cat.md): the model output seen
per image token, and which CFG half is the conditional one."""

from __future__ import annotations

import torch

from dsbench.core import RunInfo

# Row block of the conditional half in a batched-CFG call: diffusers' DiTPipeline batches
# [cond, uncond], PixArtAlphaPipeline [uncond, cond].
COND_HALF = {"dit": 0, "pixart": 1}


def noise_tokens(output, run: RunInfo) -> torch.Tensor:
    """The noise prediction of a transformer call per image token: B×N×(C·p·p), learned-variance
    channels dropped (docs/methods/dato.md, docs/methods/cat.md: "ε in token space")."""
    sample = output[0]
    if run.noise_channels is not None:
        sample = sample[:, : run.noise_channels]
    b, c, h, w = sample.shape
    rows, cols = run.grid
    p = h // rows
    if rows * p != h or cols * p != w:
        raise ValueError(f"model output {h}×{w} does not tile into the {rows}×{cols} token grid")
    tokens = sample.reshape(b, c, rows, p, cols, p).permute(0, 2, 4, 1, 3, 5)
    return tokens.reshape(b, rows * cols, c * p * p)


def cond_rows(x: torch.Tensor, run: RunInfo) -> torch.Tensor:
    """The rows of the conditional CFG half (all rows without batched CFG)."""
    if not run.cfg_batched:
        return x
    half = x.shape[0] // 2
    start = COND_HALF.get(run.family, 0) * half
    return x[start : start + half]


def both_halves(x: torch.Tensor, run: RunInfo) -> torch.Tensor:
    """One row per image → one row per batch row (the same for both CFG halves)."""
    return torch.cat([x, x]) if run.cfg_batched else x
