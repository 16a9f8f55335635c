import math

import pytest
import torch

from vqlib.core import metrics


def test_psnr_known_value_and_per_image_mean():
    x = torch.zeros(2, 1, 4, 4)
    x_hat = x.clone()
    x_hat[0] += 0.1  # mse 0.01 -> 20 dB
    x_hat[1] += 0.01  # mse 1e-4 -> 40 dB
    assert metrics.psnr(x, x_hat).item() == pytest.approx(30.0, abs=1e-4)


def test_psnr_matches_torchmetrics_per_image():
    from torchmetrics.functional.image import peak_signal_noise_ratio

    x, x_hat = torch.rand(3, 3, 8, 8), torch.rand(3, 3, 8, 8)
    per_image = peak_signal_noise_ratio(x_hat, x, data_range=1.0, reduction="none", dim=(1, 2, 3))
    torch.testing.assert_close(metrics.psnr(x, x_hat), per_image.mean())


def test_ssim_is_one_for_identical_images_and_lower_for_noise():
    x = torch.rand(2, 1, 16, 16)
    assert metrics.ssim(x, x).item() == pytest.approx(1.0, abs=1e-5)
    assert metrics.ssim(x, (x + 0.3 * torch.randn_like(x)).clamp(0, 1)).item() < 0.9


@pytest.mark.parametrize("fn", [metrics.psnr, metrics.ssim])
def test_image_metrics_refuse_mismatched_or_empty(fn):
    with pytest.raises(ValueError, match="same shape"):
        fn(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 5))
    with pytest.raises(ValueError, match="non-empty batch"):
        fn(torch.zeros(0, 1, 4, 4), torch.zeros(0, 1, 4, 4))


def test_code_counts_usage_and_perplexity():
    counts = metrics.code_counts([torch.tensor([[0, 1], [1, 3]]), torch.tensor([3, 3])], codebook_size=5)
    assert counts.tolist() == [1, 2, 0, 3, 0]
    assert metrics.codebook_usage(counts) == pytest.approx(3 / 5)
    p = torch.tensor([1, 2, 3]) / 6
    assert metrics.perplexity(counts) == pytest.approx(math.exp(-(p * p.log()).sum().item()))
    assert metrics.perplexity(torch.full((8,), 5)) == pytest.approx(8.0)
    assert metrics.perplexity(torch.tensor([0, 9, 0])) == pytest.approx(1.0)


def test_code_counts_bad_indices():
    with pytest.raises(TypeError, match="torch.long"):
        metrics.code_counts(torch.tensor([0.0, 1.0]), 4)
    with pytest.raises(ValueError, match=r"\[0, 4\).*\[0, 4\]"):
        metrics.code_counts(torch.tensor([0, 4]), 4)


def test_code_bits():
    assert metrics.code_bits((7, 7), 256) == 7 * 7 * 8
    assert metrics.code_bits((4, 8, 8), 1024) == 4 * 8 * 8 * 10


def test_usage_ci_matches_a_brute_force_bias_corrected_bootstrap_and_the_plain_usage():
    torch.manual_seed(0)
    codes = torch.randint(0, 40, (30, 2, 3))  # (N, h, w) the code maps of 30 items
    other = torch.randint(0, 12, (30, 2, 3))
    usage = lambda c, k: metrics.codebook_usage(metrics.code_counts(c, k))  # noqa: E731
    draws = torch.randint(30, (200, 30), generator=torch.Generator().manual_seed(3))  # the resampled items
    levels = torch.tensor([0.025, 0.975], dtype=torch.float64)
    for got, want, boot in (
            (metrics.usage_ci(codes, 50, n_boot=200, seed=3), usage(codes, 50),
             [usage(codes[r], 50) for r in draws]),
            (metrics.usage_ci(codes, 50, other, 16, n_boot=200, seed=3), usage(codes, 50) - usage(other, 16),
             [usage(codes[r], 50) - usage(other[r], 16) for r in draws])):  # paired: the same items
        boot = torch.tensor(boot, dtype=torch.float64)
        low, high = torch.quantile(boot, levels) - (boot.mean() - want)  # shifted by the bootstrap's bias
        assert got.estimate == pytest.approx(want)
        assert (got.low, got.high) == (pytest.approx(low.item()), pytest.approx(high.item()))
        assert got.low <= got.estimate <= got.high
    single = torch.tensor([usage(codes[r], 50) for r in draws])
    assert single.mean() < usage(codes, 50)  # resamples hold fewer distinct items: biased down


def test_usage_ci_of_items_that_all_use_the_same_codes_has_no_spread():
    codes = torch.tensor([[0, 1, 2]]).repeat(10, 1)  # every item uses codes 0, 1 and 2
    got = metrics.usage_ci(codes, 6, n_boot=100)
    assert (got.estimate, got.low, got.high) == (0.5, 0.5, 0.5)


def test_usage_ci_bad_input():
    codes = torch.arange(15).view(5, 3) % 4  # (5, 3) codes 0 to 3
    with pytest.raises(TypeError, match="torch.long"):
        metrics.usage_ci(codes.float(), 4)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        metrics.usage_ci(codes, 3)
    with pytest.raises(ValueError, match="other_size"):
        metrics.usage_ci(codes, 4, codes)
    with pytest.raises(ValueError, match="same number of items"):
        metrics.usage_ci(codes, 4, codes[:4], 4)
    with pytest.raises(ValueError, match="N >= 2"):
        metrics.usage_ci(codes[:1], 4)
    with pytest.raises(ValueError, match="n_boot"):
        metrics.usage_ci(codes, 4, n_boot=10)
