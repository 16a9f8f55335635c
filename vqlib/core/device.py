"""One device for a model and its data: ``to_device`` moves a batch, ``model_device`` says where a model is.

The book's device rule: a model and the data it reads live on one device, the one
``vqlib.default_device()`` picks (CUDA, then Apple's MPS, then the CPU); batches go there through
``to_device``, and results come back to the CPU (``.cpu()``) only to be plotted, printed or
gathered. Modules never pick a device themselves: they follow their inputs.

- ``to_device(obj, device)``: a tensor, a module, a ``TensorDataset``, or a tuple, list, named
  tuple or dict of these (nested), with every tensor on ``device``; anything else is returned as is.
- ``model_device(model)``: the one device of a model's parameters and buffers, or an error that says
  which devices it is spread over.

The device sentinel (``VQLIB_DEVICE_SENTINEL=1``) checks the rule on a machine without a GPU. It
stands a dtype in for the device: ``to_device`` then also turns floating tensors into float64 and
modules into double precision. Whatever went through the helper is "on the device" (float64);
a tensor that never did stays float32, and where it meets a model that ``fit`` moved, PyTorch
raises a dtype mismatch at the line where CUDA would raise a device mismatch. Only for tests: the
numbers change, and checkpoints written in this mode hold float64 weights.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping
from typing import TypeVar

import torch
from torch import nn
from torch.utils.data import TensorDataset

T = TypeVar("T")

SENTINEL = "VQLIB_DEVICE_SENTINEL"


def sentinel_on() -> bool:
    """True when ``$VQLIB_DEVICE_SENTINEL`` is set (and not ``0``): ``to_device`` marks what it moves as float64."""
    return os.environ.get(SENTINEL, "") not in ("", "0")


def _move(t: torch.Tensor, device: torch.device, non_blocking: bool) -> torch.Tensor:
    if t.is_floating_point() and sentinel_on():
        return t.to(device, dtype=torch.float64, non_blocking=non_blocking)
    return t.to(device, non_blocking=non_blocking)


def to_device(obj: T, device: torch.device | str, non_blocking: bool = False) -> T:
    """``obj`` with every tensor it holds on ``device``.

    A tensor is moved (``Tensor.to``; no copy if it is there already); a module is moved in place
    and returned; a ``TensorDataset`` becomes a new one of moved tensors; tuples (named tuples
    too), lists and dicts are rebuilt with their items moved; anything else (numbers, strings,
    None) is returned unchanged. ``non_blocking=True`` overlaps a copy from pinned CPU memory to
    the GPU with computation. Under the device sentinel (see above) floating tensors and modules
    also become float64.
    """
    device = torch.device(device)
    if torch.is_tensor(obj):
        return _move(obj, device, non_blocking)
    if isinstance(obj, nn.Module):
        return obj.to(device).double() if sentinel_on() else obj.to(device)
    if isinstance(obj, TensorDataset):
        return TensorDataset(*(_move(t, device, non_blocking) for t in obj.tensors))
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a named tuple, e.g. QuantizerOutput
        return type(obj)(*(to_device(v, device, non_blocking) for v in obj))
    if isinstance(obj, (tuple, list)):
        return type(obj)(to_device(v, device, non_blocking) for v in obj)
    if isinstance(obj, Mapping):
        items = {k: to_device(v, device, non_blocking) for k, v in obj.items()}
        return items if type(obj) is dict else type(obj)(items)
    return obj


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s parameters and buffers, all of which must be on one device."""
    devices = {t.device for t in itertools.chain(model.parameters(), model.buffers())}
    if len(devices) == 1:
        return devices.pop()
    if not devices:
        raise ValueError(f"{type(model).__name__} has no parameters or buffers, so it has no device: "
                         "pass the device explicitly")
    raise ValueError(f"{type(model).__name__} is spread over several devices {sorted(map(str, devices))}: "
                     "move it to one with model.to(device)")
