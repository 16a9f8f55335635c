"""Metrics used across the book: image quality, codebook health, code size.

Dimension key: B batch, C channels, H W height and width, K codebook size.

- ``psnr``: peak signal-to-noise ratio per image, averaged over the batch (higher is better).
- ``ssim``: structural similarity (Wang et al., 2004), from torchmetrics.
- ``perplexity``: exp of the entropy of code usage: K if all codes are used equally, 1 if one is.
  It depends on how many indices it sees, so compare it only at equal counts.
- ``code_counts`` / ``codebook_usage``: how often each code is used over a whole dataset pass, and
  the fraction of codes used at least once: the honest measure of a collapsed codebook.
- ``code_bits``: the size of one image's code, H·W·log2 K bits.
- ``Interval``, ``bootstrap_ci`` and ``seed_ci``: how sure a measured number is. ``bootstrap_ci``
  resamples the test items (paired when two models scored the same items); ``seed_ci`` is the
  Student-t interval of a quantity measured over several training seeds; ``usage_ci`` resamples
  the items whose codes a codebook usage counts.
- ``frechet_distance``: the Fréchet distance between Gaussians fitted to two sets of features
  (Heusel et al., 2017: FID when the features are Inception-v3's); lower is closer, 0 for equal
  statistics. It is biased upwards at small sample counts, so compare it only at equal counts.
- ``group_spread``: the mean pairwise distance between the items of each group (e.g. the samples
  drawn for one caption): a diversity score, compared at equal group sizes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch


def _check_pair(x: torch.Tensor, x_hat: torch.Tensor) -> None:
    if x.shape != x_hat.shape:
        raise ValueError(f"x and x_hat must have the same shape, got {tuple(x.shape)} and {tuple(x_hat.shape)}")
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"expected a non-empty batch (B, ...), got shape {tuple(x.shape)}")


def psnr(x: torch.Tensor, x_hat: torch.Tensor, data_range: float = 1.0, reduction: str = "mean") -> torch.Tensor:
    """10·log10(range² / MSE) per image, averaged over the batch. x, x_hat: (B, ...) -> scalar (dB),
    or (B,) with ``reduction="none"`` (for ``bootstrap_ci``)."""
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    _check_pair(x, x_hat)
    mse = (x.float() - x_hat.float()).pow(2).flatten(1).mean(1)  # (B,)
    if not torch.isfinite(mse).all():  # NaN or inf anywhere reaches its image's error
        bad_x, bad_hat = int((~torch.isfinite(x)).sum()), int((~torch.isfinite(x_hat)).sum())
        raise ValueError(f"psnr needs finite images, but x has {bad_x} and x_hat {bad_hat} NaN or inf values: "
                         "check the model's output (did training diverge?)")
    per_image = 10 * torch.log10(data_range**2 / mse.clamp_min(1e-12))  # (B,)
    return per_image if reduction == "none" else per_image.mean()


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


def group_spread(feats: torch.Tensor, groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean Euclidean distance between the distinct pairs of items of each group.

    feats (N, F), groups (N,) long group labels -> (labels (G,), spread (G,) float64), for the G groups
    with at least 2 items, labels in increasing order. A model that draws the same sample for every
    request of a group scores 0. Like every distance, it grows with the number of features and their
    scale: compare it only in one feature space, and at equal group sizes.
    """
    if feats.dim() != 2 or groups.shape != (len(feats),):
        raise ValueError(f"expected features (N, F) and one group label per row (N,), got "
                         f"{tuple(feats.shape)} and {tuple(groups.shape)}")
    if groups.dtype != torch.long:
        raise TypeError(f"groups must be torch.long labels, got {groups.dtype}")
    if not torch.isfinite(feats).all():
        raise ValueError("feats contains NaN or inf")
    f, groups = feats.detach().double().cpu(), groups.cpu()
    labels, counts = groups.unique(return_counts=True)
    labels = labels[counts >= 2]
    if not len(labels):
        raise ValueError("no group has 2 or more items: a spread needs pairs")
    spread = []
    for label in labels:
        d = torch.cdist(f[groups == label], f[groups == label])  # (n, n), 0 on the diagonal
        n = len(d)
        spread.append(d.sum() / (n * (n - 1)))
    return labels, torch.stack(spread)


# ----------------------------------------------------------------------------- error bars

@dataclass(frozen=True)
class Interval:
    """A measured ``estimate`` with its ``level`` confidence interval [``low``, ``high``]."""

    estimate: float
    low: float
    high: float
    level: float = 0.95

    @property
    def sign(self) -> int:
        """+1 if the whole interval lies above 0, -1 if below, 0 if it contains 0 (no clear difference)."""
        return 1 if self.low > 0 else -1 if self.high < 0 else 0

    def text(self, spec: str = ".3g", unit: str = "") -> str:
        """``ci.text(".2f", " dB")`` -> "0.42 dB (95% interval 0.10 to 0.73 dB)"."""
        return (f"{self.estimate:{spec}}{unit} ({100 * self.level:.0f}% interval "
                f"{self.low:{spec}} to {self.high:{spec}}{unit})")

    def __format__(self, spec: str) -> str:
        """``f"{ci:.2f}"`` is ``ci.text(".2f")``."""
        return self.text(spec or ".3g")

    def __neg__(self) -> "Interval":
        return Interval(-self.estimate, -self.high, -self.low, self.level)


