"""What every tokenizer of the book shares: one output type and one encode -> quantize -> decode shell.

A tokenizer is an autoencoder with a quantizer in the middle (van den Oord et al. 2017): the
encoder maps an input x (images (B, C, H, W) or videos (B, T, C, H, W)) to latents z_e, the
quantizer (``vqlib.quantizers.factory``) replaces every latent vector by a code, giving integer
indices and the quantised latents z_q with the straight-through gradient, and the decoder maps
z_q back to a reconstruction x_hat. The models differ only in their encoder, their decoder and
the inputs they accept; this file writes the rest once.

What is in it:

- ``TokenizerOutput``: what the forward pass of every tokenizer returns (the VQ-VAE, VQ-VAE-2,
  VQGAN and the video tokenizers);
- ``Tokenizer``: ``forward``, ``encode`` (x -> indices) and ``decode`` (indices -> x_hat) for a
  model that gives ``encoder``, ``quantizer`` and ``decoder`` modules, an input check
  (``check_input``) and an index check (``check_index_shape``);
- ``check_index_rank``: the index check's common part, with a message a student can act on.

Left out: the losses (the reconstruction loss is the training recipe's choice) and scoring.

Dimension key: B batch, D code dim, S residual stages; "..." the latent grid: (h, w) for images,
(t, h, w) for videos.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import NamedTuple, Union

import torch
from torch import nn

from vqlib.quantizers.vector import QuantizerOutput, inference_indices

Levels = Union[torch.Tensor, tuple[torch.Tensor, ...]]  # one tensor, or one per level (coarsest first)


class TokenizerOutput(NamedTuple):
    """The forward pass of a tokenizer.

    For a hierarchical tokenizer (VQ-VAE-2), ``indices``, ``z_e`` and ``z_q`` are tuples with one
    tensor per level, coarsest first, in the order ``encode`` returns the levels' indices.
    """

    x_hat: torch.Tensor  # the input's shape: the reconstruction (no sigmoid: a linear output)
    loss: torch.Tensor  # () the quantizer's loss only; the reconstruction loss is the caller's choice
    indices: Levels  # (B, ...) long codes; (B, S, ...) for a quantizer of S residual stages
    z_e: Levels  # (B, D, ...) encoder output
    z_q: Levels  # (B, D, ...) quantised, with the straight-through gradient


def check_index_rank(indices: torch.Tensor, ndim: int, expected: str, name: str = "indices") -> None:
    """Raise a clear error unless ``indices`` is a tensor of rank ``ndim``; ``expected`` names the
    shape in the message, e.g. "(B, h, w) code map". Values are checked by the quantizer."""
    if not torch.is_tensor(indices) or indices.dim() != ndim:
        got = tuple(indices.shape) if torch.is_tensor(indices) else type(indices).__name__
        raise ValueError(f"{name} must be a {expected}, got {got}")


class Tokenizer(nn.Module, ABC):
    """encode -> quantize -> decode, written once. x -> TokenizerOutput(x_hat, loss, indices, z_e, z_q).

    A subclass builds ``self.encoder`` (x -> z_e (B, D, ...)), ``self.quantizer`` (z_e ->
    ``QuantizerOutput``, with ``decode_indices``) and ``self.decoder`` (z_q -> x_hat, the input's
    shape), and says which inputs and which code grids it accepts.
    """

    encoder: nn.Module
    quantizer: nn.Module
    decoder: nn.Module

    @abstractmethod
    def check_input(self, x: torch.Tensor) -> None:
        """Raise a clear error unless the model can take ``x``."""

    @abstractmethod
    def check_index_shape(self, indices: torch.Tensor) -> None:
        """Raise a clear error unless ``decode`` can take ``indices`` (their shape; the quantizer checks values)."""

    def forward(self, x: torch.Tensor) -> TokenizerOutput:
        self.check_input(x)
        z_e = self.encoder(x)  # (B, D, ...)
        q: QuantizerOutput = self.quantizer(z_e)
        x_hat = self.decoder(q.z_q)  # the input's shape
        return TokenizerOutput(x_hat, q.loss, q.indices, z_e, q.z_q)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x -> indices (B, ...). Inference only: no gradient, and the codebook never changes."""
        self.check_input(x)
        return inference_indices(self.quantizer, self.encoder(x))

    @torch.no_grad()
    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """indices (B, ...) long -> x_hat, the shape of the inputs that give such indices."""
        self.check_index_shape(indices)
        return self.decoder(self.quantizer.decode_indices(indices))
