"""One training loop for every chapter.

``fit`` trains a model in place: it places the model and each batch on a device, runs the
optimiser with optional mixed precision on CUDA, shows a progress bar, records a history of
losses and metrics, evaluates periodically, stops after a step or a time budget, writes atomic
checkpoints and resumes from them (an interrupted run loses at most one checkpoint interval), and
stops on NaN/inf with a message that names the step and the loss term.

Launched by ``torchrun``, the same call trains on several processes with DistributedDataParallel
(see ``vqlib.core.distributed``): ``batch_size`` is the global batch, each process gets its slice,
and only rank 0 logs, shows progress and writes checkpoints, which resume on any number of processes.

A chapter gets "the trained model for this config and profile" by passing
``checkpoint=checkpoint_path(name, model.config, train_config)`` (``vqlib.training.checkpoints``):
a finished checkpoint is loaded instead of retrained, so later chapters reuse earlier models.

The loss function is the one thing a model brings: ``loss_fn(model, batch) -> dict`` of scalar
tensors, whose ``"loss"`` entry is optimised and whose other entries are logged.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from vqlib.core import distributed as dist
from vqlib.core.inference import evaluating
from vqlib.training.checkpoints import checkpoint_meta, load_checkpoint, save_checkpoint

LossFn = Callable[[nn.Module, tuple], Mapping[str, torch.Tensor]]
EvalFn = Callable[[nn.Module], Mapping[str, float]]


@dataclass(frozen=True)
class TrainConfig:
    steps: int  # optimiser steps in all
    batch_size: int = 128
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    warmup_steps: int = 0  # linear warm-up of the learning rate
    cosine: bool = False  # cosine decay to 0 after the warm-up
    grad_clip: float | None = None  # max global gradient norm
    max_seconds: float | None = None  # wall-clock budget; the run stops early when it is spent
    eval_every: int = 0  # steps between evaluations; 0 = only at the end
    log_every: int = 25  # steps averaged into one history record
    checkpoint_every: int = 500  # steps between checkpoints (when a checkpoint path is given)
    amp: bool = True  # bfloat16 autocast, on CUDA only; distances and argmin stay float32
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be >= 1, got steps={self.steps}, "
                             f"batch_size={self.batch_size}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


def split_overrides(overrides: Mapping[str, Any], model_config: type) -> tuple[dict, dict]:
    """Keyword overrides of a recipe split into (fields of ``model_config``, fields of TrainConfig);
    any other name is an error that lists both."""
    model_fields = {f.name for f in dataclasses.fields(model_config)}
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(overrides) - model_fields - train_fields
    if unknown:
        raise TypeError(f"unknown overrides {sorted(unknown)}: expected fields of {model_config.__name__} "
                        "or TrainConfig")
    return ({k: v for k, v in overrides.items() if k in model_fields},
            {k: v for k, v in overrides.items() if k in train_fields})


@dataclass
class History:
    """What a run recorded: ``train`` and ``eval`` are lists of ``{"step": s, name: value, ...}``."""

    train: list[dict[str, float]] = field(default_factory=list)
    eval: list[dict[str, float]] = field(default_factory=list)
    steps: int = 0  # steps done
    seconds: float = 0.0  # training wall time, summed over resumed runs
    stopped: str = ""  # why the run ended: "steps" or "time"

    def series(self, key: str, split: str = "train") -> tuple[list[int], list[float]]:
        """(steps, values) of one logged quantity, for plotting."""
        rows = [r for r in getattr(self, split) if key in r]
        if not rows:
            known = sorted({k for r in getattr(self, split) for k in r} - {"step"})
            raise KeyError(f"no {split} series {key!r}; recorded: {known}")
        return [int(r["step"]) for r in rows], [r[key] for r in rows]

    def last(self, key: str, split: str = "eval") -> float:
        """The last recorded value of ``key`` (default: from the evaluations)."""
        return self.series(key, split)[1][-1]


# ----------------------------------------------------------------------------- data

def training_batches(data: Dataset, batch_size: int, seed: int, start_step: int,
                     rank: int = 0, world: int = 1) -> Iterator[tuple]:
    """An endless stream of shuffled batches; the order depends only on (seed, step), so a
    resumed run sees exactly the batches the interrupted run would have seen, on any number of
    processes. ``batch_size`` is global: process ``rank`` of ``world`` gets its contiguous slice."""
    n = len(data)  # type: ignore[arg-type]
    if n == 0:
        raise ValueError("the training dataset is empty")
    if n < world:
        raise ValueError(f"the training dataset has {n} examples, fewer than the {world} processes")
    batch_size = min(batch_size, n - n % world)
    if batch_size % world:
        raise ValueError(f"the global batch of {batch_size} cannot be split evenly over {world} processes: "
                         "choose a batch_size divisible by the number of processes")
    per_epoch = n // batch_size
    epoch, offset = divmod(start_step, per_epoch)
    while True:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        chunks = order[: per_epoch * batch_size].view(per_epoch, world, batch_size // world)[offset:, rank]
        if isinstance(data, TensorDataset):  # fancy indexing: no per-sample collation
            yield from (tuple(t[idx] for t in data.tensors) for idx in chunks)
        else:
            loader = DataLoader(data, batch_sampler=chunks.tolist())
            yield from (tuple(b) if isinstance(b, (list, tuple)) else (b,) for b in loader)
        epoch, offset = epoch + 1, 0


def _to(batch: tuple, device: torch.device) -> tuple:
    return tuple(t.to(device, non_blocking=True) if torch.is_tensor(t) else t for t in batch)


# ----------------------------------------------------------------------------- the loop

def progress_wanted() -> bool:
    # In the book build (VQLIB_BUILD=1) a bar would be frozen into the page: print a summary instead.
    return os.environ.get("VQLIB_BUILD", "") in ("", "0")


def lr_factor(config: TrainConfig) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        if not config.cosine:
            return 1.0
        done = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, done)))
    return factor


def check_finite_terms(terms: Mapping[str, torch.Tensor], step: int) -> None:
    bad = [name for name, value in terms.items() if not torch.isfinite(value.detach()).all()]
    if dist.is_distributed():  # every process must stop together, or the others wait forever
        flag = torch.tensor([float(bool(bad))], device=terms["loss"].device)
        if dist.all_reduce_sum(flag).item() and not bad:
            raise FloatingPointError(f"step {step}: another process met a non-finite loss; training stopped")
    if bad:
        value = terms[bad[0]].detach().float().mean().item()
        raise FloatingPointError(
            f"step {step}: loss term {bad[0]!r} is {value}; training stopped before the update, and the "
            "last checkpoint is intact. Try a lower lr or grad_clip.")


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scheduler: Any,
                   parameters: Any = None, grad_clip: float | None = None) -> None:
    """One update: backpropagate ``loss``, clip the gradient norm of ``parameters`` to ``grad_clip``
    when given, then step the optimizer and its learning-rate schedule."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip is not None:
        nn.utils.clip_grad_norm_(parameters, grad_clip)
    optimizer.step()
    scheduler.step()


