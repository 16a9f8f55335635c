"""The judges of illustrated stories, trained on real panels: what a panel shows, and who drew it.

- ``PanelJudge``: one small CNN with five heads that reads a panel (B, 3, S, S) back into its digit,
  position, size, colour and style. Text faithfulness is how often it reads back what the panel's
  caption asked for; style control is how often it reads back the story's style.
- ``InstanceJudge``: a siamese network that says whether two panels show the same handwritten
  instance (the same character), whatever their position, size, colour and style. It does not see
  the panels as they are: ``ink_crop`` first finds the drawing (the pixels far from the background
  colour, the median of the border) and cuts it out as a square grey image, so the network compares
  shapes. Trained on pairs of one split's panels (same instance, or another writer's digit of the
  same class in the same style), it is scored on pairs of digits it never saw.

What is in it: the two networks, ``ink_crop``, their losses, ``panel_pairs`` (balanced pairs of
a set of stories' panels), ``read_panels`` and ``same_character`` (whole sets in batches), and
``train_panel_judge`` / ``train_instance_judge`` (``fit``, cached by configs and data).

Left out: calibration of the probabilities (the judges decide at 0.5) and augmentation.

Dimension key: N panels (or pairs), S panel side, F feature width, c crop side.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from vqlib.core.inference import in_batches
from vqlib.core.profile import pick
from vqlib.data.stories import POSITIONS, SIZES, Stories
from vqlib.training.checkpoints import checkpoint_path, data_digest
from vqlib.training.loop import History, TrainConfig, fit

HEADS = ("digit", "position", "size", "colour", "style")


def check_panels(x: torch.Tensor) -> None:
    """Raise unless x is a non-empty float batch of RGB panels (N, 3, S, S)."""
    if not torch.is_tensor(x) or not x.is_floating_point():
        got = x.dtype if torch.is_tensor(x) else type(x).__name__
        raise TypeError(f"expected float panels (N, 3, S, S) in [0, 1], got {got}")
    if x.dim() != 4 or x.shape[1] != 3 or x.shape[2] != x.shape[3] or len(x) == 0:
        raise ValueError(f"expected panels of shape (N, 3, S, S) with N >= 1, got {tuple(x.shape)}")


def conv_body(channels: tuple[int, int], feature_dim: int, in_channels: int) -> nn.Sequential:
    """Two conv/ReLU/2x2-pool stages, a 4x4 adaptive pool and a linear layer -> (N, F)."""
    c1, c2 = channels
    return nn.Sequential(nn.Conv2d(in_channels, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(4),
                         nn.Flatten(), nn.Linear(16 * c2, feature_dim), nn.ReLU())


# ----------------------------------------------------------------------------- what a panel shows

@dataclass(frozen=True)
class PanelJudgeConfig:
    colours: int  # number of colours of the stories
    styles: int  # number of styles
    channels: tuple[int, int] = (32, 64)
    feature_dim: int = 128

    @classmethod
    def for_profile(cls, colours: int, styles: int, profile: str | None = None) -> "PanelJudgeConfig":
        return cls(colours, styles, channels=pick((8, 16), (16, 32), (32, 64), profile=profile),
                   feature_dim=pick(32, 64, 128, profile=profile))

    def classes(self) -> dict[str, int]:
        return dict(zip(HEADS, (10, len(POSITIONS), len(SIZES), self.colours, self.styles)))


class PanelJudge(nn.Module):
    """Panels (N, 3, S, S) -> {head: logits (N, classes)} for the heads digit, position, size, colour, style.

    The digit is read from the drawing cut out by ``ink_crop`` (so a small digit in a corner is as
    legible as a large one in the middle), everything else from the whole panel.
    """

    def __init__(self, config: PanelJudgeConfig) -> None:
        super().__init__()
        self.config = config
        self.body = conv_body(config.channels, config.feature_dim, 3)
        self.digit_body = conv_body(config.channels, config.feature_dim, 1)
        self.heads = nn.ModuleDict({k: nn.Linear(config.feature_dim, n) for k, n in config.classes().items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        check_panels(x)
        h, shape = self.body(x), self.digit_body(ink_crop(x))  # (N, F) each
        return {k: head(shape if k == "digit" else h) for k, head in self.heads.items()}


def panel_labels(stories: Stories) -> dict[str, torch.Tensor]:
    """What every panel of ``stories`` shows: {head: (N·P,) long}, story after story."""
    p = stories.config.panels
    return {"digit": stories.digits.repeat_interleave(p), "position": stories.positions.flatten(),
            "size": stories.sizes.flatten(), "colour": stories.colours.flatten(),
            "style": stories.styles.repeat_interleave(p)}


def panel_judge_loss(model: PanelJudge, batch: tuple) -> dict[str, torch.Tensor]:
    """The sum of the heads' cross-entropies on a batch (panels, then one label tensor per head)."""
    x, *labels = batch
    logits = model(x)
    losses = {k: F.cross_entropy(logits[k], y) for k, y in zip(HEADS, labels)}
    return {"loss": sum(losses.values()), **{f"{k}_loss": v.detach() for k, v in losses.items()}}


