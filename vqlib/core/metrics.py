"""Metrics used across the book: image quality, codebook health, code size.

Dimension key: B batch, C channels, H W height and width, K codebook size.

- ``psnr``: peak signal-to-noise ratio per image, averaged over the batch (higher is better).
- ``ssim``: structural similarity (Wang et al., 2004), from torchmetrics.
- ``perplexity``: exp of the entropy of code usage: K if all codes are used equally, 1 if one is.
  It depends on how many indices it sees, so compare it only at equal counts.
- ``code_counts`` / ``codebook_usage``: how often each code is used over a whole dataset pass, and
  the fraction of codes used at least once: the honest measure of a collapsed codebook.
- ``code_bits``: the size of one image's code, H·W·log2 K bits.
- ``frechet_distance``: the Fréchet distance between Gaussians fitted to two sets of features
  (Heusel et al., 2017: FID when the features are Inception-v3's); lower is closer, 0 for equal
  statistics. It is biased upwards at small sample counts, so compare it only at equal counts.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch


def _check_pair(x: torch.Tensor, x_hat: torch.Tensor) -> None:
    if x.shape != x_hat.shape:
        raise ValueError(f"x and x_hat must have the same shape, got {tuple(x.shape)} and {tuple(x_hat.shape)}")
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"expected a non-empty batch (B, ...), got shape {tuple(x.shape)}")


def psnr(x: torch.Tensor, x_hat: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Mean over the batch of 10·log10(range² / MSE) per image. x, x_hat: (B, ...) -> scalar (dB)."""
    _check_pair(x, x_hat)
    mse = (x.float() - x_hat.float()).pow(2).flatten(1).mean(1)  # (B,)
    if not torch.isfinite(mse).all():  # NaN or inf anywhere reaches its image's error
        bad_x, bad_hat = int((~torch.isfinite(x)).sum()), int((~torch.isfinite(x_hat)).sum())
        raise ValueError(f"psnr needs finite images, but x has {bad_x} and x_hat {bad_hat} NaN or inf values: "
                         "check the model's output (did training diverge?)")
    return (10 * torch.log10(data_range**2 / mse.clamp_min(1e-12))).mean()


def ssim(x: torch.Tensor, x_hat: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Mean structural similarity (Gaussian window 11, σ 1.5). x, x_hat: (B, C, H, W) -> scalar."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    _check_pair(x, x_hat)
    return structural_similarity_index_measure(x_hat.float(), x.float(), data_range=data_range)


def code_counts(indices: torch.Tensor | Iterable[torch.Tensor], codebook_size: int) -> torch.Tensor:
    """How many times each of the K codes occurs in ``indices`` (a tensor or an iterable of them). -> (K,)"""
    chunks = [indices] if torch.is_tensor(indices) else list(indices)
    counts = torch.zeros(codebook_size, dtype=torch.long)
    for idx in chunks:
        if idx.dtype != torch.long:
            raise TypeError(f"indices must be torch.long, got {idx.dtype}")
        if idx.numel() and (idx.min() < 0 or idx.max() >= codebook_size):
            raise ValueError(f"indices must lie in [0, {codebook_size}), got range "
                             f"[{int(idx.min())}, {int(idx.max())}]")
        counts += torch.bincount(idx.flatten().cpu(), minlength=codebook_size)
    return counts


def perplexity(counts: torch.Tensor) -> float:
    """exp(entropy) of the code distribution given by ``counts`` (K,): between 1 and K."""
    p = counts.double() / counts.sum().clamp_min(1)
    return math.exp(-(p * p.clamp_min(1e-30).log()).sum().item())


def codebook_usage(counts: torch.Tensor) -> float:
    """Fraction of codes used at least once, from counts (K,) over a whole dataset pass."""
    return (counts > 0).double().mean().item()


def code_bits(latent_shape: tuple[int, ...], codebook_size: int) -> float:
    """Bits of one code map of ``latent_shape`` (e.g. (H, W) or (T, H, W)): positions · log2 K."""
    return math.prod(latent_shape) * math.log2(codebook_size)


def _sqrtm_psd(matrix: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix (F, F), by eigendecomposition."""
    eigenvalues, eigenvectors = torch.linalg.eigh(matrix)
    return (eigenvectors * eigenvalues.clamp_min(0).sqrt()) @ eigenvectors.T


def frechet_distance(feats_a: torch.Tensor, feats_b: torch.Tensor) -> float:
    """|mu_a - mu_b|² + tr(S_a + S_b - 2 (S_a S_b)^½) of features (N, F) and (M, F), in float64.

    (S_a S_b)^½ is not symmetric; its trace equals that of the symmetric (S_a^½ S_b S_a^½)^½,
    whose eigenvalues are real and non-negative, so no complex square root is needed.
    """
    for name, f in (("feats_a", feats_a), ("feats_b", feats_b)):
        if f.dim() != 2 or f.shape[0] < 2:
            raise ValueError(f"{name} must be (N, F) features with N >= 2, got shape {tuple(f.shape)}")
        if not torch.isfinite(f).all():
            raise ValueError(f"{name} contains NaN or inf")
    if feats_a.shape[1] != feats_b.shape[1]:
        raise ValueError(f"feature widths differ: {feats_a.shape[1]} and {feats_b.shape[1]}")
    a, b = feats_a.detach().double().cpu(), feats_b.detach().double().cpu()
    mu_a, mu_b = a.mean(0), b.mean(0)  # (F,)
    cov_a, cov_b = torch.atleast_2d(torch.cov(a.T)), torch.atleast_2d(torch.cov(b.T))  # (F, F), also for F = 1
    root_a = _sqrtm_psd(cov_a)
    cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp_min(0).sqrt().sum()
    return float((mu_a - mu_b).pow(2).sum() + cov_a.trace() + cov_b.trace() - 2 * cross)
