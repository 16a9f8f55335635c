"""Error bars (vqlib.core.metrics: Interval, bootstrap_ci, seed_ci) and the words computed from
them (vqlib.book.verdicts)."""

import pytest
import torch

from vqlib.book.verdicts import NO_CLEAR_DIFFERENCE, ranked, verdict
from vqlib.core.metrics import Interval, bootstrap_ci, psnr, seed_ci


def test_bootstrap_covers_the_true_mean_about_as_often_as_it_says():
    g = torch.Generator().manual_seed(0)
    hits = 0
    for trial in range(200):
        sample = torch.randn(60, generator=g, dtype=torch.float64) + 3.0
        ci = bootstrap_ci(sample, n_boot=500, seed=trial)
        hits += ci.low <= 3.0 <= ci.high
        assert ci.low < float(sample.mean()) < ci.high
    assert 0.88 <= hits / 200 <= 0.99  # a 95% interval of a mean of 60 normals


def test_paired_bootstrap_sees_a_small_consistent_margin_that_unpaired_misses():
    g = torch.Generator().manual_seed(1)
    item_difficulty = 5 * torch.randn(200, generator=g, dtype=torch.float64)  # large spread between items
    a = item_difficulty + 0.3 + 0.1 * torch.randn(200, generator=g, dtype=torch.float64)
    b = item_difficulty + 0.1 * torch.randn(200, generator=g, dtype=torch.float64)
    assert bootstrap_ci(a, b).sign == 1  # same items: the 0.3 margin is clear
    assert bootstrap_ci(a, b, paired=False).sign == 0  # as independent sets it drowns in the spread
    assert bootstrap_ci(b, a).sign == -1


def test_bootstrap_is_seeded_and_checks_its_input():
    x = torch.arange(10.0)
    assert bootstrap_ci(x) == bootstrap_ci(x.tolist())
    with pytest.raises(ValueError, match="equal lengths"):
        bootstrap_ci(x, x[:5])
    with pytest.raises(ValueError, match="NaN or inf"):
        bootstrap_ci(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="at least 2"):
        bootstrap_ci([1.0])
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci(x, level=95)


def test_bootstrap_of_another_statistic():
    x = torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 100.0])
    median = bootstrap_ci(x, stat=lambda v: v.median(-1).values)
    assert median.estimate == 0.0 and median.high <= 100.0


def test_seed_interval_is_students_t():
    ci = seed_ci([1.0, 2.0, 3.0])  # mean 2, sd 1, t(0.975, 2) = 4.303
    assert ci.estimate == pytest.approx(2.0)
    assert ci.high - 2.0 == pytest.approx(4.3027 / 3 ** 0.5, rel=1e-4)


def test_psnr_per_image_averages_to_psnr():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 1, 8, 8, generator=g)
    x_hat = (x + 0.05 * torch.randn(5, 1, 8, 8, generator=g)).clamp(0, 1)
    per = psnr(x, x_hat, reduction="none")
    assert per.shape == (5,) and torch.allclose(per.mean(), psnr(x, x_hat))
    with pytest.raises(ValueError, match="reduction"):
        psnr(x, x_hat, reduction="sum")


def test_verdict_words_follow_the_interval():
    assert verdict(Interval(0.5, 0.1, 0.9), "better", "worse") == "better"
    assert verdict(Interval(-0.5, -0.9, -0.1), "better", "worse") == "worse"
    assert verdict(Interval(0.1, -0.2, 0.4), "better", "worse") == NO_CLEAR_DIFFERENCE
    with pytest.raises(TypeError, match="Interval"):
        verdict(0.5, "better", "worse")


def test_ranked_names_the_winner_or_none():
    assert ranked("A", "B", Interval(0.42, 0.1, 0.73), unit=" dB") == \
        "A scores higher than B by 0.42 dB (95% interval 0.10 to 0.73 dB)"
    assert ranked("A", "B", Interval(-0.42, -0.73, -0.1)).startswith("B scores higher than A by 0.42")
    assert ranked("A", "B", Interval(0.1, -0.2, 0.4)).startswith(f"A and B show {NO_CLEAR_DIFFERENCE}")
    assert f"{Interval(1.0, 0.5, 1.5):.1f}" == "1.0 (95% interval 0.5 to 1.5)"