class _Objective(nn.Module):
    """model + loss_fn as one module, so DistributedDataParallel synchronises the gradients of
    every parameter the loss touches, whichever model methods (encode, decode, ...) it calls."""

    def __init__(self, model: nn.Module, loss_fn: LossFn):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, batch: tuple) -> Mapping[str, torch.Tensor]:
        return self.loss_fn(self.model, batch)


def _mean_over_processes(values: dict[str, float], device: torch.device) -> dict[str, float]:
    if not dist.is_distributed():
        return values
    t = dist.all_reduce_sum(torch.tensor(list(values.values()), dtype=torch.float64, device=device))
    return dict(zip(values, (t / dist.world_size()).tolist()))


@torch.no_grad()
def _evaluate(model: nn.Module, eval_fn: EvalFn) -> dict[str, float]:
    with evaluating(model):
        return {k: float(v) for k, v in eval_fn(model).items()}


def _out_of_time(history: History, config: TrainConfig, device: torch.device) -> bool:
    if config.max_seconds is None:
        return False
    # rank 0's clock decides for everyone: processes that stopped at different steps would hang
    flag = torch.tensor([float(history.seconds >= config.max_seconds)], device=device)
    return bool(dist.broadcast_from_rank0(flag).item())


def _finished(history: History, config: TrainConfig) -> bool:
    # A run stopped by its time budget counts as finished unless the budget has since grown.
    out_of_time = config.max_seconds is not None and history.seconds >= config.max_seconds
    return history.steps >= config.steps or (history.stopped == "time" and out_of_time)


