"""Small convolutional networks trained on the book's own photographs: offline stand-ins for VGG and Inception.

VQGAN's perceptual loss (LPIPS, Zhang et al. 2018) compares images in the features of a VGG-16
trained on ImageNet, and FID (Heusel et al. 2017) in the features of an Inception-v3. Neither set
of weights can be downloaded here, so chapter 5 trains two small networks on crops of the
training photographs (``vqlib.data.photos``), each on a self-supervised task that needs no labels but
the crops themselves:

- task ``"photo"``: which of the training photographs a crop was cut from (``len(TRAIN_PHOTOS)`` classes). A
  classifier, like VGG-16 is an ImageNet classifier: telling an astronaut's suit from a
  motorcycle's engine at several scales needs colour, edge and texture features. These drive the
  perceptual loss (``vqlib.losses.perceptual``).
- task ``"rotation"``: by how many quarter turns a crop was rotated (Gidaris et al. 2018, 4
  classes). Telling up from down needs edges, shading and the layout of a scene. Its pooled
  features judge the models (the Fréchet distance), so that no model is scored in the feature
  space it was trained to please.

What is in it: ``labelled_crops`` (crops with the index of their photograph), ``PhotoNetConfig``,
``PhotoNet`` (stages of two 3×3 convolutions and 2×2 average pooling; ``taps`` returns each
stage's activations, ``embed`` the pooled last stage), ``task_batch`` (the inputs and labels of a
task), ``train_photo_net`` (trained with ``vqlib.training.loop.fit``, cached), ``embed_images``.

Left out: everything that makes VGG and Inception strong (millions of labelled images, depth,
batch norm, augmentation); these networks know a handful of photographs and are only comparable within
the book.

Dimension key: B batch, N examples, S crop side, C channels, F feature width (the last stage).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from vqlib.core.inference import in_batches
from vqlib.core.profile import pick, seed_everything
from vqlib.data.photos import TRAIN_PHOTOS, bundled_photo, check_size, random_crops
from vqlib.training.checkpoints import checkpoint_path
from vqlib.training.loop import History, TrainConfig, fit

TASKS = ("photo", "rotation")


@functools.cache
def labelled_crops(n_per_photo: int, size: int, seed: int = 0) -> TensorDataset:
    """Crops of each training photograph with its index: x (N, 3, S, S) in [0, 1], labels (N,) long.

    N = n_per_photo · len(TRAIN_PHOTOS); photograph i is label i (``TRAIN_PHOTOS[i]``). The crops
    are drawn like ``vqlib.data.photos``' (random scales and positions, half mirrored) with other seeds.
    """
    if n_per_photo < 1:
        raise ValueError(f"n_per_photo must be >= 1, got {n_per_photo}")
    crops = [random_crops([bundled_photo(name)], n_per_photo, check_size(size), seed=1000 * (seed + 1) + i,
                          augment=True) for i, name in enumerate(TRAIN_PHOTOS)]
    x = torch.from_numpy(np.concatenate(crops)).permute(0, 3, 1, 2).float().div(255).contiguous()  # (N, 3, S, S)
    labels = torch.arange(len(TRAIN_PHOTOS)).repeat_interleave(n_per_photo)  # (N,)
    return TensorDataset(x, labels)


@dataclass(frozen=True)
class PhotoNetConfig:
    task: str = "photo"  # "photo" (which photograph) or "rotation" (how many quarter turns)
    widths: tuple[int, ...] = (32, 64, 128)  # channels of each stage; F = widths[-1]

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if not self.widths or min(self.widths) < 1:
            raise ValueError(f"widths must be a non-empty tuple of positive ints, got {self.widths}")

    @property
    def num_classes(self) -> int:
        return len(TRAIN_PHOTOS) if self.task == "photo" else 4

    @classmethod
    def for_profile(cls, task: str, profile: str | None = None, **overrides) -> PhotoNetConfig:
        widths = pick(smoke=(8, 16), quick=(16, 32, 32), full=(64, 128, 256), profile=profile)
        return dataclasses.replace(cls(task=task, widths=widths), **overrides)


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

    def taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each stage's activations, before its pooling: [(B, C_1, S, S), (B, C_2, S/2, S/2), ...]."""
        if not torch.is_tensor(x) or not x.is_floating_point() or x.dim() != 4 or x.shape[1] != 3 or not len(x):
            raise ValueError(f"expected float images (B, 3, S, S) in [0, 1] with B >= 1, got "
                             f"{tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}")
        out, h = [], x - 0.5  # centre the pixels
        for i, stage in enumerate(self.stages):
            h = stage(h if i == 0 else F.avg_pool2d(h, 2))
            out.append(h)
        return out

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage averaged over positions: (B, 3, S, S) -> (B, F)."""
        return self.taps(x)[-1].mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))  # (B, classes)


def task_batch(task: str, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets of a task. "rotation": all four rotations of every crop, (4B, ...) and (4B,)."""
    if task == "photo":
        return x, labels
    rotated = torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(4)])  # (4B, 3, S, S)
    return rotated, torch.arange(4, device=x.device).repeat_interleave(len(x))  # (4B,)


