"""Running a trained model: in eval mode, without gradients, in batches on its device.

``evaluating(model)`` switches a model to eval mode and restores its mode afterwards (dropout off,
EMA codebooks frozen, BatchNorm statistics fixed); ``in_batches`` applies a function to a large
tensor batch by batch on the model's device (``vqlib.core.device``) and gathers the results on the
CPU; ``reconstruct`` does so with an autoencoder, whose output has an ``x_hat`` field.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn

from vqlib.core.device import model_device, to_device


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """``with evaluating(model):`` runs the block in eval mode, then restores the model's mode."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@torch.no_grad()
def in_batches(fn: Callable[..., torch.Tensor], model: nn.Module, x: torch.Tensor | tuple[torch.Tensor, ...],
               batch_size: int = 500) -> torch.Tensor:
    """fn applied to x (N, ...) in batches on the model's device, in eval mode, concatenated on the CPU.
    ``x`` may be a tuple of tensors of N rows each: ``fn`` then takes one batch of each."""
    xs = x if isinstance(x, tuple) else (x,)
    if len({len(t) for t in xs}) != 1:
        raise ValueError(f"the tensors given to in_batches must have equal lengths, got {[len(t) for t in xs]}")
    device = model_device(model)
    with evaluating(model):
        return torch.cat([fn(*(to_device(t[i:i + batch_size], device) for t in xs)).cpu()
                          for i in range(0, len(xs[0]), batch_size)])


def reconstruct(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """An autoencoder's reconstructions ``model(x).x_hat`` of images x (N, C, H, W), clipped to [0, 1], on the CPU."""
    return in_batches(lambda batch: model(batch).x_hat.clamp(0, 1), model, x, batch_size)  # (N, C, H, W)
