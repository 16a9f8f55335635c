"""One factory for every quantizer of the book: ``make_quantizer(kind, code_dim, **options)``.

Every tokenizer builds its quantizer here (the VQ-VAE of chapter 2, VQ-VAE-2, VQGAN, the video
tokenizers), and chapter 6 builds each quantizer of its comparison here, so a kind has one name
and one set of options everywhere. ``options`` are the keyword arguments of the kind's class.

Kinds:

- "vq": ``VectorQuantizer``, codebook learned by gradient (van den Oord et al. 2017);
- "ema": ``EMAVectorQuantizer``, EMA codebook; data init, k-means init and dead-code restarts
  are options (``vqlib.quantizers.vector``);
- "l2": ``FactorizedQuantizer``, factorized l2-normalised codes (Yu et al. 2022, ViT-VQGAN);
- "rotation": ``RotationTrickQuantizer`` around a "vq" or "ema" quantizer, named by the option
  ``inner`` (default "vq"), with that quantizer's options (Fifty et al. 2025);
- "residual": ``ResidualVectorQuantizer``, S stages of residual VQ (SoundStream, RQ-VAE);
- "fsq": ``FiniteScalarQuantizer`` (Mentzer et al. 2024);
- "lfq": ``LookupFreeQuantizer`` (Yu et al. 2024, MAGVIT-v2).

Every quantizer returns a ``QuantizerOutput`` for latents (B, D, ...) with D = ``code_dim`` and
has ``decode_indices``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from vqlib.quantizers.factorized import FactorizedQuantizer
from vqlib.quantizers.fsq import FiniteScalarQuantizer
from vqlib.quantizers.lfq import LookupFreeQuantizer
from vqlib.quantizers.residual import ResidualVectorQuantizer
from vqlib.quantizers.rotation import RotationTrickQuantizer
from vqlib.quantizers.vector import EMAVectorQuantizer, VectorQuantizer

KINDS = ("vq", "ema", "l2", "rotation", "residual", "fsq", "lfq")
CLASSES = {"vq": VectorQuantizer, "ema": EMAVectorQuantizer, "l2": FactorizedQuantizer,
           "residual": ResidualVectorQuantizer, "fsq": FiniteScalarQuantizer, "lfq": LookupFreeQuantizer}


def make_quantizer(kind: str, code_dim: int, **options) -> nn.Module:
    """A quantizer of ``kind`` for latents with ``code_dim`` channels; ``options`` are its constructor's arguments.

    E.g. ``make_quantizer("ema", 64, codebook_size=512, beta=0.25, decay=0.99)``. "rotation" takes
    ``inner`` ("vq" or "ema", default "vq") and the options of that quantizer.
    """
    if kind == "rotation":
        inner = options.pop("inner", "vq")
        if inner not in ("vq", "ema"):
            raise ValueError(f"the rotation trick wraps inner='vq' or 'ema', got {inner!r}")
        return RotationTrickQuantizer(make_quantizer(inner, code_dim, **options))
    if kind not in CLASSES:
        raise ValueError(f"unknown quantizer kind {kind!r}: expected one of {KINDS}")
    return CLASSES[kind](code_dim=code_dim, **options)


def quantizer_step_flops(quantizer: nn.Module, z_e: torch.Tensor) -> int:
    """Matrix-product FLOPs of one training step of ``quantizer`` on latents ``z_e`` (B, D, ...): the
    forward pass in training mode and the backward pass of z_q and of its loss (if it has one), as
    ``torch.utils.flop_counter`` counts them (matrix products and convolutions; element-wise work
    such as FSQ's rounding is not counted). Runs on a copy: the quantizer's buffers do not move.
    Deterministic, unlike a timing: Chapter 6 compares quantizers by it."""
    net = copy.deepcopy(quantizer).train()
    z = z_e.detach().clone().requires_grad_()
    with FlopCounterMode(display=False) as counter:
        out = net(z)
        total = out.z_q.sum()
        if out.loss.requires_grad:
            total = total + out.loss
        total.backward()
    return counter.get_total_flops()