def read_panels(model: PanelJudge, x: torch.Tensor, batch_size: int = 500) -> dict[str, torch.Tensor]:
    """What the judge reads in panels (N, 3, S, S): {head: (N,) long} on the CPU."""
    read = in_batches(lambda b: torch.stack([v.argmax(1) for v in model(b).values()], 1), model, x,
                      batch_size)  # (N, heads), in HEADS order
    return {k: read[:, i] for i, k in enumerate(HEADS)}


# ----------------------------------------------------------------------------- who drew it

def ink_crop(x: torch.Tensor, side: int = 16, threshold: float = 0.3) -> torch.Tensor:
    """The drawing of each panel cut out: panels (N, 3, S, S) -> grey crops (N, 1, c, c) in [0, 1].

    Ink is the distance of a pixel's colour from the background (the median colour of the border),
    divided by its largest value in the panel; the crop is the smallest square around the pixels
    above ``threshold``, with a one-pixel margin, resampled to ``side`` pixels.
    """
    check_panels(x)
    n, _, s, _ = x.shape
    border = torch.cat([x[..., 0, :], x[..., -1, :], x[..., :, 0], x[..., :, -1]], dim=-1)  # (N, 3, 4S)
    background = border.median(dim=-1).values[..., None, None]  # (N, 3, 1, 1)
    ink = (x - background).norm(dim=1, keepdim=True)  # (N, 1, S, S)
    ink = ink / ink.amax(dim=(2, 3), keepdim=True).clamp_min(1e-3)
    mask = ink[:, 0] > threshold  # (N, S, S)
    grid = torch.arange(s, device=x.device, dtype=x.dtype)
    rows, cols = mask.any(2), mask.any(1)  # (N, S) each
    empty = ~rows.any(1)  # (N,): no ink at all -> the whole panel
    rows[empty], cols[empty] = True, True
    big = torch.tensor(float(s), device=x.device, dtype=x.dtype)
    top, bottom = torch.where(rows, grid, big).amin(1), torch.where(rows, grid, -big).amax(1)  # (N,)
    left, right = torch.where(cols, grid, big).amin(1), torch.where(cols, grid, -big).amax(1)
    half = (torch.maximum(bottom - top, right - left) + 3) / 2  # half the square's side, margin included
    cy, cx = (top + bottom + 1) / 2, (left + right + 1) / 2  # centre, in pixels
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)  # maps the crop onto the panel
    theta[:, 0, 0] = theta[:, 1, 1] = half / (s / 2)
    theta[:, 0, 2], theta[:, 1, 2] = cx / (s / 2) - 1, cy / (s / 2) - 1
    grid2 = F.affine_grid(theta, (n, 1, side, side), align_corners=False)
    return F.grid_sample(ink, grid2, mode="bilinear", padding_mode="zeros", align_corners=False)  # (N, 1, c, c)


@dataclass(frozen=True)
class InstanceJudgeConfig:
    crop: int = 16  # c: side of the ink crops
    channels: tuple[int, int] = (32, 64)
    feature_dim: int = 64

    @classmethod
    def for_profile(cls, profile: str | None = None) -> "InstanceJudgeConfig":
        return cls(channels=pick((8, 16), (16, 32), (32, 64), profile=profile),
                   feature_dim=pick(16, 64, 128, profile=profile))


