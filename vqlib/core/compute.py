"""What running or training a model costs: network evaluations and floating-point operations.

- ``count_forward_calls``: counts the forward calls of a module inside a ``with`` block (one call of
  a model's output head per network evaluation, e.g. per decoding step of a sampler).
- ``step_flops``: the floating-point operations of one training step (forward and backward), counted
  by ``torch.utils.flop_counter``; two models trained for equal operations get steps in the ratio of
  their ``step_flops`` (Chapter 7 sets MaskGIT's budget from the GPT's this way).
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Callable, Iterator, Mapping

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


class CallCounter:
    count: int = 0


@contextmanager
def count_forward_calls(module: nn.Module) -> Iterator[CallCounter]:
    """Count the forward calls of ``module`` inside the ``with`` block (e.g. a model's output head:
    one call per network evaluation, for the GPT with or without its cache and for MaskGIT)."""
    counter = CallCounter()

    def hook(*_) -> None:
        counter.count += 1

    handle = module.register_forward_hook(hook)
    try:
        yield counter
    finally:
        handle.remove()


def step_flops(model: nn.Module, loss_fn: Callable[[nn.Module, tuple], Mapping[str, torch.Tensor]],
               batch: tuple) -> int:
    """Floating-point operations of one training step's forward and backward pass of ``model`` with
    ``loss_fn`` on ``batch`` (counted by ``torch.utils.flop_counter`` on a copy: the model is untouched)."""
    net = copy.deepcopy(model).train()
    with FlopCounterMode(display=False) as counter:
        loss_fn(net, batch)["loss"].backward()
    return counter.get_total_flops()


def call_flops(fn: Callable[[], object]) -> int:
    """Floating-point operations of calling ``fn()`` once (counted by ``torch.utils.flop_counter``:
    matrix products, convolutions and attention), e.g. of sampling with and without a model's cache.
    A count of operations, the same on every machine, unlike a measured time."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()
