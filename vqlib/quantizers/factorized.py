"""Factorized, l2-normalised codes: look codes up in a low-dimensional space, on the unit sphere.

Paper: Yu et al., "Vector-quantized Image Modeling with Improved VQGAN" (ViT-VQGAN, ICLR 2022),
section 3.2, "Codebook learning". Two changes to the VQ of van den Oord et al. (2017):

- factorized codes: a linear projection maps the encoder's D-dimensional output to a
  low-dimensional space (d = 8 or 32 in the paper) where the nearest code is searched; the code
  found is mapped back to D dimensions for the decoder;
- l2-normalised codes: the projected vector z and every code e_k are divided by their norms
  before the search, so that ||ẑ - ê_k||² = 2 - 2 ẑ·ê_k and the nearest code is the one of
  largest cosine similarity. Codes that sit far from the data in norm, the dead codes of
  Chapter 2, no longer exist: every code lies on the same sphere as every input.

The losses are those of the VQ-VAE on the normalised vectors: mse(ê, sg[ẑ]) + beta·mse(ẑ, sg[ê]),
with the straight-through estimator in the low-dimensional space. The codebook is a parameter
initialised from a normal distribution and learned by gradient, as in the paper.

Dimension key: B batch, D the encoder's channels, d low (code) dimension, T frames, H W latent
height and width, N = B·T·H·W vectors, K codebook size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vqlib.quantizers.vector import (QuantizerOutput, check_finite_loss, check_latents, check_sizes, decode,
                                     from_vectors, nearest_code, project, project_float32, straight_through_with_loss,
                                     to_vectors)


class FactorizedQuantizer(nn.Module):
    """VQ of l2-normalised d-dimensional projections of the encoder's output (ViT-VQGAN).

    z_e (B, D, H, W) or (B, D, T, H, W) -> QuantizerOutput(z_q like z_e, loss (), indices (B, [T,] H, W)).
    """

    def __init__(self, codebook_size: int, code_dim: int, low_dim: int = 8, beta: float = 0.25) -> None:
        super().__init__()
        check_sizes(codebook_size, code_dim, beta)
        if int(low_dim) != low_dim or low_dim < 1:
            raise ValueError(f"low_dim (the dimension codes are looked up in) must be an integer >= 1, got {low_dim!r}")
        self.codebook_size, self.code_dim = int(codebook_size), int(code_dim)
        self.low_dim, self.beta = int(low_dim), float(beta)
        self.project_in = nn.Linear(self.code_dim, self.low_dim)  # D -> d
        self.project_out = nn.Linear(self.low_dim, self.code_dim)  # d -> D
        self.codebook = nn.Parameter(torch.randn(self.codebook_size, self.low_dim))  # (K, d), normalised when used

    def normalised_codebook(self) -> torch.Tensor:
        """The codes on the unit sphere, (K, d)."""
        return F.normalize(self.codebook, dim=1)

    def forward(self, z_e: torch.Tensor) -> QuantizerOutput:
        check_latents(z_e, self.code_dim)
        z = F.normalize(project_float32(self.project_in, to_vectors(z_e)), dim=1)  # (N, d) on the unit sphere, float32
        codebook = self.normalised_codebook()  # (K, d)
        indices = nearest_code(z.detach(), codebook)  # (N,) = argmax_k of the cosine similarity z·e_k
        codes = F.embedding(indices, codebook)  # (N, d), carries the codebook gradient
        z_q_low, loss = straight_through_with_loss(z, codes, 1.0, self.beta)  # mse(ê, sg[ẑ]) + beta·mse(ẑ, sg[ê])
        check_finite_loss(loss, z_e)
        z_q = from_vectors(self.project_out(z_q_low), z_e.shape)  # (B, D, ...)
        return QuantizerOutput(z_q, loss, indices.view(z_e.shape[:1] + z_e.shape[2:]))

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """indices (B, ...) long -> vectors in the encoder's space (B, D, ...)."""
        return project(self.project_out, decode(self.normalised_codebook(), indices))  # (B, d, ...) -> (B, D, ...)

    def extra_repr(self) -> str:
        return (f"codebook_size={self.codebook_size}, code_dim={self.code_dim}, low_dim={self.low_dim}, "
                f"beta={self.beta}")
