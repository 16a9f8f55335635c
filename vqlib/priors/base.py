"""What every prior over codes shares: input checks, sampling from logits, bits per dimension.

A prior is a model of p(tokens): it maps integer tokens to logits and can sample new tokens.
The book has a Gated PixelCNN (``vqlib.priors.pixelcnn``) and a GPT (``vqlib.priors.gpt``); the VQ-VAE-2
bottom prior, MaskGIT and the video GPT of later chapters reuse the pieces here.

- ``check_tokens`` / ``check_cond``: the one place that says what a prior accepts.
- ``sample_from_logits``: one categorical draw per row, with temperature and top-k
  (Holtzman et al. 2020 discuss both); ``top_k=1`` is greedy decoding (argmax, no randomness).
- ``guided_logits``: classifier-free guidance (Ho & Salimans 2021) on the logits of a prior that
  was trained with and without its condition (the video prior's captions, MaskGIT's classes).
- ``bits_per_dim``: the negative log-likelihood in bits per token, log2 K for a uniform prior.
- ``sequence_bits``: -log2 p(tokens) of every sequence (all its tokens together), for per-item error
  bars; ``label_mixture_bits``: the same for a class-conditional prior averaged over its labels,
  sum_y p(y) p(tokens | y) with uniform p(y), itself an unconditional prior.
- ``prior_loss``: the loss function ``vqlib.training.loop.fit`` needs, for a batch ``(tokens,)`` or
  ``(tokens, labels)``; ``vqlib.recipes.ch03_priors.train_prior`` trains a prior on a set of codes
  with it (or loads it from the checkpoint cache, keyed by the codes themselves).

Left out: nucleus (top-p) sampling and beam search.

Dimension key: B batch, K vocabulary size (codebook size), L tokens, H W code-map height and width.
"""

from __future__ import annotations

import math
import numbers
from typing import Mapping, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from vqlib.core.device import model_device, to_device
from vqlib.core.inference import evaluating