def photo_net_loss(model: PhotoNet, batch: tuple) -> dict[str, torch.Tensor]:
    x, y = task_batch(model.config.task, *batch)
    logits = model(x)
    return {"loss": F.cross_entropy(logits, y), "accuracy": (logits.argmax(1) == y).float().mean()}


@torch.no_grad()
def task_accuracy(model: PhotoNet, x: torch.Tensor, labels: torch.Tensor | None = None) -> float:
    """Accuracy of ``model`` on its task; "rotation" needs no labels (any images will do)."""
    labels = torch.zeros(len(x), dtype=torch.long) if labels is None else labels
    inputs, targets = task_batch(model.config.task, x, labels)
    predicted = in_batches(lambda b: model(b).argmax(1), model, inputs)
    return float((predicted == targets).float().mean())


def embed_images(model: PhotoNet, x: torch.Tensor) -> torch.Tensor:
    """``model.embed`` over many images in batches, in eval mode: (N, 3, S, S) -> (N, F) on the CPU."""
    return in_batches(model.embed, model, x)


def train_photo_net(task: str, size: int = 32, profile: str | None = None, **overrides) -> tuple[PhotoNet, History]:
    """A PhotoNet trained on crops of the training photographs for ``task``, cached.

    The evaluation is the task accuracy on other crops of the training photographs ("photo") or on
    crops of the validation photograph ("rotation"). ``overrides`` set fields of TrainConfig.
    """
    from vqlib.data.photos import photos

    config = PhotoNetConfig.for_profile(task, profile=profile)
    batch = pick(16, 32, 64, profile=profile) // (2 if task == "rotation" else 1)  # rotation: 4 copies of each crop
    train_config = TrainConfig(**{**dict(steps=pick(10, 200, 3000, profile=profile), batch_size=batch, lr=3e-3,
                                         cosine=True, log_every=pick(5, 25, 100, profile=profile),
                                         seed=TASKS.index(task)), **overrides})
    n = pick(16, 256, 1024, profile=profile)
    data = labelled_crops(n, size)
    held_out = labelled_crops(max(4, n // 8), size, seed=1)
    val = photos("val", size=size, profile=profile).tensors[0]
    seed_everything(train_config.seed)
    model = PhotoNet(config)
    eval_fn = (lambda m: {"accuracy": task_accuracy(m, *held_out.tensors)}) if task == "photo" else \
        (lambda m: {"accuracy": task_accuracy(m, val)})
    history = fit(model, photo_net_loss, data, train_config, eval_fn=eval_fn,
                  checkpoint=checkpoint_path(f"photo-net-{task}-{size}", config, train_config, {"n": n},
                                             profile=profile))
    return model, history
