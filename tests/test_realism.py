import math

import pytest
import torch

from vqlib.core.pixels import jpeg
from vqlib.judges import realism


def textured(n=32, size=16, seed=0):
    """Images with detail at every frequency: smoothed noise plus fine noise, in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.nn.functional.interpolate(torch.rand(n, 3, size // 4, size // 4, generator=g), size=size,
                                             mode="bilinear", align_corners=False)
    return (0.7 * coarse + 0.3 * torch.rand(n, 3, size, size, generator=g)).clamp(0, 1)


def test_jpeg_loses_more_at_lower_quality_and_checks_its_input():
    x = textured()
    errors = [float((jpeg(x, q) - x).abs().mean()) for q in (95, 75, 25, 5)]
    assert errors == sorted(errors) and errors[-1] > 2 * errors[0]
    smooth = torch.nn.functional.interpolate(x[:, :, ::4, ::4], size=16, mode="bilinear", align_corners=False)
    assert float((jpeg(smooth, 95) - smooth).abs().mean()) < 0.02  # little to lose in a smooth image
    assert jpeg(x, 50).shape == x.shape and jpeg(x.unsqueeze(1), 50).shape == (32, 1, 3, 16, 16)  # videos too
    with pytest.raises(ValueError, match="1 to 95"):
        jpeg(x, 100)
    with pytest.raises(ValueError, match="RGB"):
        jpeg(x[:, :1], 50)


def test_band_power_puts_a_wave_in_its_ring_and_leaves_out_the_mean():
    size = 32
    cols = torch.arange(size, dtype=torch.float64)
    for cycles, ring in ((2, 0), (14, 3)):  # 2/32 = 0.06 cycles per pixel: ring 0 of 4; 14/32 = 0.44: ring 3
        wave = 0.5 + 0.4 * torch.cos(2 * math.pi * cycles * cols / size)
        x = wave.expand(2, 3, size, size).float()
        power = realism.band_power(x, bands=4)[0]
        assert int(power.argmax()) == ring and power.sum() > 0
        assert power[torch.arange(4) != ring].max() < 1e-6 * power[ring]
    flat = torch.full((2, 3, 16, 16), 0.3)
    assert realism.band_power(flat).abs().max() < 1e-12
    with pytest.raises(ValueError, match="no frequencies in band"):
        realism.band_power(flat[..., :8, :8], bands=4)


def test_spectrum_sees_blur_below_one_and_noise_above_one():
    x = textured(size=32)
    assert realism.spectral_error(x, x).abs().max() < 1e-9
    blur, noise = realism.distort(x, "blur", 1.0), realism.distort(x, "noise", 0.1)
    assert realism.band_power_ratio(blur, x)[-1] < 0.5 < 2 < realism.band_power_ratio(noise, x)[-1]
    table = realism.calibration(lambda d: float(realism.spectral_error(d, x).mean()), x)
    assert list(table) == ["blur σ=1", "blur σ=2", "noise σ=0.05", "noise σ=0.1", "JPEG q=75", "JPEG q=25"]
    assert realism.ranks_distortions(table)
    with pytest.raises(ValueError, match="same images"):
        realism.spectral_error(x[:4], x[:5])


def test_ranks_distortions_needs_every_family_in_order():
    table = {"blur σ=1": 1.0, "blur σ=2": 2.0, "noise σ=0.05": 1.0, "noise σ=0.1": 3.0, "JPEG q=75": 0.1,
             "JPEG q=25": 0.2}
    assert realism.ranks_distortions(table)
    assert not realism.ranks_distortions({**table, "JPEG q=25": 0.1})  # a tie is not a ranking
    assert not realism.ranks_distortions({**table, "blur σ=2": 0.5})
    with pytest.raises(ValueError, match="unknown distortion"):
        realism.distort(textured(), "sharpen", 1.0)


def test_two_sample_test_is_at_chance_on_identical_sets_and_sure_on_noisy_ones():
    x = textured(n=48)
    before = torch.random.get_rng_state()
    same = realism.two_sample_test(x, x.clone(), steps=40)
    assert torch.equal(torch.random.get_rng_state(), before)  # no global random state used
    assert same.accuracy == 0.5 and same.divergence <= 1e-9  # twins get the same logit: one of each right
    assert same.hits.shape == same.bits.shape == (48,)  # both images of the 24 held-out pairs
    noisy = realism.two_sample_test(x, realism.distort(x, "noise", 0.3), steps=150)
    assert noisy.accuracy > 0.9 and noisy.divergence > 0.5
    again = realism.two_sample_test(x, realism.distort(x, "noise", 0.3), steps=150)
    assert again.accuracy == noisy.accuracy and torch.equal(again.bits, noisy.bits)  # seeded
    with pytest.raises(ValueError, match="at least 4 pairs"):
        realism.two_sample_test(x[:3], x[:3])
    with pytest.raises(ValueError, match="same images"):
        realism.two_sample_test(x, x[:10])
    with pytest.raises(ValueError, match="NaN"):
        realism.two_sample_test(x, x * float("nan"))