class InstanceJudge(nn.Module):
    """Two batches of panels (N, 3, S, S) -> the logit (N,) that each pair shows the same instance."""

    def __init__(self, config: InstanceJudgeConfig) -> None:
        super().__init__()
        self.config = config
        self.body = conv_body(config.channels, config.feature_dim, 1)
        self.head = nn.Sequential(nn.Linear(2 * config.feature_dim, config.feature_dim), nn.ReLU(),
                                  nn.Linear(config.feature_dim, 1))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if a.shape != b.shape:
            raise ValueError(f"need two batches of panels of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
        fa, fb = (self.body(ink_crop(v, self.config.crop)) for v in (a, b))  # (N, F) each
        return self.head(torch.cat([(fa - fb).abs(), fa * fb], dim=1))[:, 0]  # (N,) symmetric in a and b


def instance_judge_loss(model: InstanceJudge, batch: tuple) -> dict[str, torch.Tensor]:
    a, b, same = batch
    logits = model(a, b)
    return {"loss": F.binary_cross_entropy_with_logits(logits, same),
            "accuracy": ((logits > 0).float() == same).float().mean()}


def panel_pairs(stories: Stories, n: int, seed: int = 0) -> TensorDataset:
    """Up to ``n`` pairs of panels of ``stories``, half of them two panels of one story (the same
    instance), half a panel and a panel of another story whose character has the same class and style
    but is another instance (a story with no such other story gives no negative pair)
    -> TensorDataset(a (n', 3, S, S), b (n', 3, S, S), same (n',) float)."""
    rng = np.random.default_rng(seed)
    p = stories.config.panels
    key = (stories.digits * 100 + stories.styles).numpy()
    instances = stories.instances.numpy()
    first, second, same = [], [], []
    for k in range(n):
        i = int(rng.integers(len(stories)))
        if k % 2 == 0:
            j = i
        else:
            others = np.flatnonzero((key == key[i]) & (instances != instances[i]))
            if len(others) == 0:
                continue
            j = int(rng.choice(others))
        u, v = rng.choice(p, 2, replace=False) if j == i else rng.integers(p, size=2)
        first.append(stories.panels[i, u])
        second.append(stories.panels[j, v])
        same.append(float(j == i))
    return TensorDataset(torch.stack(first), torch.stack(second), torch.tensor(same))


def same_character(model: InstanceJudge, a: torch.Tensor, b: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """The judge's verdict on pairs of panels a, b (N, 3, S, S) -> (N,) bool on the CPU."""
    if a.shape != b.shape:
        raise ValueError(f"need two batches of panels of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return in_batches(lambda ab: model(ab[:, 0], ab[:, 1]) > 0, model, torch.stack([a, b], 1), batch_size)


# ----------------------------------------------------------------------------- training

def judge_train_config(profile: str | None = None, **overrides) -> TrainConfig:
    """The budget of each story judge."""
    defaults = dict(steps=pick(10, 600, 4000, profile=profile), batch_size=pick(16, 64, 128, profile=profile),
                    lr=2e-3, cosine=True, log_every=pick(5, 50, 200, profile=profile))
    return TrainConfig(**{**defaults, **overrides})


def train_panel_judge(stories: Stories, config: PanelJudgeConfig, train_config: TrainConfig,
                      decoded: torch.Tensor | None = None, progress: bool | None = None) -> tuple[PanelJudge, History]:
    """The panel judge trained on every panel of ``stories`` and, if given, on the tokenizer's
    reconstructions of the same panels ``decoded`` (N, P, 3, S, S), with the same labels (or loaded
    from the cache)."""
    labels = panel_labels(stories)
    panels = stories.panels.flatten(0, 1)
    if decoded is not None:
        panels = torch.cat([panels, decoded.flatten(0, 1)])  # (2·N·P, 3, S, S)
        labels = {k: v.repeat(2) for k, v in labels.items()}
    data = TensorDataset(panels, *(labels[k] for k in HEADS))
    model = PanelJudge(config)
    history = fit(model, panel_judge_loss, data, train_config, progress=progress,
                  checkpoint=checkpoint_path("ch10-panel-judge", config, train_config,
                                             {"data": data_digest(*data.tensors)}))
    return model.eval(), history


def train_instance_judge(stories: Stories, config: InstanceJudgeConfig, train_config: TrainConfig, pairs: int,
                         decoded: torch.Tensor | None = None,
                         progress: bool | None = None) -> tuple[InstanceJudge, History]:
    """The instance judge trained on ``pairs`` pairs of panels of ``stories`` and as many of their
    reconstructions ``decoded`` (N, P, 3, S, S) if given (or loaded from the cache)."""
    data = panel_pairs(stories, pairs, seed=train_config.seed)
    if decoded is not None:
        other = panel_pairs(dataclasses.replace(stories, panels=decoded), pairs, seed=train_config.seed + 1)
        data = TensorDataset(*(torch.cat([a, b]) for a, b in zip(data.tensors, other.tensors)))
    model = InstanceJudge(config)
    history = fit(model, instance_judge_loss, data, train_config, progress=progress,
                  checkpoint=checkpoint_path("ch10-instance-judge", config, train_config,
                                             {"data": data_digest(*data.tensors)}))
    return model.eval(), history