def fit(model: nn.Module, loss_fn: LossFn, data: Dataset, config: TrainConfig, *,
        eval_fn: EvalFn | None = None, checkpoint: str | Path | None = None,
        device: torch.device | str | None = None, progress: bool | None = None,
        optimizer: torch.optim.Optimizer | None = None) -> History:
    """Train ``model`` in place on ``data`` and return its History.

    ``loss_fn(model, batch)`` gets the batch as a tuple of tensors on the device and returns a dict
    of scalar tensors with a ``"loss"`` entry. ``eval_fn(model)`` (optional) runs under
    ``torch.no_grad()`` in eval mode and returns metrics. With ``checkpoint``, an existing file is
    resumed (or, if finished, just loaded) and the file is rewritten atomically every
    ``config.checkpoint_every`` steps and at the end. The default optimiser is AdamW.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    launched_device = dist.init_from_env()  # joins a torchrun process group, if any
    device = torch.device(device) if device is not None else launched_device
    model.to(device).train()
    opt = optimizer or torch.optim.AdamW(model.parameters(), lr=config.lr, betas=config.betas,
                                         weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(config))
    history = History()
    meta = checkpoint_meta(model, config)

    if checkpoint is not None and Path(checkpoint).exists():
        ckpt = load_checkpoint(checkpoint, model, config)
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        history = History(**ckpt["history"])
        model.to(device)

    def save() -> None:
        if checkpoint is not None and dist.is_main():
            save_checkpoint({"model": model.state_dict(), "optimizer": opt.state_dict(),
                         "scheduler": sched.state_dict(), "history": dataclasses.asdict(history),
                         "meta": meta}, checkpoint)

    if _finished(history, config):
        model.eval()
        return history

    use_amp = config.amp and device.type == "cuda"
    objective: nn.Module = _Objective(model, loss_fn)
    if dist.is_distributed():
        from torch.nn.parallel import DistributedDataParallel

        # broadcast_buffers=False: buffers that must agree (EMA codebooks) synchronise themselves
        objective = DistributedDataParallel(objective, device_ids=[device.index] if device.type == "cuda" else None,
                                            broadcast_buffers=False)
    main = dist.is_main()
    show = main and (progress_wanted() if progress is None else progress)
    bar = None
    if show:
        from tqdm.auto import tqdm
        bar = tqdm(total=config.steps, initial=history.steps, desc=type(model).__name__, leave=True)
    started, seconds_before = time.perf_counter(), history.seconds
    sums: dict[str, float] = {}
    count = 0
    batches = training_batches(data, config.batch_size, config.seed, history.steps, dist.rank(), dist.world_size())
    torch.manual_seed(config.seed + history.steps)  # dropout/sampling noise repeats on resume
    history.stopped = ""
    try:
        for step in range(history.steps, config.steps):
            batch = _to(next(batches), device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                terms = objective(batch)
            if "loss" not in terms:
                raise KeyError(f"loss_fn must return a dict with a 'loss' entry, got keys {list(terms)}")
            check_finite_terms(terms, step)
            optimizer_step(terms["loss"], opt, sched, model.parameters(), config.grad_clip)
            history.steps = step + 1
            history.seconds = seconds_before + time.perf_counter() - started
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            count += 1
            last = history.steps == config.steps or _out_of_time(history, config, device)
            if count == config.log_every or last:
                means = _mean_over_processes({k: s / count for k, s in sums.items()}, device)
                history.train.append({"step": history.steps, **means})
                if bar is not None:
                    bar.set_postfix(loss=f"{history.train[-1]['loss']:.4g}", refresh=False)
                sums, count = {}, 0
            if last:
                history.stopped = "time" if history.steps < config.steps else "steps"
            if eval_fn is not None and (last or (config.eval_every and history.steps % config.eval_every == 0)):
                history.eval.append({"step": history.steps, **_evaluate(model, eval_fn)})
            if last or history.steps % config.checkpoint_every == 0:
                save()
            if bar is not None:
                bar.update(1)
            if last:
                break
    finally:
        if bar is not None:
            bar.close()
    dist.barrier()  # the checkpoint is complete before any process reads it
    if main and not show:
        summary = ", ".join(f"{k} {v:.4g}" for k, v in history.train[-1].items() if k != "step")
        print(f"{type(model).__name__}: {history.steps} steps in {history.seconds:.0f} s "
              f"(stopped by {history.stopped}); last train {summary}")
    model.eval()
    return history
