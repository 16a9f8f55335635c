"""A small MNIST classifier: the judge of generated digits.

A generative model is scored by a network it never saw. Two scores come from this classifier:

- *accuracy on class-conditional samples*: ask the model for a 3, check the classifier reads a 3;
- *Fréchet distance* (``vqlib.core.metrics.frechet_distance``) between the classifier's penultimate
  features of generated and of real digits. Heusel et al. (2017) compute it on Inception-v3
  features of photographs (FID); for MNIST a small classifier trained on MNIST is the usual
  stand-in. Its values are comparable only within the book: same classifier, same sample counts.

What is in it: ``Classifier`` (two conv/pool stages and an MLP; LeCun et al. 1998 in spirit),
``features``, ``hits`` and ``accuracy`` for whole datasets in batches, ``frechet_interval`` (the
distance, or a difference of two, with a bootstrap interval over the samples), and the recipe
``train_mnist_classifier`` (trained with ``vqlib.training.loop.fit``, or loaded from the checkpoint cache).

Left out: data augmentation, batch norm, and calibration (the confidences are not calibrated).

Dimension key: B batch, C channels, H W height and width (28), F feature width, N examples.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vqlib.core.inference import in_batches
from vqlib.core.metrics import Interval, bootstrap_ci, frechet_distance
from vqlib.core.profile import pick, seed_everything
from vqlib.training.checkpoints import checkpoint_path
from vqlib.training.loop import History, TrainConfig, fit


@dataclass(frozen=True)
class ClassifierConfig:
    num_classes: int = 10  # digits
    channels: tuple[int, int] = (32, 64)  # of the two conv stages (each: 3x3 conv, ReLU, 2x2 max-pool)
    feature_dim: int = 128  # F: the penultimate layer, whose activations the Fréchet distance compares
    dropout: float = 0.25  # before the last layer, while training

    def __post_init__(self) -> None:
        if self.num_classes < 2 or min(self.channels) < 1 or self.feature_dim < 1:
            raise ValueError(f"need num_classes >= 2 and positive widths, got {self}")

    @classmethod
    def for_profile(cls, profile: str | None = None, **overrides) -> "ClassifierConfig":
        """The MNIST config sized for ``profile`` (default: the current one); ``overrides`` set any field."""
        channels = pick(smoke=(8, 16), quick=(16, 32), full=(32, 64), profile=profile)
        return dataclasses.replace(cls(channels=channels), **overrides)


def check_digits(x: torch.Tensor) -> None:
    """Raise unless x is a non-empty float batch of MNIST-sized images (B, 1, 28, 28)."""
    if not torch.is_tensor(x) or not x.is_floating_point():
        got = x.dtype if torch.is_tensor(x) else type(x).__name__
        raise TypeError(f"expected float images (B, 1, 28, 28) in [0, 1], got {got}")
    if x.dim() != 4 or x.shape[1:] != (1, 28, 28) or x.shape[0] == 0:
        raise ValueError(f"expected images of shape (B, 1, 28, 28) with B >= 1, got {tuple(x.shape)}")


class Classifier(nn.Module):
    """x (B, 1, 28, 28) -> logits (B, num_classes); ``features`` gives the penultimate layer (B, F)."""

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        self.config = config
        c1, c2 = config.channels
        self.body = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, c1, 14, 14)
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, c2, 7, 7)
            nn.Flatten(), nn.Linear(c2 * 7 * 7, config.feature_dim), nn.ReLU())  # (B, F)
        self.head = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(config.feature_dim, config.num_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations: x (B, 1, 28, 28) -> (B, F)."""
        check_digits(x)
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (B, num_classes)


def classifier_loss(model: Classifier, batch: tuple) -> dict[str, torch.Tensor]:
    """Cross-entropy of a batch (x, y), with the batch accuracy for the log."""
    x, y = batch
    logits = model(x)  # (B, num_classes)
    return {"loss": F.cross_entropy(logits, y), "accuracy": (logits.argmax(1) == y).float().mean()}