def _as_vector(values: torch.Tensor | Sequence[float], name: str) -> torch.Tensor:
    v = torch.as_tensor(values, dtype=torch.float64).detach().cpu()
    if v.dim() != 1 or len(v) < 2:
        raise ValueError(f"{name} must be a 1-D sequence of at least 2 numbers, got shape {tuple(v.shape)}")
    if not torch.isfinite(v).all():
        raise ValueError(f"{name} contains NaN or inf")
    return v


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")


def bootstrap_ci(values: torch.Tensor | Sequence[float], other: torch.Tensor | Sequence[float] | None = None, *,
                 paired: bool = True, stat: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> Interval:
    """Percentile bootstrap interval of ``stat`` (default: the mean) of per-item ``values`` (N,).

    With ``other``, of the difference stat(values) - stat(other): ``paired`` (the default) when
    both score the same N items (e.g. two models' PSNR on the same test images; the pairs are
    resampled together), else each set is resampled on its own (e.g. two sets of samples). The
    resampling is seeded, so the same numbers give the same interval on every machine.
    """
    _check_level(level)
    if n_boot < 100:
        raise ValueError(f"n_boot must be at least 100, got {n_boot}")
    stat = stat or (lambda v: v.mean(-1))
    a = _as_vector(values, "values")
    b = None if other is None else _as_vector(other, "other")
    if b is not None and paired and len(b) != len(a):
        raise ValueError(f"paired values need equal lengths, got {len(a)} and {len(b)} (pass paired=False "
                         "for two independent sets)")
    g = torch.Generator().manual_seed(seed)
    draw_a = torch.randint(len(a), (n_boot, len(a)), generator=g)
    if b is None:
        boot, estimate = stat(a[draw_a]), stat(a)
    else:
        draw_b = draw_a if paired else torch.randint(len(b), (n_boot, len(b)), generator=g)
        boot, estimate = stat(a[draw_a]) - stat(b[draw_b]), stat(a) - stat(b)
    low, high = torch.quantile(boot, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64))
    return Interval(float(estimate), float(low), float(high), level)


def usage_ci(codes: torch.Tensor, codebook_size: int, other: torch.Tensor | None = None,
             other_size: int | None = None, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> Interval:
    """Bootstrap interval of the codebook usage of ``codes`` (N, ...) long, the codes of N items (e.g.
    the code maps of N test images) over ``codebook_size`` codes; with ``other`` (N, ...), the codes of
    the same N items under another model with ``other_size`` codes, of usage(codes) - usage(other),
    the items resampled together (paired).

    A resample repeats some items and so holds fewer distinct ones: its usage is biased downwards,
    and a plain percentile interval can miss the estimate altogether. The percentile interval is
    therefore shifted by the bootstrap's bias, mean(resampled) - estimate, so that it describes the
    spread of the estimate around itself.
    """
    _check_level(level)
    if n_boot < 100:
        raise ValueError(f"n_boot must be at least 100, got {n_boot}")
    sets = [(codes, codebook_size, "codes")] + ([] if other is None else [(other, other_size, "other")])
    if other is not None and (other_size is None or len(other) != len(codes)):
        raise ValueError(f"other needs other_size and the same number of items as codes ({len(codes)}), "
                         f"got {len(other)} items and other_size={other_size!r}")
    presence = []  # (N, K) per set: 1 where an item uses a code
    for c, size, name in sets:
        if not torch.is_tensor(c) or c.dim() < 1 or len(c) < 2:
            raise ValueError(f"{name} must be a tensor (N, ...) of the codes of N >= 2 items, got "
                             f"{tuple(c.shape) if torch.is_tensor(c) else type(c).__name__}")
        code_counts(c, size)  # checks the dtype and the range of the codes
        rows = torch.arange(len(c)).repeat_interleave(c[0].numel())
        presence.append(torch.zeros(len(c), size).index_put_((rows, c.flatten().cpu()), torch.tensor(1.0)))
    n = len(codes)

    def usage(weights: torch.Tensor) -> torch.Tensor:  # (B, N) multiplicity of each item -> (B,) usage
        used = [((weights @ p) > 0).double().mean(1) for p in presence]  # (B,) per set
        return used[0] - used[1] if len(used) == 2 else used[0]

    draws = torch.randint(n, (n_boot, n), generator=torch.Generator().manual_seed(seed))  # (n_boot, N)
    boot = usage(torch.zeros(n_boot, n).scatter_add_(1, draws, torch.ones(n_boot, n)))  # (n_boot,)
    estimate = usage(torch.ones(1, n))[0]
    bias = boot.mean() - estimate
    low, high = torch.quantile(boot, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)) - bias
    return Interval(float(estimate), float(low), float(high), level)


def seed_ci(values: torch.Tensor | Sequence[float], level: float = 0.95) -> Interval:
    """Student-t interval of the mean of a quantity measured once per training seed (N >= 2 seeds);
    for a difference between two methods, pass the per-seed differences."""
    from scipy.stats import t  # scipy comes with scikit-learn

    _check_level(level)
    v = _as_vector(values, "values")
    half = float(t.ppf((1 + level) / 2, len(v) - 1)) * float(v.std(unbiased=True)) / math.sqrt(len(v))
    mean = float(v.mean())
    return Interval(mean, mean - half, mean + half, level)
