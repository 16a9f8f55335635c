"""Finite scalar quantization (FSQ): round each of a few bounded dimensions to a handful of levels.

Paper: Mentzer, Minnen, Agustsson and Tschannen, "Finite Scalar Quantization: VQ-VAE Made Simple"
(ICLR 2024), section 3 and the code of its appendix A.1, followed line by line:

    half_l = (L - 1)(1 - eps) / 2,   offset = 0.5 if L is even else 0,   shift = tan(offset / half_l)
    bound(z) = tanh(z + shift) · half_l - offset
    z_q = round_ste(bound(z)) / (L // 2)                      (each dimension has exactly L values)

The half-level offset makes an even L work: bound(z) then ranges over just inside (-L/2, L/2 - 1)
and rounds to the L integers -L/2, ..., L/2 - 1 (for an odd L: -(L-1)/2, ..., (L-1)/2). The shift
makes bound(0) = 0 only approximately: atanh(offset / half_l) would be exact; tan and atanh agree
to third order, and |bound(0)| < 5e-4 for L >= 3. The codebook is implicit: every combination of
levels, prod(L) codes, none of which can die. There is no codebook and no loss; the index of a code
is its mixed-radix number with digits round(bound(z)) + L // 2 and basis (1, L_1, L_1·L_2, ...).

Here linear maps project the encoder's D channels to d = len(levels) and back (in the paper the
encoder outputs d channels itself), so FSQ drops into the Chapter 2 VQ-VAE unchanged.

Dimension key: B batch, D the encoder's channels, d = len(levels) code dimensions, T frames,
H W latent height and width, N = B·T·H·W vectors, K = prod(levels) implicit codes.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from vqlib.quantizers.vector import (QuantizerOutput, check_finite_loss, check_indices, check_latents, from_vectors,
                                     project, project_float32, to_vectors)


def check_levels(levels: Sequence[int]) -> tuple[int, ...]:
    """The levels as a tuple of ints >= 2, or a ValueError saying what is wrong."""
    levels = tuple(levels)
    if not levels or any(int(level) != level or level < 2 for level in levels):
        raise ValueError(f"levels must be a non-empty list of integers >= 2 (values per dimension), got {levels!r}")
    return tuple(int(level) for level in levels)


class FiniteScalarQuantizer(nn.Module):
    """FSQ behind a linear projection D -> d and back d -> D.

    z_e (B, D, H, W) or (B, D, T, H, W) -> QuantizerOutput(z_q like z_e, loss () = 0, indices (B, [T,] H, W)).
    """

    def __init__(self, levels: Sequence[int], code_dim: int, eps: float = 1e-3) -> None:
        super().__init__()
        self.levels = check_levels(levels)
        if int(code_dim) != code_dim or code_dim < 1:
            raise ValueError(f"code_dim must be an integer >= 1, got {code_dim!r}")
        self.code_dim, self.eps = int(code_dim), float(eps)
        self.codebook_size = math.prod(self.levels)  # K, the implicit codebook
        d = len(self.levels)
        self.project_in = nn.Linear(self.code_dim, d)  # D -> d
        self.project_out = nn.Linear(d, self.code_dim)  # d -> D
        levels_t = torch.tensor(self.levels)
        self.register_buffer("_levels", levels_t.float(), persistent=False)  # (d,) L
        self.register_buffer("_half_width", (levels_t // 2).float(), persistent=False)  # (d,) L // 2
        basis = torch.cumprod(torch.tensor((1,) + self.levels[:-1]), dim=0)  # (d,) 1, L_1, L_1·L_2, ...
        self.register_buffer("_basis", basis, persistent=False)

    def bound(self, z: torch.Tensor) -> torch.Tensor:
        """The paper's bound: z (..., d) -> values in (-L/2, L/2) that round to exactly L integers."""
        half_l = (self._levels - 1) * (1 - self.eps) / 2  # (d,)
        offset = torch.where(self._levels % 2 == 0, 0.5, 0.0)  # (d,) the half-level offset for even L
        shift = torch.tan(offset / half_l)  # (d,) as in the paper's code
        return torch.tanh(z + shift) * half_l - offset

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """z (..., d) -> codes in [-1, 1] (..., d), rounded with the straight-through gradient."""
        bounded = self.bound(z)
        rounded = bounded + (torch.round(bounded) - bounded).detach()  # round_ste
        return rounded / self._half_width

    def codes_to_indices(self, codes: torch.Tensor) -> torch.Tensor:
        """Normalised codes (..., d) -> indices (...,) long: mixed-radix digits code·(L//2) + L//2."""
        digits = torch.round(codes * self._half_width + self._half_width).long()  # (..., d) in [0, L)
        return (digits * self._basis).sum(dim=-1)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """Indices (...,) long -> normalised codes (..., d): the inverse of ``codes_to_indices``."""
        digits = (indices[..., None] // self._basis) % self._levels.long()  # (..., d)
        return (digits - self._half_width) / self._half_width

    @property
    def implicit_codebook(self) -> torch.Tensor:
        """All K codes, (K, d), in index order."""
        return self.indices_to_codes(torch.arange(self.codebook_size, device=self._basis.device))

    def forward(self, z_e: torch.Tensor) -> QuantizerOutput:
        check_latents(z_e, self.code_dim)
        z = project_float32(self.project_in, to_vectors(z_e))  # (N, d), float32 even under autocast
        check_finite_loss(z.detach().sum(), z_e)  # FSQ has no loss to catch NaN/inf for us
        codes = self.quantize(z.float())  # (N, d) in [-1, 1]; bounded and rounded in float32 even under autocast
        indices = self.codes_to_indices(codes.detach())  # (N,)
        z_q = from_vectors(self.project_out(codes), z_e.shape)  # (B, D, ...)
        return QuantizerOutput(z_q, z_e.new_zeros(()), indices.view(z_e.shape[:1] + z_e.shape[2:]))

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """indices (B, ...) long -> vectors in the encoder's space (B, D, ...)."""
        check_indices(indices, self.codebook_size)
        codes = self.indices_to_codes(indices).movedim(-1, 1)  # (B, d, ...)
        return project(self.project_out, codes)  # (B, D, ...)

    def extra_repr(self) -> str:
        return f"levels={self.levels}, code_dim={self.code_dim}, codebook_size={self.codebook_size}"