def features(model: Classifier, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Penultimate features of a whole set of images x (N, 1, 28, 28) -> (N, F), on the CPU."""
    return in_batches(model.features, model, x, batch_size)


def predict(model: Classifier, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Predicted classes of images x (N, 1, 28, 28) -> (N,) long, on the CPU."""
    return in_batches(lambda b: model(b).argmax(1), model, x, batch_size)


def hits(model: Classifier, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Per image, 1.0 if its predicted class equals its label, else 0.0: x (N, 1, 28, 28), y (N,) -> (N,).

    The per-item values a bootstrap interval of an accuracy resamples (``bootstrap_ci``).
    """
    if y.shape != (len(x),):
        raise ValueError(f"expected one label per image, shape ({len(x)},), got {tuple(y.shape)}")
    return (predict(model, x, batch_size) == y.cpu()).float()


def accuracy(model: Classifier, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> float:
    """Fraction of images x (N, 1, 28, 28) whose predicted class equals y (N,)."""
    return hits(model, x, y, batch_size).mean().item()


def frechet_interval(samples: torch.Tensor, real: torch.Tensor, other: torch.Tensor | None = None,
                     n_boot: int = 200, level: float = 0.95, seed: int = 0) -> Interval:
    """Fréchet distance between features ``samples`` (N, F) and ``real`` (M, F), with a bootstrap
    interval over the samples; with ``other`` (N', F), of the difference FD(samples) - FD(other), each
    set of samples resampled on its own (``bootstrap_ci(..., paired=False)``).

    The real features stay fixed: the interval is the spread due to which samples were drawn,
    not due to which real digits were compared with. A resample repeats some samples, which
    shrinks their spread, so the distance of one resampled set is biased upwards and its interval
    may lie above the estimate; in a difference of two sets the bias largely cancels, so give
    verdicts from differences. Each resample costs one distance, so ``n_boot`` is smaller than
    ``bootstrap_ci``'s default.
    """
    pool = samples if other is None else torch.cat([samples, other])  # (N + N', F)

    def distance(rows: torch.Tensor) -> torch.Tensor:  # rows: (N,) or (n_boot, N) indices into pool
        rows = rows.long()
        if rows.dim() == 1:
            return torch.tensor(frechet_distance(pool[rows], real), dtype=torch.float64)
        return torch.tensor([frechet_distance(pool[r], real) for r in rows], dtype=torch.float64)

    first = torch.arange(len(samples), dtype=torch.float64)
    second = None if other is None else len(samples) + torch.arange(len(other), dtype=torch.float64)
    return bootstrap_ci(first, second, paired=False, stat=distance, n_boot=n_boot, level=level, seed=seed)


def mnist_classifier_train_config(profile: str | None = None) -> TrainConfig:
    """How the classifier is trained in each profile."""
    return TrainConfig(steps=pick(smoke=20, quick=400, full=3000, profile=profile),
                       batch_size=pick(smoke=64, quick=64, full=128, profile=profile),
                       lr=pick(smoke=2e-3, quick=2e-3, full=1e-3, profile=profile))


def train_mnist_classifier(profile: str | None = None, progress: bool | None = None,
                           seed: int | None = None) -> tuple[Classifier, History]:
    """Train the classifier on the MNIST train split, or load it from the checkpoint cache.

    ``seed`` None: the book's classifier (initial weights and batch order from its TrainConfig's
    seed, so it is the same model whichever chapter trains it first). An integer: another classifier, trained the same way from that seed
    (initial weights and batch order) and cached under its own name: a second judge for the same
    metrics, to see how much a score depends on the network that computes it.
    -> (model in eval mode, history); the history's eval record holds the validation split's
    ``accuracy`` (a chapter reports the test accuracy, once).
    """
    from vqlib.data.mnist import mnist

    config = ClassifierConfig.for_profile(profile)
    train_config = mnist_classifier_train_config(profile)
    name = "mnist-classifier"
    if seed is not None:
        train_config, name = dataclasses.replace(train_config, seed=seed), "mnist-classifier-seeded"
    seed_everything(train_config.seed)
    val = mnist("val", profile).tensors  # x (N, 1, 28, 28), y (N,)
    model = Classifier(config)
    train = mnist("train", profile)
    history = fit(model, classifier_loss, train, train_config, progress=progress,
                  eval_fn=lambda m: {"accuracy": accuracy(m, *val)},
                  checkpoint=checkpoint_path(name, config, train_config, data=train, profile=profile))
    return model, history
