"""Training steps: what ``vqlib.training.loop.fit`` does with one batch.

A step computes the loss terms of a batch and updates the parameters. It owns its optimisers and
learning-rate schedules, and hands ``fit`` everything of theirs that a checkpoint must keep
(``state_dict``); ``fit`` owns the rest of training (batches, progress, logging, evaluation,
checkpoints, resuming, random generators). Every step checks what it computes before it changes
anything: a non-finite loss term, or a finite loss with a non-finite gradient (``sqrt`` or ``log``
at 0), raises FloatingPointError naming the step and the term or the parameters, and no parameter
is updated.

What is in it: ``Step`` (the interface), ``OptimizerStep`` (the default: one optimiser, AdamW unless
given, over the model's parameters, with bfloat16 autocast on CUDA), ``lr_factor`` (linear warm-up,
cosine decay), ``adamw``, ``check_finite_terms``, ``check_finite_gradients``, ``average_gradients``,
``backward`` and ``update`` (the two halves of an optimiser step, for steps with several optimisers:
``vqlib.training.gan.GANStep``).

Under torchrun the default step wraps model and loss in DistributedDataParallel, which averages the
gradients over processes during ``backward``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

import torch
from torch import nn

from vqlib.core import distributed as dist

if TYPE_CHECKING:
    from vqlib.training.loop import TrainConfig

LossFn = Callable[[nn.Module, tuple], Mapping[str, torch.Tensor]]


def lr_factor(config: TrainConfig) -> Callable[[int], float]:
    """The learning-rate multiplier at a step: linear warm-up, then constant or cosine decay to 0."""
    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        if not config.cosine:
            return 1.0
        done = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, done)))
    return factor


def adamw(parameters: Iterable[nn.Parameter], config: TrainConfig) -> torch.optim.AdamW:
    """The book's optimiser with the learning rate, betas and weight decay of ``config``."""
    return torch.optim.AdamW(parameters, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)


# ----------------------------------------------------------------------------- checks

def check_finite_terms(terms: Mapping[str, torch.Tensor], step: int) -> None:
    """Raise FloatingPointError if a loss term is NaN or inf, naming the step and the term.

    The total ``"loss"`` is named only when no other term is bad: it is non-finite *because* a
    part of it is, and the part is what a reader can fix.
    """
    bad = [name for name, value in terms.items() if not torch.isfinite(value.detach()).all()]
    if dist.is_distributed():  # every process must stop together, or the others wait forever
        flag = torch.tensor([float(bool(bad))], device=next(iter(terms.values())).device)
        if dist.all_reduce_sum(flag).item() and not bad:
            raise FloatingPointError(f"step {step}: another process met a non-finite loss; training stopped "
                                     "before the update.")
    if bad:
        name = next((n for n in bad if n != "loss"), bad[0])
        value = terms[name].detach().float().mean().item()
        raise FloatingPointError(f"step {step}: loss term {name!r} is {value}; training stopped before the "
                                 "update. Try a lower lr or grad_clip.")


def check_finite_gradients(named_parameters: Iterable[tuple[str, nn.Parameter]], step: int) -> None:
    """Raise FloatingPointError if a gradient holds NaN or inf, naming the step and the parameters.

    A finite loss can have a non-finite gradient (``sqrt`` or ``norm`` at 0, ``log`` of 0 under a
    mask). One host sync for all parameters; the names are looked up only when something is bad.
    """
    grads = [(name, p.grad) for name, p in named_parameters if p.grad is not None]
    if not grads:
        return
    finite = torch.stack([torch.isfinite(g).all() for _, g in grads])  # (P,) bool
    if bool(finite.all()):
        return
    bad = [name for (name, _), ok in zip(grads, finite.tolist()) if not ok]
    more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
    raise FloatingPointError(f"step {step}: the loss is finite but the gradient of {', '.join(bad[:5])}{more} is "
                             "not (NaN or inf, e.g. from sqrt or log at 0); training stopped before the update.")


# ----------------------------------------------------------------------------- optimiser steps in two halves

def average_gradients(parameters: Iterable[nn.Parameter]) -> None:
    """Replace each gradient by its mean over the processes (a no-op in a single process)."""
    if dist.is_distributed():
        for p in parameters:
            if p.grad is not None:
                dist.all_reduce_sum(p.grad).div_(dist.world_size())