class Prior(Protocol):
    """What the book calls a prior: ``nll(tokens, cond) -> (B,)`` in nats per token, and ``sample``."""

    def nll(self, tokens: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor: ...


def check_tokens(tokens: torch.Tensor, vocab_size: int, shape: str, ndim: int) -> None:
    """Raise a TypeError/ValueError unless ``tokens`` is a non-empty long tensor of rank ``ndim``
    with values in [0, vocab_size). ``shape`` names the expected shape in messages, e.g. "(B, L)"."""
    if not torch.is_tensor(tokens):
        raise TypeError(f"tokens must be a torch.long tensor {shape}, got {type(tokens).__name__}")
    if tokens.dtype != torch.long:
        raise TypeError(f"tokens must be integer code indices (torch.long) {shape}, got dtype {tokens.dtype}; "
                        "pass model.encode(x), not images or embeddings")
    if tokens.dim() != ndim or tokens.shape[0] == 0:
        raise ValueError(f"tokens must have shape {shape} with B >= 1, got {tuple(tokens.shape)}")
    if not torch.compiler.is_exporting() and tokens.numel() and (tokens.min() < 0 or tokens.max() >= vocab_size):
        raise ValueError(f"tokens must lie in [0, {vocab_size}) (vocab_size={vocab_size}), got values in "
                         f"[{int(tokens.min())}, {int(tokens.max())}]")


def check_cond(cond: torch.Tensor | None, num_classes: int, batch: int) -> None:
    """Class labels: required, (B,) long in [0, num_classes), when num_classes > 0; forbidden otherwise."""
    if num_classes == 0:
        if cond is not None:
            raise ValueError("this prior is unconditional (num_classes=0) but got class labels cond; "
                             "pass cond=None, or build the model with num_classes > 0")
        return
    if cond is None:
        raise ValueError(f"this prior is class-conditional (num_classes={num_classes}): pass cond, "
                         f"a (B,) long tensor of labels in [0, {num_classes})")
    if not torch.is_tensor(cond) or cond.dtype != torch.long:
        got = cond.dtype if torch.is_tensor(cond) else type(cond).__name__
        raise TypeError(f"cond must be a (B,) torch.long tensor of class labels, got {got}")
    if cond.shape != (batch,):
        raise ValueError(f"cond must have shape ({batch},), one label per example, got {tuple(cond.shape)}")
    if not torch.compiler.is_exporting() and (cond.min() < 0 or cond.max() >= num_classes):
        raise ValueError(f"class labels must lie in [0, {num_classes}), got values in "
                         f"[{int(cond.min())}, {int(cond.max())}]")


def is_integer(value: object) -> bool:
    """True for Python and NumPy integers (not bools, not floats such as 2.0)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_sampling(n: int, temperature: float, top_k: int | None) -> None:
    """The number of samples and the sampling knobs: n >= 1, temperature > 0, top_k >= 1 or None."""
    if not is_integer(n):
        raise TypeError(f"the number of samples n must be an integer >= 1, got {n!r} ({type(n).__name__})")
    if top_k is not None and not is_integer(top_k):
        raise TypeError(f"top_k must be an integer >= 1 or None (no truncation), got {top_k!r} "
                        f"({type(top_k).__name__})")
    if n < 1:
        raise ValueError(f"the number of samples n must be >= 1, got {n}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}; for greedy decoding use top_k=1")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 or None (no truncation), got {top_k}")


def sample_from_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None) -> torch.Tensor:
    """One draw per row from softmax(logits / temperature), restricted to the top_k largest.

    logits (B, K) -> (B,) long. ``top_k=1`` returns the argmax and consumes no random numbers, so
    greedy decoding is deterministic.
    """
    check_sampling(1, temperature, top_k)
    if top_k == 1:
        return logits.argmax(dim=-1)  # (B,)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(F.softmax(logits, dim=-1), 1).squeeze(1)  # (B,)


def check_guidance(guidance: float) -> None:
    """The guidance scale w of ``guided_logits``: a finite number >= 0."""
    if isinstance(guidance, bool) or not isinstance(guidance, numbers.Real) or not 0 <= guidance < math.inf:
        raise ValueError(f"guidance must be a finite number >= 0 (1 = plain conditional sampling), got {guidance!r}")


def guided_logits(conditional: torch.Tensor, unconditional: torch.Tensor, guidance: float) -> torch.Tensor:
    """Classifier-free guidance: l_u + w·(l_c − l_u) of logits with (``conditional``) and without the
    condition (``unconditional``), same shape -> same shape. w = 1 is the conditional model, w = 0 the
    unconditional one; w > 1 moves further in the direction in which the condition moves the logits."""
    check_guidance(guidance)
    if conditional.shape != unconditional.shape:
        raise ValueError(f"conditional and unconditional logits must have the same shape, got "
                         f"{tuple(conditional.shape)} and {tuple(unconditional.shape)}")
    return unconditional + guidance * (conditional - unconditional)


def split_batch(batch: tuple) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A training batch ``(tokens,)`` or ``(tokens, labels)`` -> (tokens, cond or None)."""
    if len(batch) not in (1, 2):
        raise ValueError(f"a prior's batch is (tokens,) or (tokens, labels), got {len(batch)} tensors")
    return batch[0], (batch[1] if len(batch) == 2 else None)


def prior_loss(model: nn.Module, batch: tuple) -> Mapping[str, torch.Tensor]:
    """Loss for ``vqlib.training.loop.fit``: mean NLL in nats per token, and the same in bits per dim for the log."""
    tokens, cond = split_batch(batch)
    loss = model.nll(tokens, cond).mean()
    return {"loss": loss, "bits_per_dim": loss.detach() / math.log(2)}


@torch.no_grad()
def bits_per_dim(model: nn.Module, tokens: torch.Tensor, cond: torch.Tensor | None = None,
                 batch_size: int = 500) -> float:
    """Mean negative log2-likelihood per token of ``tokens`` (B, ...) under ``model`` (in eval mode).

    A uniform prior over K codes scores log2 K; every bit below that is structure the prior found.
    """
    if len(tokens) == 0:
        raise ValueError("bits_per_dim needs at least one sequence of tokens, got an empty batch")
    device = model_device(model)
    total = 0.0
    with evaluating(model):
        for start in range(0, len(tokens), batch_size):
            part = slice(start, start + batch_size)
            c = None if cond is None else to_device(cond[part], device)
            total += float(model.nll(to_device(tokens[part], device), c).double().sum())
    return total / len(tokens) / math.log(2)


@torch.no_grad()
def sequence_bits(model: nn.Module, tokens: torch.Tensor, cond: torch.Tensor | None = None,
                  batch_size: int = 500) -> torch.Tensor:
    """-log2 p(tokens[i]) of each whole sequence or map, in bits: tokens (N, ...) -> (N,) float64, on the CPU.

    The sum over all of its tokens (``model.nll`` is the mean over them), so the mean of the result
    divided by ``tokens[0].numel()`` is ``bits_per_dim``. Per-item values are what a bootstrap
    interval resamples (``vqlib.core.metrics.bootstrap_ci``).
    """
    if len(tokens) == 0:
        raise ValueError("sequence_bits needs at least one sequence of tokens, got an empty batch")
    device, per_item = model_device(model), tokens[0].numel()
    parts = []
    with evaluating(model):
        for start in range(0, len(tokens), batch_size):
            part = slice(start, start + batch_size)
            c = None if cond is None else to_device(cond[part], device)
            parts.append(model.nll(to_device(tokens[part], device), c).double().cpu())  # (b,) nats per token
    return torch.cat(parts) * per_item / math.log(2)  # (N,)


@torch.no_grad()
def label_mixture_bits(model: nn.Module, tokens: torch.Tensor, num_classes: int,
                       batch_size: int = 500) -> torch.Tensor:
    """-log2 sum_y (1/num_classes) p(tokens[i] | y) of a class-conditional prior: (N, ...) -> (N,) float64.

    The conditional prior averaged over uniformly drawn labels is a prior over tokens alone, so
    this is a valid code length without the label; it is at most ``sequence_bits(model, tokens, y)``
    + log2(num_classes) for every y (the label sent uniformly, then the tokens given it).
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    per_label = torch.stack([sequence_bits(model, tokens, torch.full((len(tokens),), y, dtype=torch.long),
                                           batch_size) for y in range(num_classes)])  # (classes, N) bits
    log2_p = torch.logsumexp(-per_label * math.log(2), dim=0) / math.log(2) - math.log2(num_classes)
    return -log2_p  # (N,)
