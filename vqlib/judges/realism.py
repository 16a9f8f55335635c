"""Realism judges that need no pretrained weights, and their calibration on known distortions.

A reconstruction can be close to its original in squared error and still look wrong: blurred (the
fine detail missing) or speckled (detail that was never there). Two measures see this directly,
with nothing downloaded:

- **the spectrum**: an image's power in rings of spatial frequency (``band_power``). A blurred
  reconstruction has less power than the originals in the high bands, speckle more; a realistic one
  the same (``band_power_ratio`` near 1 in every band). ``spectral_error`` is, per image, the mean
  over bands of |log2(power of the reconstruction / power of its original)|: 0 for the originals,
  1 for a factor of two off on average.
- **a classifier two-sample test** (Lopez-Paz and Oquab 2017, "Revisiting classifier two-sample
  tests"): a small CNN is trained to tell real crops from generated ones on half of the crops and
  tested on the other half (``two_sample_test``). Its held-out accuracy is 50 % when the two sets are
  indistinguishable to it and near 100 % when it finds a tell-tale difference; its held-out
  cross-entropy gives a lower bound on the Jensen–Shannon divergence between the two sets, which
  keeps growing with the difference after the accuracy has reached 100 %. Crop i and its
  reconstruction are always in the same half, so the network is never tested on a crop whose twin
  it learned from.

A judge is used only if it ranks known distortions of the same images at the same sample size in
the obvious order (``calibration``, ``ranks_distortions``): blur σ=1 below σ=2, noise 0.05 below 0.1,
JPEG quality 75 below 25 (``DISTORTIONS``, from ``vqlib.core.pixels``). Every score here is "higher
is worse".

Left out: learned perceptual judges (LPIPS, FID with Inception weights, Zhang et al. 2018 and Heusel
et al. 2017) need downloaded weights; the book's own feature spaces are in ``vqlib.judges.photonet``.

Dimension key: N images, C channels (3), H W height and width, K frequency bands.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from vqlib.core.pixels import add_noise, gaussian_blur, jpeg

DISTORTIONS: tuple[tuple[str, float], ...] = (("blur", 1.0), ("blur", 2.0), ("noise", 0.05), ("noise", 0.1),
                                              ("jpeg", 75), ("jpeg", 25))  # each family from mild to strong
FAMILY_NAMES = {"blur": "blur σ={:g}", "noise": "noise σ={:g}", "jpeg": "JPEG q={:g}"}


def _check_images(x: torch.Tensor, name: str) -> None:
    if not torch.is_tensor(x) or not x.is_floating_point() or x.dim() != 4 or x.shape[1] != 3 or len(x) < 2:
        raise ValueError(f"{name} must be float RGB images (N, 3, H, W) in [0, 1] with N >= 2, got "
                         f"{tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf")


def _check_pair(x_hat: torch.Tensor, x: torch.Tensor) -> None:
    _check_images(x_hat, "x_hat")
    _check_images(x, "x")
    if x_hat.shape != x.shape:
        raise ValueError(f"x_hat and x must be the same images, got shapes {tuple(x_hat.shape)} and {tuple(x.shape)}")


# ----------------------------------------------------------------------------- known distortions

def distortion_name(kind: str, level: float) -> str:
    """("blur", 1.0) -> "blur σ=1", ("jpeg", 25) -> "JPEG q=25"."""
    if kind not in FAMILY_NAMES:
        raise ValueError(f"unknown distortion {kind!r}: expected one of {sorted(FAMILY_NAMES)}")
    return FAMILY_NAMES[kind].format(level)


def distort(x: torch.Tensor, kind: str, level: float, seed: int = 0) -> torch.Tensor:
    """A known distortion of images x (N, 3, H, W) in [0, 1]: "blur" (σ in pixels), "noise" (σ), "jpeg" (quality)."""
    _check_images(x, "x")
    if kind == "blur":
        return gaussian_blur(x, level)
    if kind == "noise":
        return add_noise(x, level, seed=seed)
    if kind == "jpeg":
        return jpeg(x, int(level))
    raise ValueError(f"unknown distortion {kind!r}: expected 'blur', 'noise' or 'jpeg'")


def calibration(score: Callable[[torch.Tensor], float], x: torch.Tensor,
                distortions: Sequence[tuple[str, float]] = DISTORTIONS) -> dict[str, float]:
    """``score`` (higher is worse) of each known distortion of x (N, 3, H, W): {"blur σ=1": ..., ...}.

    ``score`` takes distorted copies of x (the same N images, so the sample size is the one the
    judge will see) and returns a number, e.g. ``lambda d: float(spectral_error(d, x).mean())``.
    """
    return {distortion_name(kind, level): float(score(distort(x, kind, level))) for kind, level in distortions}


def ranks_distortions(table: dict[str, float], distortions: Sequence[tuple[str, float]] = DISTORTIONS) -> bool:
    """True if, in every family, the score grows with the strength of the distortion (in ``distortions``' order)."""
    families: dict[str, list[float]] = {}
    for kind, level in distortions:
        families.setdefault(kind, []).append(table[distortion_name(kind, level)])
    return all(a < b for scores in families.values() for a, b in zip(scores, scores[1:]))


# ----------------------------------------------------------------------------- the spectrum

def band_power(x: torch.Tensor, bands: int = 4) -> torch.Tensor:
    """Mean power |FFT|² of each image (mean removed, channels averaged) in ``bands`` rings of frequency: (N, K).

    The rings split radii 0 to 0.5 cycles per pixel (Nyquist) evenly; the corners beyond 0.5 join the
    last ring, and the constant term (the mean colour) is left out.
    """
    _check_images(x, "x")
    if not isinstance(bands, int) or bands < 1:
        raise ValueError(f"bands must be a positive int, got {bands!r}")
    h, w = x.shape[-2:]
    centred = x.double() - x.double().mean(dim=(-2, -1), keepdim=True)
    power = torch.fft.fft2(centred).abs().pow(2).mean(1) / (h * w)  # (N, H, W)
    radius = torch.hypot(torch.fft.fftfreq(h, dtype=torch.float64)[:, None],
                         torch.fft.fftfreq(w, dtype=torch.float64)[None, :])  # (H, W) cycles per pixel
    ring = (radius / 0.5 * bands).floor().clamp(max=bands - 1).long()  # (H, W)
    ring[0, 0] = -1  # the constant term
    empty = [b for b in range(bands) if not (ring == b).any()]
    if empty:
        raise ValueError(f"{h}×{w} images have no frequencies in band(s) {empty} of {bands}: use fewer bands "
                         "or larger images")
    return torch.stack([power[:, ring == b].mean(-1) for b in range(bands)], dim=1)  # (N, K)


def band_power_ratio(x_hat: torch.Tensor, x: torch.Tensor, bands: int = 4) -> torch.Tensor:
    """Power of the reconstructions over power of the originals in each band, over all images: (K,).

    Below 1 in the high bands: blur; above 1: speckle or noise; 1 everywhere: the originals' spectrum.
    """
    _check_pair(x_hat, x)
    return band_power(x_hat, bands).mean(0) / band_power(x, bands).mean(0)


def spectral_error(x_hat: torch.Tensor, x: torch.Tensor, bands: int = 4) -> torch.Tensor:
    """Per image, the mean over bands of |log2(band power of x_hat / band power of x)|: (N,), 0 is exact.

    A flat original (no power in a band) would make the ratio undefined: such bands get a floor of
    1e-12 on both sides, so an exact copy still scores 0.
    """
    _check_pair(x_hat, x)
    ratio = (band_power(x_hat, bands) + 1e-12) / (band_power(x, bands) + 1e-12)  # (N, K)
    return ratio.log2().abs().mean(1)


# ----------------------------------------------------------------------------- the two-sample test

class TwoSample(NamedTuple):
    """A classifier two-sample test on M held-out images (both images of every held-out pair).

    ``accuracy``: the share classified right (0.5: indistinguishable). ``divergence``: 1 minus the
    held-out cross-entropy in bits, a lower bound on the Jensen–Shannon divergence between the two
    sets in bits (0: indistinguishable, 1: told apart with certainty; slightly below 0 when the network
    guesses confidently and wrong). It keeps ranking distortions after the accuracy reaches 100 %,
    because a clearer difference makes the network surer. ``hits`` and ``bits`` (M,): each held-out
    image's share of both, for bootstrap intervals.
    """

    accuracy: float
    divergence: float
    hits: torch.Tensor
    bits: torch.Tensor


class RealOrFake(nn.Module):
    """The two-sample test's classifier: three 3×3 convolutions of stride 2 and a pooled linear
    read-out, x (B, 3, H, W) -> logit (B,) that the image is real. Pooling over positions makes it
    look at statistics every patch shares (sharpness, grain, colour), not at where things are."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, stride=2, padding=1), nn.ReLU(),
                                  nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
                                  nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Linear(2 * width, 1)
        self.to(memory_format=torch.channels_last)  # on a CPU, narrow convolutions run about twice as fast

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body((x - 0.5).contiguous(memory_format=torch.channels_last))
        return self.head(h.mean(dim=(2, 3))).squeeze(1)


def two_sample_test(real: torch.Tensor, fake: torch.Tensor, seed: int = 0, steps: int = 300, batch_size: int = 32,
                    lr: float = 3e-3, width: int = 8) -> TwoSample:
    """Train ``RealOrFake`` on half of the pairs (real[i], fake[i]) and test it on the other half.

    real, fake (N, 3, H, W) in [0, 1]: the same N crops and their reconstructions (or any two sets of
    equal size). The halves, the network's initial weights and its batches come from ``seed``;
    training runs a fixed number of ``steps`` of Adam, ``batch_size`` real and as many fake images
    each, and changes no global random state. Returns the held-out accuracy (0.5: indistinguishable),
    the divergence bound (0: indistinguishable) and their per-image values (``TwoSample``).
    """
    _check_pair(fake, real)
    if len(real) < 4:
        raise ValueError(f"a two-sample test needs at least 4 pairs (2 to train on, 2 to test), got {len(real)}")
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps} and {batch_size}")
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(real), generator=g)
    train, test = order[: len(real) // 2], order[len(real) // 2:]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = RealOrFake(width)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    target = torch.cat([torch.ones(batch_size), torch.zeros(batch_size)])  # (2B,)
    for _ in range(steps):
        pick = train[torch.randint(len(train), (batch_size,), generator=g)]
        loss = F.binary_cross_entropy_with_logits(net(torch.cat([real[pick], fake[pick]]).float()), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        logits = net(torch.cat([real[test], fake[test]]).float()).double()  # (2M,)
    labels = torch.cat([torch.ones(len(test)), torch.zeros(len(test))]).double()
    hits = ((logits > 0).double() == labels).double()
    bits = 1 - F.binary_cross_entropy_with_logits(logits, labels, reduction="none") / math.log(2)
    return TwoSample(float(hits.mean()), float(bits.mean()), hits, bits)
