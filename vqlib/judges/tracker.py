"""A video classifier that reads a Moving MNIST clip back into its caption: the judge of caption-conditioned video.

A caption-conditioned generator is scored the way Chapter 3 scores class-conditional digits: by a
network trained on real data, which it never saw. For a clip captioned "a 3 moves left while a 7
moves down" the judge must say which digits are in the clip and in which direction each one sets
off. It is a tracker in the loose sense: it reads identities and headings, not positions.

What it reads, per digit class: a **state** that is 0 (the class is absent) or 1 + d (present,
first moving in direction d of ``vqlib.data.mnist.DIRECTIONS``). A clip matches its caption when all 10
states are right, so a wrong digit, a missing one or a wrong heading is a mismatch. The clips of a
data set hold a known number M of digits, and the tracker reads the M classes it scores highest;
two digits of the same class with different headings have no single state (``motion_states``
keeps the first one's).

Two streams, one for what is there and one for where it goes. An **appearance** stream is a
small CNN applied to a few single frames whose class scores are averaged: the "single-frame"
model of Karpathy et al. (2014), who classify a video by averaging a frame classifier's
predictions. A **motion** stream stacks all the raw frames as the channels of its first
convolution, so each first-layer filter sees how its patch changes over time: Karpathy et al.'s
"early fusion". Splitting a video network into an appearance stream and a motion stream is the
idea of Simonyan & Zisserman's two-stream network (2014), and only the idea: their temporal stream
reads stacked *optical flow* computed beforehand, not raw frames, and their two streams classify
the same actions and their scores are averaged (or fed to an SVM), while here each stream answers its own question (the
appearance stream which classes, the motion stream each class's heading). Both streams end in a
global max-pool, so a digit is read wherever it is. The output is (B, Q, 1 + D): [..., 0] the
class scores, [..., 1:] the heading scores of each class. ``Tracker.features`` gives the pooled
activations of both streams (B, 2·w2), the feature space of the chapter's Fréchet distance and
diversity; ``tracker_features`` computes them for a whole set of clips.

Left out: optical flow, positions and bounding boxes, two digits of one class, and calibrated
confidences (Chapter 9 checks that its features rank known distortions of real clips).

Dimension key: B batch, T frames, C channels, S frame side, M digits per clip, Q digit classes,
D directions (the state has D + 1 values).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from vqlib.core.inference import in_batches
from vqlib.core.profile import pick
from vqlib.data.mnist import DIRECTIONS, MovingMNIST, caption
from vqlib.training.checkpoints import checkpoint_path
from vqlib.training.loop import History, TrainConfig, fit


@dataclass(frozen=True)
class TrackerConfig:
    frames: int  # T
    size: int  # S: frame side, a multiple of 4
    channels: int = 1  # C
    num_classes: int = 10  # Q: digit classes
    num_directions: int = len(DIRECTIONS)  # D
    num_digits: int = 1  # M: digits per clip; the tracker reads the M highest-scoring classes
    widths: tuple[int, int] = (16, 32)  # of the convolution stages of each stream
    hidden: int = 128  # width of the MLPs
    appearance_every: int = 4  # the appearance stream reads frames 0, a, 2a, ...

    def __post_init__(self) -> None:
        if self.frames < 1 or self.size < 4 or self.size % 4 or self.channels < 1:
            raise ValueError(f"need frames >= 1, channels >= 1 and a frame side that is a multiple of 4, got {self}")
        if not 1 <= self.num_digits <= self.num_classes or self.appearance_every < 1:
            raise ValueError(f"need 1 <= num_digits <= num_classes and appearance_every >= 1, got {self}")
        if self.num_directions < 1 or min(self.widths) < 1 or self.hidden < 1:
            raise ValueError(f"need positive class, direction and layer sizes, got {self}")

    @classmethod
    def for_profile(cls, frames: int, size: int, channels: int = 1, num_digits: int = 1,
                    profile: str | None = None, **overrides) -> "TrackerConfig":
        """The book's size for ``profile`` (default: the current one); ``overrides`` set any field."""
        widths = pick(smoke=(4, 8), quick=(16, 32), full=(32, 64), profile=profile)
        every = pick(smoke=4, quick=2, full=1, profile=profile)
        return dataclasses.replace(cls(frames, size, channels, num_digits=num_digits, widths=widths,
                                       appearance_every=every), **overrides)


