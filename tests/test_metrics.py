"""PSNR, SSIM and latent MSE: exact on identical inputs, equal to their closed forms, ordered by damage."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from sdkd_ext.errors import SdkdError
from sdkd_ext.metrics import latent_mse, psnr, ssim


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A smooth, structured float image in 0..1 (HWC), so SSIM has structure to lose."""
    y, x = np.mgrid[0:64, 0:64] / 63.0
    return np.stack([0.5 + 0.4 * np.sin(6 * x + 2 * y), x * y, 0.5 + 0.4 * np.cos(5 * y)], axis=-1)


def noisy(img: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    """The image with Gaussian noise, clipped to 0..1."""
    return np.clip(img + np.random.default_rng(seed).normal(0, sigma, img.shape), 0, 1)


def test_identical_inputs_give_perfect_scores(photo):
    assert psnr(photo, photo.copy()) == math.inf
    assert ssim(photo, photo.copy()) == pytest.approx(1.0, abs=1e-12)
    lat = torch.randn(4, 8, 8)
    assert latent_mse(lat, lat.clone()) == 0.0


def test_constant_images_match_closed_forms():
    a, b = np.full((32, 32, 3), 0.2), np.full((32, 32, 3), 0.6)
    assert psnr(a, b) == pytest.approx(10 * math.log10(1 / 0.4 ** 2))
    # zero variance: only SSIM's luminance term remains, (2 mu_a mu_b + C1) / (mu_a^2 + mu_b^2 + C1), C1 = 0.01^2
    c1 = 0.01 ** 2
    assert ssim(a, b) == pytest.approx((2 * 0.2 * 0.6 + c1) / (0.2 ** 2 + 0.6 ** 2 + c1))
    assert latent_mse(torch.zeros(2, 3), torch.full((2, 3), 0.5)) == pytest.approx(0.25)


def test_more_damage_scores_lower_and_ssim_is_symmetric(photo):
    light, heavy = noisy(photo, 0.02), noisy(photo, 0.2)
    assert math.inf > psnr(photo, light) > psnr(photo, heavy) > 0
    assert 1 > ssim(photo, light) > ssim(photo, heavy)
    assert ssim(photo, heavy) == pytest.approx(ssim(heavy, photo), abs=1e-12)
    assert latent_mse(torch.from_numpy(photo), torch.from_numpy(light)) < latent_mse(torch.from_numpy(photo), torch.from_numpy(heavy))


def test_ssim_punishes_structure_more_than_a_brightness_shift(photo):
    """At equal MSE a uniform shift keeps the structure, noise destroys it: SSIM must tell them apart, PSNR cannot."""
    base = 0.1 + 0.8 * photo  # room to shift without clipping
    noise = np.random.default_rng(1).normal(0, 0.05, photo.shape)
    shifted = base + math.sqrt(np.mean(noise ** 2))
    assert psnr(base, shifted) == pytest.approx(psnr(base, base + noise), abs=1e-9)
    assert ssim(base, shifted) > ssim(base, base + noise) + 0.2


def test_pil_numpy_and_tensor_inputs_agree(photo):
    u8 = (photo * 255).round().astype(np.uint8)
    u8_noisy = (noisy(photo, 0.1) * 255).round().astype(np.uint8)
    as_tensor = [torch.from_numpy(x).permute(2, 0, 1).double() / 255 for x in (u8, u8_noisy)]
    ref = (psnr(u8, u8_noisy), ssim(u8, u8_noisy))
    for a, b in [(Image.fromarray(u8), Image.fromarray(u8_noisy)), as_tensor, [t[None] for t in as_tensor]]:
        assert (psnr(a, b), ssim(a, b)) == pytest.approx(ref, abs=1e-9)
    grey = Image.fromarray(u8).convert("L")
    assert ssim(grey, grey) == pytest.approx(1.0)


def test_shape_mismatch_is_a_clear_error(photo):
    with pytest.raises(SdkdError, match="same size"):
        psnr(photo, photo[:32])
    with pytest.raises(SdkdError, match="same size"):
        latent_mse(torch.zeros(4, 8, 8), torch.zeros(4, 4, 4))
