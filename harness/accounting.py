"""MAC accounting (docs/accounting.md).

M_lin: multiply-accumulates of every Linear and Conv layer of the denoiser that actually
runs, per batch row, counted from the executed shapes by forward hooks (so partial
computation, skipped blocks and per-call embedders are counted as executed, for every
model family, with no per-family formula to drift). M_attn: QKᵀ + AV of each attention
call, reported by the attention kernels of the adapters. Selection overhead is timed
separately. ``flop_counter_macs`` cross-checks both against torch's FlopCounterMode.
"""

from __future__ import annotations

import math
from collections import defaultdict
from contextlib import contextmanager

import torch
from torch import nn

FIXED = -1  # bucket for everything outside a layer (embedders, adaLN, final layer, ...)


class MacCounter:
    """Per-row MACs of executed Linear/Conv modules, attributed to the current bucket."""

    def __init__(self, model: nn.Module):
        self.batch = 1
        self.bucket = FIXED
        self.linear: dict[int, float] = defaultdict(float)
        self.attention = 0.0
        self._handles = []
        for module in model.modules():
            if isinstance(module, nn.Linear):
                self._handles.append(module.register_forward_hook(self._linear_hook(module)))
            elif isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                self._handles.append(module.register_forward_hook(self._conv_hook(module)))

    def _linear_hook(self, module: nn.Linear):
        fan = module.in_features * module.out_features

        def hook(_mod, inputs, _out):
            x = inputs[0]
            self.linear[self.bucket] += (x.numel() // x.shape[-1]) * fan / self.batch

        return hook

    def _conv_hook(self, module):
        fan = (module.in_channels // module.groups) * math.prod(module.kernel_size) * module.out_channels

        def hook(_mod, _inputs, out):
            self.linear[self.bucket] += (out.numel() // out.shape[1]) * fan / self.batch

        return hook

    def add_attention(self, queries: int, keys: int, dim: int, rows: int) -> None:
        """QKᵀ and AV: 2·N_q·N_k·d MACs for each of ``rows`` batch rows."""
        self.attention += 2.0 * queries * keys * dim * rows / self.batch

    def take(self) -> tuple[dict[int, float], float]:
        """Return and clear the counts since the last call."""
        linear, attention = dict(self.linear), self.attention
        self.linear.clear()
        self.attention = 0.0
        return linear, attention

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


# -- FlopCounterMode cross-check --------------------------------------------------------------
_LINEAR_OPS = ("mm", "addmm", "convolution", "_convolution")
_ATTENTION_OPS = (
    "bmm",
    "baddbmm",
    "_scaled_dot_product_attention_math",
    "scaled_dot_product_attention",
    "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_flash_attention_for_cpu",
)


def _sdpa_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    """FLOPs of softmax(QKᵀ)V: 2 matmuls of 2·b·h·s_q·s_k·d FLOPs each."""
    b, h, s_q, d = query_shape
    s_k = key_shape[-2]
    d_v = value_shape[-1]
    return 2 * b * h * s_q * s_k * d + 2 * b * h * s_q * s_k * d_v


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return _sdpa_flops(query_shape, key_shape, value_shape)


_REGISTERED = False


def _register_sdpa_formula() -> None:
    """FlopCounterMode counts zero for the CPU SDPA kernel unless told its formula."""
    global _REGISTERED
    if _REGISTERED:
        return
    from torch.utils.flop_counter import register_flop_formula

    aten = torch.ops.aten
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        try:
            register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu)(_sdpa_cpu_flops)
        except RuntimeError:  # already registered by a newer torch
            pass
    _REGISTERED = True


@contextmanager
def flop_counter():
    """FlopCounterMode with the CPU SDPA formula registered; yields the mode."""
    from torch.utils.flop_counter import FlopCounterMode

    _register_sdpa_formula()
    mode = FlopCounterMode(display=False)
    with mode:
        yield mode


def flop_counter_macs(mode) -> tuple[float, float]:
    """(linear MACs, attention MACs) counted by a finished FlopCounterMode (FLOPs / 2)."""
    linear = attention = 0
    for op, flops in mode.get_flop_counts()["Global"].items():
        name = str(op).split(".")[-1] if "." in str(op) else str(op)
        if name in _LINEAR_OPS:
            linear += flops
        elif name in _ATTENTION_OPS:
            attention += flops
        else:
            raise ValueError(f"unclassified op in FLOP count: {op}")
    return linear / 2, attention / 2