def motion_states(labels: torch.Tensor, directions: torch.Tensor, num_classes: int = 10) -> torch.Tensor:
    """What a caption says, per digit class: labels, directions (N, M) long -> states (N, Q) long,
    0 = absent, 1 + d = present with initial direction d (the first such digit when a class repeats)."""
    if labels.shape != directions.shape or labels.dim() != 2:
        raise ValueError(f"labels and directions must both be (N, M), got {tuple(labels.shape)} and "
                         f"{tuple(directions.shape)}")
    states = torch.zeros(len(labels), num_classes, dtype=torch.long)  # (N, Q)
    for m in reversed(range(labels.shape[1])):  # reversed: the first digit of a class writes last
        states[torch.arange(len(labels)), labels[:, m]] = directions[:, m] + 1
    return states


def states_to_caption(states: torch.Tensor) -> str:
    """One clip's states (Q,) -> its caption, digits in increasing order ("" if no digit is present)."""
    present = [(q, int(s) - 1) for q, s in enumerate(states.tolist()) if s > 0]
    return caption(*zip(*present)) if present else ""


MLP_LAYERS = 3  # Linear, ReLU, Linear: the end of each stream after its global max-pool


def appearance_stream(channels: int, widths: tuple[int, int], hidden: int, outputs: int) -> nn.Sequential:
    """One frame (B, C, S, S) -> (B, outputs): 3×3 convolutions and 2×2 max-pools, a global max-pool, an MLP."""
    w1, w2 = widths
    return nn.Sequential(
        nn.Conv2d(channels, w1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, w1, S/2, S/2)
        nn.Conv2d(w1, w2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, w2, S/4, S/4)
        nn.Conv2d(w2, w2, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d(1), nn.Flatten(),  # (B, w2)
        nn.Linear(w2, hidden), nn.ReLU(), nn.Linear(hidden, outputs))


def motion_stream(in_channels: int, widths: tuple[int, int], hidden: int, outputs: int) -> nn.Sequential:
    """Frames stacked as channels (B, T·C, S, S) -> (B, outputs): strided 4×4 convolutions, a global max-pool, an MLP."""
    w1, w2 = widths
    return nn.Sequential(
        nn.Conv2d(in_channels, w1, 4, stride=2, padding=1), nn.ReLU(),  # (B, w1, S/2, S/2)
        nn.Conv2d(w1, w2, 4, stride=2, padding=1), nn.ReLU(),  # (B, w2, S/4, S/4)
        nn.Conv2d(w2, w2, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d(1), nn.Flatten(),  # (B, w2)
        nn.Linear(w2, hidden), nn.ReLU(), nn.Linear(hidden, outputs))


class Tracker(nn.Module):
    """Clips (B, T, C, S, S) in [0, 1] -> logits (B, Q, 1 + D): class scores, then each class's heading scores."""

    def __init__(self, config: TrackerConfig) -> None:
        super().__init__()
        self.config = config
        q, d = config.num_classes, config.num_directions
        self.appearance = appearance_stream(config.channels, config.widths, config.hidden, q)
        self.motion = motion_stream(config.frames * config.channels, config.widths, config.hidden, q * d)

    def check(self, videos: torch.Tensor) -> None:
        c = self.config
        expected = (c.frames, c.channels, c.size, c.size)
        if not torch.is_tensor(videos) or not videos.is_floating_point():
            got = videos.dtype if torch.is_tensor(videos) else type(videos).__name__
            raise TypeError(f"expected float clips (B, {', '.join(map(str, expected))}) in [0, 1], got {got}")
        if videos.dim() != 5 or tuple(videos.shape[1:]) != expected or len(videos) == 0:
            raise ValueError(f"expected clips of shape (B, {', '.join(map(str, expected))}) with B >= 1, "
                             f"got {tuple(videos.shape)}")

    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        self.check(videos)
        b, q, d = len(videos), self.config.num_classes, self.config.num_directions
        frames = videos[:, :: self.config.appearance_every]  # (B, T', C, S, S)
        classes = self.appearance(frames.flatten(0, 1)).view(b, -1, q).mean(1)  # (B, Q) averaged over frames
        headings = self.motion(videos.flatten(1, 2)).view(b, q, d)  # (B, Q, D)
        return torch.cat([classes[:, :, None], headings], dim=2)  # (B, Q, 1 + D)

    def features(self, videos: torch.Tensor) -> torch.Tensor:
        """The global max-pooled activations of both streams, before their MLPs: (B, T, C, S, S) -> (B, 2·w2),
        the appearance half averaged over the frames that stream reads."""
        self.check(videos)
        frames = videos[:, :: self.config.appearance_every]  # (B, T', C, S, S)
        look = self.appearance[:-MLP_LAYERS](frames.flatten(0, 1)).view(len(videos), frames.shape[1], -1)
        move = self.motion[:-MLP_LAYERS](videos.flatten(1, 2))  # (B, w2)
        return torch.cat([look.mean(1), move], dim=1)  # (B, 2·w2)


def logits_to_states(logits: torch.Tensor, num_digits: int) -> torch.Tensor:
    """The M classes with the highest scores, each with its best heading: (B, Q, 1 + D) -> states (B, Q) long."""
    top = logits[..., 0].topk(num_digits, dim=1).indices  # (B, M)
    headings = logits[..., 1:].argmax(-1) + 1  # (B, Q)
    states = torch.zeros(logits.shape[:2], dtype=torch.long, device=logits.device)  # (B, Q)
    return states.scatter(1, top, headings.gather(1, top))


def tracker_loss(model: Tracker, batch: tuple) -> dict[str, torch.Tensor]:
    """Loss for a batch (videos, states): which classes are present, and the heading of each present one."""
    videos, states = batch
    logits = model(videos)  # (B, Q, 1 + D)
    present = states > 0  # (B, Q)
    # which classes: cross-entropy against the M present classes, each with weight 1/M
    classes = F.cross_entropy(logits[..., 0], present.float() / present.sum(1, keepdim=True))
    headings = F.cross_entropy(logits[..., 1:][present], states[present] - 1)  # of the present classes only
    read = logits_to_states(logits.detach(), model.config.num_digits)
    return {"loss": classes + headings, "classes": classes.detach(), "headings": headings.detach(),
            "clip_accuracy": (read == states).all(1).float().mean()}


def read_states(model: Tracker, videos: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """The tracker's reading of clips (N, T, C, S, S) -> states (N, Q) long, on the CPU."""
    return in_batches(lambda v: logits_to_states(model(v), model.config.num_digits), model, videos, batch_size)


def tracker_features(model: Tracker, videos: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """``model.features`` of a whole set of clips (N, T, C, S, S) -> (N, 2·w2), on the CPU."""
    return in_batches(model.features, model, videos, batch_size)


def caption_match(model: Tracker, videos: torch.Tensor, labels: torch.Tensor,
                  directions: torch.Tensor) -> torch.Tensor:
    """Which clips (N, T, C, S, S) show what their captions say: labels, directions (N, M) -> (N,) bool."""
    if len(videos) != len(labels):
        raise ValueError(f"expected one caption per clip, got {len(labels)} for {len(videos)} clips")
    truth = motion_states(labels, directions, model.config.num_classes)  # (N, Q)
    return (read_states(model, videos) == truth).all(1)


def tracker_train_config(profile: str | None = None) -> TrainConfig:
    """How the tracker is trained in each profile."""
    return TrainConfig(steps=pick(smoke=10, quick=400, full=4000, profile=profile),
                       batch_size=pick(smoke=16, quick=64, full=128, profile=profile),
                       lr=2e-3, cosine=True, log_every=pick(smoke=5, quick=50, full=100, profile=profile))


def train_tracker(data: MovingMNIST, config: TrackerConfig, train_config: TrainConfig, name: str,
                  test: MovingMNIST | None = None, progress: bool | None = None) -> tuple[Tracker, History]:
    """Train a tracker on real clips ``data`` (or load it from the checkpoint cache).

    ``test`` adds the fraction of its clips read right (``clip_accuracy``) to the evaluations.
    -> (model in eval mode, history).
    """
    model = Tracker(config)
    states = motion_states(data.labels, data.directions, config.num_classes)  # (N, Q)
    eval_fn = None if test is None else (lambda m: {
        "clip_accuracy": caption_match(m, test.videos, test.labels, test.directions).float().mean().item()})
    train = TensorDataset(data.videos, states)
    history = fit(model, tracker_loss, train, train_config, eval_fn=eval_fn,
                  progress=progress, checkpoint=checkpoint_path(name, config, train_config, data=train))
    return model.eval(), history
