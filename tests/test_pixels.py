"""Resizing and the calibration distortions of vqlib.core.pixels: shapes, references, bad input."""

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from vqlib.core.pixels import add_noise, enlarge, gaussian_blur, shrink


def test_shrink_is_the_mean_of_each_block_for_images_and_videos():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 1, 8, 6)  # videos (B, T, C, H, W)
    small = shrink(x, 2)
    assert small.shape == (2, 3, 1, 4, 3)
    torch.testing.assert_close(small[1, 2, 0, 3, 1], x[1, 2, 0, 6:8, 2:4].mean())
    torch.testing.assert_close(shrink(x[:, 0], 2), small[:, 0])  # images (B, C, H, W)
    torch.testing.assert_close(shrink(x, 1), x)


def test_enlarge_keeps_constants_and_undoes_shrink_of_smooth_frames():
    flat = torch.full((1, 2, 1, 4, 4), 0.3)
    torch.testing.assert_close(enlarge(flat, 2), torch.full((1, 2, 1, 8, 8), 0.3))
    ramp = torch.linspace(0, 1, 16).repeat(16, 1).view(1, 1, 16, 16)  # a smooth image
    assert (enlarge(shrink(ramp, 2), 2) - ramp).abs()[..., 2:-2].max() < 0.02
    assert enlarge(torch.rand(2, 1, 5, 5), 3).shape == (2, 1, 15, 15)
    big = enlarge(torch.tensor([[[[0.0, 1.0], [1.0, 0.0]]]]), 4)
    assert big.min() >= 0 and big.max() <= 1  # bicubic overshoots; the result is clipped


@pytest.mark.parametrize("sigma", [1.0, 2.0])
def test_gaussian_blur_matches_scipy(sigma):
    torch.manual_seed(0)
    x = torch.rand(2, 2, 1, 16, 16, dtype=torch.float64)
    ours = gaussian_blur(x, sigma)
    theirs = gaussian_filter(x.numpy(), sigma=(0, 0, 0, sigma, sigma), mode="mirror", truncate=3.0)
    np.testing.assert_allclose(ours.numpy(), theirs, atol=1e-12)


def test_add_noise_is_seeded_clipped_and_of_the_given_spread():
    x = torch.full((4, 2, 1, 32, 32), 0.5)
    a, b = add_noise(x, 0.1, seed=3), add_noise(x, 0.1, seed=3)
    assert torch.equal(a, b) and not torch.equal(a, add_noise(x, 0.1, seed=4))
    assert abs((a - x).std().item() - 0.1) < 0.005
    assert add_noise(x, 2.0).min() >= 0 and add_noise(x, 2.0).max() <= 1
    torch.testing.assert_close(add_noise(x, 0.0), x)


def test_bad_input_gets_clear_errors():
    with pytest.raises(TypeError, match="float"):
        shrink(torch.zeros(1, 1, 4, 4, dtype=torch.uint8), 2)
    with pytest.raises(ValueError, match="non-empty batch"):
        enlarge(torch.zeros(4, 4), 2)
    with pytest.raises(ValueError, match="multiples of 2"):
        shrink(torch.zeros(1, 1, 5, 4), 2)
    with pytest.raises(ValueError, match="integer factor"):
        enlarge(torch.zeros(1, 1, 4, 4), 1.5)
    with pytest.raises(ValueError, match="sigma > 0"):
        gaussian_blur(torch.zeros(1, 1, 8, 8), 0)
    with pytest.raises(ValueError, match="too large"):
        gaussian_blur(torch.zeros(1, 1, 8, 8), 3.0)
    with pytest.raises(ValueError, match="sigma >= 0"):
        add_noise(torch.zeros(1, 1, 8, 8), -0.1)
