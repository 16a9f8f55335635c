"""One training loop for every chapter.

``fit`` trains a model in place: it places the model and each batch on a device, runs a training
step per batch, shows a progress bar, records a history of losses and metrics, evaluates
periodically, stops after its step budget, writes atomic checkpoints and resumes from them
exactly (an interrupted run loses at most one checkpoint interval, and the resumed run is
bit-identical to an uninterrupted one), and stops on NaN/inf with a message that names the step
and the loss term or the parameters.

The step is what a model brings (``vqlib.training.steps``): usually just a loss function,
``loss_fn(model, batch) -> dict`` of scalar tensors whose ``"loss"`` entry is optimised and whose
other entries are logged, which the default ``OptimizerStep`` minimises with one optimiser; or a
``Step`` object that updates the parameters its own way, such as VQGAN's two optimisers
(``vqlib.training.gan.GANStep``).

Launched by ``torchrun``, the same call trains on several processes (see ``vqlib.core.distributed``):
``batch_size`` is the global batch, each process gets its slice, and only rank 0 logs, shows
progress and writes checkpoints, which resume on any number of processes.

Randomness: a fresh run seeds torch with ``config.seed``; the batch order depends only on (seed,
step). Training draws from a fork of torch's generators (``torch.random.fork_rng``), so after
``fit`` the caller's generators are where they were before it, whether it trained, resumed or only
loaded a finished checkpoint: a chapter run from a warm cache prints what a cold run prints. A
checkpoint keeps the random generators of every process (the CPU's and, on CUDA, the device's), so
dropout, dead-code restarts and masking continue as if never interrupted. On resuming, process r
restores the state saved by process r; a process the saving run did not have takes process 0's
state, as every process of a fresh run starts from the same seed.

A chapter gets "the trained model for this config and profile" by passing
``checkpoint=checkpoint_path(name, model.config, train_config)`` (``vqlib.training.checkpoints``):
a finished checkpoint is loaded instead of retrained, so later chapters reuse earlier models.
Finished means the step budget was run: results never depend on how fast the machine is. A
wall-clock limit (``max_seconds``) is a user's safety stop only, never part of a recipe: a run it
stops is unfinished, and the next call with the same checkpoint resumes it to its step budget.
A checkpoint holds tensors and plain data only, and never a NaN or inf.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from vqlib.core import distributed as dist
from vqlib.core.device import to_device
from vqlib.core.inference import evaluating
from vqlib.training.checkpoints import checkpoint_meta, load_checkpoint, save_checkpoint
from vqlib.training.steps import LossFn, OptimizerStep, Step

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
    max_seconds: float | None = None  # a user's safety stop: the run ends early, unfinished (resumable)
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


def split_overrides(overrides: Mapping[str, Any], *configs: type) -> tuple[dict, ...]:
    """Keyword overrides of a recipe split by config class: (fields of each of ``configs``, in order,
    then fields of TrainConfig); any other name is an error that lists them all."""
    groups = [{f.name for f in dataclasses.fields(c)} for c in (*configs, TrainConfig)]
    unknown = set(overrides) - set().union(*groups)
    if unknown:
        names = [c.__name__ for c in configs]
        raise TypeError(f"unknown overrides {sorted(unknown)}: expected fields of {', '.join(names)} or TrainConfig")
    return tuple({k: v for k, v in overrides.items() if k in fields} for fields in groups)


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


# ----------------------------------------------------------------------------- the loop

def progress_wanted() -> bool:
    # In the book build (VQLIB_BUILD=1) a bar would be frozen into the page: print a summary instead.
    return os.environ.get("VQLIB_BUILD", "") in ("", "0")


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """This process's random generators as ByteTensors: the CPU's and, on CUDA, the device's."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(saved: list[Mapping[str, torch.Tensor]], device: torch.device, cuda_seed: int) -> None:
    """Set this process's generators from a checkpoint's per-process states (see the module docstring).

    A CUDA generator the checkpoint lacks (it was written on the CPU) is seeded with ``cuda_seed``.
    """
    state = saved[dist.rank()] if dist.rank() < len(saved) else saved[0]
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda":
        if "cuda" in state:
            torch.cuda.set_rng_state(state["cuda"], device)
        else:
            torch.cuda.manual_seed(cuda_seed)


