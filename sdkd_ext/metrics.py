"""Agreement between two models' outputs: PSNR and SSIM on decoded images, MSE on latents (our own, torch only).

Images may be PIL images, numpy arrays (HWC; uint8 in 0..255 or float in 0..1) or torch tensors
(CHW or BCHW, float in 0..1). Every figure is computed in float64, so identical inputs give PSNR
inf and SSIM exactly 1.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .errors import SdkdError

SSIM_WINDOW = 11  # Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03
SSIM_SIGMA = 1.5
SSIM_K = (0.01, 0.03)


def as_image_tensor(image) -> torch.Tensor:
    """An image as a float64 BCHW tensor in 0..1."""
    if isinstance(image, torch.Tensor):
        t = image.detach().to("cpu", torch.float64)
    else:
        arr = np.asarray(image)  # PIL images convert through the array interface
        t = torch.from_numpy(arr.astype(np.float64) / (255.0 if arr.dtype == np.uint8 else 1.0))
        t = t[..., None] if t.ndim == 2 else t
        t = t.movedim(-1, -3)  # HWC -> CHW
    if t.ndim == 3:
        t = t[None]
    if t.ndim != 4:
        raise SdkdError(f"an image must have 2 to 4 dimensions, this one has shape {tuple(t.shape)}")
    return t


def _pair(a, b) -> tuple[torch.Tensor, torch.Tensor]:
    """Both images as tensors, checked to have the same shape."""
    x, y = as_image_tensor(a), as_image_tensor(b)
    if x.shape != y.shape:
        raise SdkdError(f"images differ in shape ({tuple(x.shape)} vs {tuple(y.shape)}); compare at the same size")
    return x, y


def psnr(a, b) -> float:
    """Peak signal-to-noise ratio in dB (peak 1.0); inf for identical images."""
    x, y = _pair(a, b)
    mse = torch.mean((x - y) ** 2).item()
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    """A normalised 2-D Gaussian kernel, shape (1, 1, size, size), float64."""
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(r ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim(a, b) -> float:
    """Mean structural similarity (Gaussian-windowed, per channel, valid region), 1.0 for identical images."""
    x, y = _pair(a, b)
    n, c, h, w = x.shape
    size = min(SSIM_WINDOW, h, w)
    win = _gaussian_window(size, SSIM_SIGMA * size / SSIM_WINDOW).expand(c, 1, size, size)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(t, win, groups=c)

    c1, c2 = (SSIM_K[0] ** 2), (SSIM_K[1] ** 2)  # data range 1.0
    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.mean().item()


def latent_mse(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean squared difference of two latent tensors of one shape, in float64."""
    if a.shape != b.shape:
        raise SdkdError(f"latents differ in shape ({tuple(a.shape)} vs {tuple(b.shape)}); compare at the same size")
    return torch.mean((a.detach().cpu().double() - b.detach().cpu().double()) ** 2).item()


INTERVAL_METHOD = ("95% interval of the mean over the n = prompts x seeds images: mean +- 1.96 * sd / sqrt(n) "
                   "(normal approximation, sd with n - 1; none for n < 2 or an infinite value)")


def mean_interval(values: list[float]) -> tuple[float, float, float] | None:
    """(mean, low, high): the mean and its 95% interval by INTERVAL_METHOD; None where it is undefined."""
    n = len(values)
    if n < 2 or not all(math.isfinite(v) for v in values):
        return None
    mean = math.fsum(values) / n
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = 1.96 * sd / math.sqrt(n)
    return mean, mean - half, mean + half
