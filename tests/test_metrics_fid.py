"""Fréchet distance: closed-form cases, a reference implementation, invariances, bad input."""

import pytest
import scipy.linalg
import torch

from vqlib.core.metrics import frechet_distance


def with_statistics(mean: torch.Tensor, cov: torch.Tensor, n: int = 500) -> torch.Tensor:
    """n points (n, F) whose sample mean and covariance are exactly ``mean`` and ``cov``."""
    x = torch.randn(n, len(mean), dtype=torch.float64)
    x = x - x.mean(0)
    x = x @ torch.linalg.inv(torch.linalg.cholesky(torch.atleast_2d(torch.cov(x.T)))).T  # sample covariance now I
    return x @ torch.linalg.cholesky(cov).T + mean


def test_one_dimension_is_mean_gap_squared_plus_std_gap_squared():
    a = with_statistics(torch.tensor([1.0], dtype=torch.float64), torch.tensor([[4.0]], dtype=torch.float64))
    b = with_statistics(torch.tensor([-2.0], dtype=torch.float64), torch.tensor([[9.0]], dtype=torch.float64))
    assert frechet_distance(a, b) == pytest.approx(3.0**2 + (2.0 - 3.0) ** 2, rel=1e-9)


def test_diagonal_covariances_have_a_closed_form():
    mean_a, mean_b = torch.randn(4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    var_a, var_b = torch.rand(4, dtype=torch.float64) + 0.5, torch.rand(4, dtype=torch.float64) + 0.5
    a, b = with_statistics(mean_a, var_a.diag()), with_statistics(mean_b, var_b.diag())
    expected = (mean_a - mean_b).pow(2).sum() + (var_a.sqrt() - var_b.sqrt()).pow(2).sum()
    assert frechet_distance(a, b) == pytest.approx(expected.item(), rel=1e-9)


def test_matches_scipy_sqrtm_for_full_covariances_and_is_symmetric():
    a, b = torch.randn(300, 6) @ torch.randn(6, 6), torch.randn(200, 6) @ torch.randn(6, 6) + 1
    mu_a, mu_b = a.double().mean(0).numpy(), b.double().mean(0).numpy()
    cov_a, cov_b = torch.cov(a.double().T).numpy(), torch.cov(b.double().T).numpy()
    reference = ((mu_a - mu_b) ** 2).sum() + (cov_a + cov_b - 2 * scipy.linalg.sqrtm(cov_a @ cov_b).real).trace()
    assert frechet_distance(a, b) == pytest.approx(reference, rel=1e-6)
    assert frechet_distance(b, a) == pytest.approx(reference, rel=1e-6)


def test_zero_for_equal_statistics_and_invariant_to_a_common_rotation():
    a, b = torch.randn(400, 5, dtype=torch.float64), torch.randn(300, 5, dtype=torch.float64) * 2
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    rotation = torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64))[0]
    assert frechet_distance(a @ rotation, b @ rotation) == pytest.approx(frechet_distance(a, b), rel=1e-9)


def test_bad_input():
    with pytest.raises(ValueError, match="widths differ"):
        frechet_distance(torch.randn(10, 3), torch.randn(10, 4))
    with pytest.raises(ValueError, match="N >= 2"):
        frechet_distance(torch.randn(1, 3), torch.randn(10, 3))
    with pytest.raises(ValueError, match=r"\(N, F\)"):
        frechet_distance(torch.randn(10), torch.randn(10, 3))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(torch.full((10, 3), float("nan")), torch.randn(10, 3))
