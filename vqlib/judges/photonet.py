"""A small convolutional network trained on the book's own photographs: an offline stand-in for VGG.

VQGAN's perceptual loss (LPIPS, Zhang et al. 2018) compares images in the features of a VGG-16
trained on ImageNet. Those weights cannot be downloaded here, so chapter 5 trains a small network
on the same training crops as its tokenizer (``vqlib.data.photos.photos("train", labelled=True)``:
crops of the bundled photographs and textures, labelled with their image; Flowers-102 with its 102
classes in ``full``) to tell the labels apart. A classifier, like VGG-16 is an ImageNet classifier:
telling brick from gravel, or an astronaut's suit from a motorcycle's engine, at several scales
needs colour, edge and texture features. These drive the perceptual loss (``vqlib.losses.perceptual``).

What is in it: ``PhotoNetConfig`` (``num_classes`` from ``vqlib.data.photos.num_labels``),
``PhotoNet`` (stages of two 3×3 convolutions and 2×2 average pooling; ``taps`` returns each
stage's activations, ``embed`` the pooled last stage), ``photo_net_loss``, ``accuracy``,
``train_photo_net`` (trained with ``vqlib.training.loop.fit`` on ``photos("train")``, its accuracy
measured on ``photos("val")``, cached) and ``embed_images``.

Left out: everything that makes VGG strong (millions of labelled images, depth, batch norm,
augmentation); this network knows a handful of images and is only comparable within the book.

Dimension key: B batch, N examples, S crop side, C channels, F feature width (the last stage).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vqlib.core.inference import in_batches
from vqlib.core.profile import pick, seed_everything
from vqlib.data.photos import num_labels, photos
from vqlib.training.checkpoints import checkpoint_path
from vqlib.training.loop import History, TrainConfig, fit


@dataclass(frozen=True)
class PhotoNetConfig:
    num_classes: int = 13  # labels of the training crops: vqlib.data.photos.num_labels(profile)
    widths: tuple[int, ...] = (32, 64, 128)  # channels of each stage; F = widths[-1]

    def __post_init__(self) -> None:
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
        if not self.widths or min(self.widths) < 1:
            raise ValueError(f"widths must be a non-empty tuple of positive ints, got {self.widths}")

    @classmethod
    def for_profile(cls, profile: str | None = None, **overrides) -> PhotoNetConfig:
        """The book's size for a profile, with as many classes as ``photos(..., labelled=True)`` has labels."""
        widths = pick(smoke=(8, 16), quick=(16, 32, 32), full=(64, 128, 256), profile=profile)
        return dataclasses.replace(cls(num_classes=num_labels(profile), widths=widths), **overrides)


class PhotoNet(nn.Module):
    """x (B, 3, S, S) in [0, 1] -> logits (B, classes); ``taps`` and ``embed`` give its features."""

    def __init__(self, config: PhotoNetConfig) -> None:
        super().__init__()
        self.config = config
        widths = (3,) + tuple(config.widths)
        self.stages = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(c_out, c_out, 3, padding=1), nn.ReLU())
            for c_in, c_out in zip(widths, widths[1:]))
        self.head = nn.Linear(widths[-1], config.num_classes)
        self.to(memory_format=torch.channels_last)  # on a CPU, narrow convolutions run faster channels-last

    def taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each stage's activations, before its pooling: [(B, C_1, S, S), (B, C_2, S/2, S/2), ...]."""
        if not torch.is_tensor(x) or not x.is_floating_point() or x.dim() != 4 or x.shape[1] != 3 or not len(x):
            raise ValueError(f"expected float images (B, 3, S, S) in [0, 1] with B >= 1, got "
                             f"{tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}")
        out, h = [], (x - 0.5).contiguous(memory_format=torch.channels_last)  # centre the pixels
        for i, stage in enumerate(self.stages):
            h = stage(h if i == 0 else F.avg_pool2d(h, 2))
            out.append(h)
        return out

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage averaged over positions: (B, 3, S, S) -> (B, F)."""
        return self.taps(x)[-1].mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))  # (B, classes)


def photo_net_loss(model: PhotoNet, batch: tuple) -> dict[str, torch.Tensor]:
    """Cross-entropy of the labels of a batch (x (B, 3, S, S), labels (B,)), and its accuracy."""
    x, y = batch
    logits = model(x)
    return {"loss": F.cross_entropy(logits, y), "accuracy": (logits.argmax(1) == y).float().mean()}


@torch.no_grad()
def hits(model: PhotoNet, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Whether ``model`` names each crop's label: (N,) float 0/1 on the CPU (mean: accuracy; for intervals)."""
    predicted = in_batches(lambda b: model(b).argmax(1), model, x)
    return (predicted == labels).float()


def embed_images(model: PhotoNet, x: torch.Tensor) -> torch.Tensor:
    """``model.embed`` over many images in batches, in eval mode: (N, 3, S, S) -> (N, F) on the CPU."""
    return in_batches(model.embed, model, x)


def photo_net_train_config(profile: str | None = None, **overrides) -> TrainConfig:
    """The PhotoNet's budget in steps (``overrides`` set fields of TrainConfig)."""
    return TrainConfig(**{**dict(steps=pick(10, 300, 3000, profile=profile), batch_size=pick(16, 32, 64, profile=profile),
                                 lr=3e-3, cosine=True, log_every=pick(5, 25, 100, profile=profile)), **overrides})


def train_photo_net(size: int, profile: str | None = None, **overrides) -> tuple[PhotoNet, History]:
    """A PhotoNet trained to name the label of ``photos("train", size, profile, labelled=True)`` crops, cached.

    The evaluation ("accuracy") is on ``photos("val", size, profile, labelled=True)``: unseen regions
    of the same images (Flowers-102 validation photographs in ``full``). ``overrides`` set fields of TrainConfig.
    """
    config = PhotoNetConfig.for_profile(profile)
    train_config = photo_net_train_config(profile, **overrides)
    data = photos("train", size, profile, labelled=True)
    val = photos("val", size, profile, labelled=True).tensors
    seed_everything(train_config.seed)
    model = PhotoNet(config)
    history = fit(model, photo_net_loss, data, train_config,
                  eval_fn=lambda m: {"accuracy": float(hits(m, *val).mean())},
                  checkpoint=checkpoint_path(f"photo-net-{size}", config, train_config, data=data, profile=profile))
    return model, history