def non_finite(state: Any, prefix: str = "") -> list[str]:
    """Names of the floating-point tensors in a nested state dict that hold NaN or inf."""
    if torch.is_tensor(state):
        return [prefix] if state.is_floating_point() and not bool(torch.isfinite(state).all()) else []
    if isinstance(state, Mapping):
        items = state.items()
    else:
        items = enumerate(state) if isinstance(state, (list, tuple)) else ()
    return [name for k, v in items for name in non_finite(v, f"{prefix}.{k}" if prefix else str(k))]


def _mean_over_processes(values: dict[str, float], device: torch.device) -> dict[str, float]:
    if not dist.is_distributed():
        return values
    t = dist.all_reduce_sum(torch.tensor(list(values.values()), dtype=torch.float64, device=device))
    return dict(zip(values, (t / dist.world_size()).tolist()))


@torch.no_grad()
def _evaluate(model: nn.Module, eval_fn: EvalFn) -> dict[str, float]:
    with evaluating(model):
        return {k: float(v) for k, v in eval_fn(model).items()}


def _out_of_time(seconds: float, config: TrainConfig, device: torch.device) -> bool:
    """Whether this call's ``seconds`` of training reached the user's ``max_seconds`` safety stop."""
    if config.max_seconds is None:
        return False
    # rank 0's clock decides for everyone: processes that stopped at different steps would hang
    flag = torch.tensor([float(seconds >= config.max_seconds)], device=device)
    return bool(dist.broadcast_from_rank0(flag).item())


def _finished(history: History, end: int) -> bool:
    # Only the step budget finishes a run: one stopped by the clock is resumed, never reused as done.
    return history.steps >= end


def _check_step_meta(ckpt: Mapping[str, Any], expected: Mapping[str, Any], path: str | Path) -> None:
    for key, want in expected.items():
        got = ckpt["meta"].get(key)
        if got != want:
            raise ValueError(f"checkpoint {path} was written with a different {key.replace('_', ' ')}:\n"
                             f"  in the checkpoint: {got}\n  expected:          {want}\n"
                             "use another checkpoint path, or delete the file to retrain")


