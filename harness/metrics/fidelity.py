"""Fidelity to the same-seed teacher (docs/evaluation.md#metrics): LPIPS, PSNR, SSIM on uint8 image pairs.

Every function takes two uint8 tensors N×3×H×W of equal shape (image i of one is compared with image i
of the other) and returns the mean over the N pairs; the ``*_per_image`` functions return the N values the
mean is taken of (what reports resample for confidence intervals).
"""

from __future__ import annotations

import functools
import warnings

import torch
import torch.nn.functional as F

from dsbench import weights

LPIPS_NETS = ("alex", "vgg")


def psnr_per_image(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """PSNR of each image pair in dB on the uint8 scale (peak 255); identical images give inf."""
    mse = (a.double() - b.double()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(255.0**2 / mse)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean per-image PSNR in dB on the uint8 scale (peak 255); identical images give inf."""
    return psnr_per_image(a, b).mean().item()


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g)


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean SSIM over the image pairs (:func:`ssim_per_image`)."""
    return ssim_per_image(a, b).mean().item()


def ssim_per_image(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """SSIM of each image pair (Wang et al. 2004): 11×11 Gaussian window, σ = 1.5, K1 = 0.01, K2 = 0.03, L = 255.

    Statistics are taken over 'valid' windows (no padding, as the reference MATLAB code), averaged over the
    map, then over RGB. Images must be at least 11×11.
    """
    if min(a.shape[-2:]) < 11:
        raise ValueError(f"SSIM needs images of at least 11×11 pixels, got {tuple(a.shape[-2:])}")
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    x, y = a.double(), b.double()
    window = _gaussian_window().to(x.device)[None, None].expand(x.shape[1], 1, 11, 11)

    def blur(t):
        return F.conv2d(t, window, groups=x.shape[1])

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.mean(dim=(2, 3)).mean(1)  # per channel → per image


@functools.cache
def lpips_model(net: str, device: str = "cpu") -> torch.nn.Module:
    """The ``lpips`` package's LPIPS v0.1 with its real weights, built once per (net, device).

    Its ImageNet backbone is installed on first need (``dsbench.weights.ensure``), so torch.hub never
    tries to download it; where that cannot work the error says how to fix it.
    """
    import lpips

    if net not in LPIPS_NETS:
        raise ValueError(f"unknown LPIPS net {net!r}; allowed: {', '.join(LPIPS_NETS)}")
    weights.ensure(f"lpips_{net}")

    with warnings.catch_warnings():  # lpips 0.1.4 still passes torchvision's deprecated pretrained=True
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net=net, verbose=False)
    return model.eval().requires_grad_(False).to(device)


def lpips_per_image(
    a: torch.Tensor, b: torch.Tensor, net: str = "alex", device: str = "cpu", batch_size: int = 32
) -> torch.Tensor:
    """LPIPS distance of each image pair; uint8 images are mapped to [−1, 1] as LPIPS expects."""
    model = lpips_model(net, str(device))
    out = []
    with torch.no_grad():
        for i in range(0, len(a), batch_size):
            x, y = (t[i : i + batch_size].to(device).float() / 127.5 - 1 for t in (a, b))
            out.append(model(x, y).flatten().double().cpu())
    return torch.cat(out)


def lpips_distance(
    a: torch.Tensor, b: torch.Tensor, net: str = "alex", device: str = "cpu", batch_size: int = 32
) -> float:
    """Mean LPIPS distance over the image pairs (:func:`lpips_per_image`)."""
    return lpips_per_image(a, b, net, device, batch_size).mean().item()