def backward(loss: torch.Tensor, optimizer: torch.optim.Optimizer,
             named_parameters: Iterable[tuple[str, nn.Parameter]], step: int, average: bool = False) -> None:
    """Zero the gradients of ``optimizer``, backpropagate ``loss`` and check the gradients it left.

    ``average``: average the gradients over the processes first, for a step that is not wrapped
    in DistributedDataParallel (every process then sees the same gradients and stops together).
    The check comes before clipping in ``update``: clipping would spread one NaN to every
    gradient and hide the culprit, and it keeps finite gradients finite.
    """
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    named_parameters = list(named_parameters)
    if average:
        average_gradients(p for _, p in named_parameters)
    check_finite_gradients(named_parameters, step)


def update(optimizer: torch.optim.Optimizer, scheduler: Any, parameters: Iterable[nn.Parameter] | None = None,
           grad_clip: float | None = None) -> None:
    """Clip the gradient norm of ``parameters`` to ``grad_clip`` when given, then step the optimiser
    and its learning-rate schedule."""
    if grad_clip is not None:
        nn.utils.clip_grad_norm_(parameters, grad_clip)
    optimizer.step()
    scheduler.step()


# ----------------------------------------------------------------------------- the interface

class Step(ABC):
    """One training step, the part of training that ``fit`` plugs in.

    ``fit`` calls ``start`` once, then ``load_state_dict`` when it resumes a checkpoint, then the
    step once per batch: ``step(batch, i)`` trains on ``batch`` (a tuple of tensors on the device) at
    0-based step ``i`` and returns the detached scalar terms to log, with a ``"loss"`` entry.
    ``meta`` is what a checkpoint must have been written with to be resumed by this step.
    """

    meta: dict[str, Any] = {}

    @abstractmethod
    def start(self, model: nn.Module, config: TrainConfig, device: torch.device) -> None:
        """Build the optimisers and schedules for ``model`` (on ``device``, in training mode)."""

    @abstractmethod
    def __call__(self, batch: tuple, step: int) -> dict[str, torch.Tensor]:
        """Compute the loss terms of ``batch``, update the parameters, return the terms (detached)."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps of the step (optimisers, schedules, other networks): tensors and plain data."""

    @abstractmethod
    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""


class _Objective(nn.Module):
    """model + loss_fn as one module, so DistributedDataParallel synchronises the gradients of
    every parameter the loss touches, whichever model methods (encode, decode, ...) it calls."""

    def __init__(self, model: nn.Module, loss_fn: LossFn):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, batch: tuple) -> Mapping[str, torch.Tensor]:
        return self.loss_fn(self.model, batch)


class OptimizerStep(Step):
    """The default step: ``loss_fn(model, batch)`` minimised by one optimiser over all the model's parameters.

    Autocast (bfloat16, on CUDA when ``config.amp``), the loss, its finiteness check, backward,
    the gradients' check, clipping to ``config.grad_clip``, the optimiser's and the schedule's
    step. ``optimizer``: one built over the model's parameters; default AdamW from ``config``.
    """

    def __init__(self, loss_fn: LossFn, optimizer: torch.optim.Optimizer | None = None) -> None:
        self.loss_fn, self.given_optimizer = loss_fn, optimizer

    def start(self, model: nn.Module, config: TrainConfig, device: torch.device) -> None:
        self.model, self.device, self.grad_clip = model, device, config.grad_clip
        self.amp = config.amp and device.type == "cuda"
        self.optimizer = self.given_optimizer or adamw(model.parameters(), config)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_factor(config))
        self.objective: nn.Module | None = None  # built at the first batch, after a checkpoint is loaded

    def __call__(self, batch: tuple, step: int) -> dict[str, torch.Tensor]:
        if self.objective is None:
            self.objective = _Objective(self.model, self.loss_fn)
            if dist.is_distributed():
                from torch.nn.parallel import DistributedDataParallel

                # broadcast_buffers=False: buffers that must agree (EMA codebooks) synchronise themselves
                ids = [self.device.index] if self.device.type == "cuda" else None
                self.objective = DistributedDataParallel(self.objective, device_ids=ids, broadcast_buffers=False)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            terms = self.objective(batch)
        if "loss" not in terms:
            raise KeyError(f"loss_fn must return a dict with a 'loss' entry, got keys {list(terms)}")
        check_finite_terms(terms, step)
        backward(terms["loss"], self.optimizer, self.model.named_parameters(), step)
        update(self.optimizer, self.scheduler, self.model.parameters(), self.grad_clip)
        return {k: v.detach() for k, v in terms.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