def fit(model: nn.Module, step: LossFn | Step, data: Dataset, config: TrainConfig, *,
        eval_fn: EvalFn | None = None, checkpoint: str | Path | None = None,
        device: torch.device | str | None = None, progress: bool | None = None,
        stop_at: int | None = None) -> History:
    """Train ``model`` in place on ``data`` and return its History.

    ``step`` is a loss function ``loss_fn(model, batch)``, which gets the batch as a tuple of tensors
    on the device and returns a dict of scalar tensors with a ``"loss"`` entry (minimised by
    ``OptimizerStep``: AdamW from ``config``), or a ``Step`` object. ``eval_fn(model)`` (optional)
    runs under ``torch.no_grad()`` in eval mode and returns metrics. With ``checkpoint``, an existing
    file is resumed (or, if finished, just loaded) and the file is rewritten atomically every
    ``config.checkpoint_every`` steps and at the end. ``stop_at``: train only the first ``stop_at``
    steps of the run that ``config`` describes (same learning-rate schedule); the checkpoint stays
    resumable.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    if stop_at is not None and stop_at < 1:
        raise ValueError(f"stop_at must be >= 1, got {stop_at}")
    end = config.steps if stop_at is None else min(config.steps, stop_at)
    launched_device = dist.init_from_env()  # joins a torchrun process group, if any
    device = torch.device(device) if device is not None else launched_device
    to_device(model, device).train()
    trainer = step if isinstance(step, Step) else OptimizerStep(step)
    trainer.start(model, config, device)
    history = History()
    meta = {**checkpoint_meta(model, config), **trainer.meta}

    ckpt = None
    if checkpoint is not None and Path(checkpoint).exists():
        ckpt = load_checkpoint(checkpoint, model, config)
        _check_step_meta(ckpt, trainer.meta, checkpoint)
        if "step" in ckpt:
            trainer.load_state_dict(ckpt["step"])
        history = History(**ckpt["history"])
        to_device(model, device)

    if _finished(history, end):
        model.eval()
        return history
    if ckpt is not None and not {"step", "rng"} <= set(ckpt):
        raise ValueError(f"checkpoint {checkpoint} has no training-step or random-generator state (an older "
                         "vqlib wrote it), so it cannot be resumed exactly: delete it to retrain")
    saved_at = history.steps if ckpt is not None else None  # the step of the checkpoint on disk

    def intact() -> str:
        # what is true of the checkpoint file when training stops with an error
        if checkpoint is None:
            return "No checkpoint was requested."
        if saved_at is None:
            return f"No checkpoint was written yet ({checkpoint})."
        return f"The last checkpoint, step {saved_at} in {checkpoint}, is intact."

    def save() -> None:
        # every process takes part: the random generators are gathered, and a bad state stops them all
        nonlocal saved_at
        if checkpoint is None:
            return
        state = {"model": model.state_dict(), "step": trainer.state_dict(), "history": dataclasses.asdict(history),
                 "meta": meta, "rng": dist.all_gather_object(rng_state(device))}
        bad = non_finite({"model": state["model"], "step": state["step"]})
        if dist.all_reduce_sum(torch.tensor([float(len(bad))], device=device)).item():
            raise FloatingPointError(f"step {history.steps}: non-finite values in "
                                     f"{', '.join(bad[:5]) or 'the state of another process'}; this state was "
                                     f"not saved. {intact()}")
        if dist.is_main():
            save_checkpoint(state, checkpoint)
        saved_at = history.steps

    main = dist.is_main()
    show = main and (progress_wanted() if progress is None else progress)
    bar = None
    if show:
        from tqdm.auto import tqdm
        bar = tqdm(total=config.steps, initial=history.steps, desc=type(model).__name__, leave=True)
    started, seconds_before = time.perf_counter(), history.seconds
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}  # terms that only some steps have are averaged over those steps
    count = 0
    batches = training_batches(data, config.batch_size, config.seed, history.steps, dist.rank(), dist.world_size())
    # training draws from its own fork of the global generators, so the caller's random numbers after
    # fit are the same whether it trained or loaded a finished checkpoint (a warm run equals a cold one)
    forked = []  # the CUDA device whose generator training draws from, if any (the CPU's is always forked)
    if device.type == "cuda":
        forked = [torch.cuda.current_device() if device.index is None else device.index]
    with torch.random.fork_rng(devices=forked):
        if ckpt is None:
            torch.manual_seed(config.seed)  # a fresh run: the same noise every time
        else:  # a resumed run: the noise the interrupted run would have drawn next
            restore_rng(ckpt["rng"], device, config.seed + history.steps)
        history.stopped = ""
        try:
            for i in range(history.steps, end):
                batch = to_device(next(batches), device, non_blocking=True)
                try:
                    terms = trainer(batch, i)
                except FloatingPointError as err:  # say what is on disk
                    err.args = (f"{err} {intact()}",)
                    raise
                history.steps = i + 1
                history.seconds = seconds_before + time.perf_counter() - started
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach())
                    counts[k] = counts.get(k, 0) + 1
                count += 1
                last = history.steps == end or _out_of_time(history.seconds - seconds_before, config, device)
                if count == config.log_every or last:
                    means = _mean_over_processes({k: sums[k] / counts[k] for k in sums}, device)
                    history.train.append({"step": history.steps, **means})
                    if bar is not None and "loss" in means:
                        bar.set_postfix(loss=f"{means['loss']:.4g}", refresh=False)
                    sums, counts, count = {}, {}, 0
                if last:
                    history.stopped = ("steps" if history.steps == config.steps else
                                       "stop_at" if history.steps == end else "time")
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
