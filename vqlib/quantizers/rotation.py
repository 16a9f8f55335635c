"""The rotation trick: pass gradients through a quantizer by a rotation and rescaling, not a copy.

Paper: Fifty et al., "Restructuring Vector Quantization with the Rotation Trick" (ICLR 2025,
arXiv:2410.06424), section 4. The straight-through estimator hands the decoder's gradient at the
code q to the encoder output e unchanged. The rotation trick instead writes q as a function of e,

    q~ = sg[ (||q|| / ||e||) · R ] e,      R = I - 2 r rᵀ + 2 q̂ êᵀ,      r = (ê + q̂) / ||ê + q̂||,

where ê = e / ||e|| and q̂ = q / ||q||. R is the rotation that takes ê to q̂ (two Householder
reflections, never formed as a matrix), so q~ = q in the forward pass, while the gradient becomes
dL/de = (||q|| / ||e||) · Rᵀ dL/dq: rotated and rescaled the way e would have to turn and stretch
to become q. Vectors in one Voronoi cell whose gradients point the same way get pushed apart
or together depending on where they sit relative to the code, which the paper argues spreads the
encoder's outputs over more codes. Both R and the scale are treated as constants (sg).

``rotation_trick(z_e, z_q)`` is the estimator; ``RotationTrickQuantizer`` wraps any nearest-code
quantizer of ``vqlib.quantizers.vector`` and replaces its straight-through gradient with it, keeping its
codebook, its losses and its indices. The forward value is exactly z_q.

Dimension key: B batch, D code dim, T frames, H W latent height and width, N = B·T·H·W vectors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vqlib.quantizers.vector import QuantizerOutput, from_vectors, to_vectors

EPS = 1e-12  # guards ||e|| = 0 and ê = -q̂ (r is then 0 and R = I + 2 q̂ êᵀ, which still maps ê to q̂)


def rotation_trick(z_e: torch.Tensor, z_q: torch.Tensor) -> torch.Tensor:
    """Forward: z_q exactly. Backward: dL/dz_e = (||q|| / ||e||) Rᵀ dL/dz_q at every position.

    z_e, z_q (B, D, ...) channels first -> (B, D, ...). No gradient reaches z_q.
    """
    if z_e.shape != z_q.shape:
        raise ValueError(f"z_e and z_q must have the same shape, got {tuple(z_e.shape)} and {tuple(z_q.shape)}")
    e = to_vectors(z_e)  # (N, D), carries the gradient
    with torch.no_grad():
        q = to_vectors(z_q)  # (N, D)
        e_norm, q_norm = e.norm(dim=1, keepdim=True), q.norm(dim=1, keepdim=True)  # (N, 1)
        if not torch.isfinite(e_norm.sum() + q_norm.sum()):  # any NaN/inf reaches a norm: one sync, no pass
            bad_e, bad_q = int((~torch.isfinite(z_e)).sum()), int((~torch.isfinite(z_q)).sum())
            raise ValueError(f"the rotation trick needs finite vectors, but z_e has {bad_e} and z_q {bad_q} "
                             f"NaN or inf values (of {z_e.numel()} each): the encoder diverged or its input "
                             "was not finite; try a lower learning rate")
        e_hat, q_hat = e / e_norm.clamp_min(EPS), q / q_norm.clamp_min(EPS)
        r = F.normalize(e_hat + q_hat, dim=1, eps=EPS)  # (N, D)
        scale = q_norm / e_norm.clamp_min(EPS)  # (N, 1)
    # R e = e - 2 r (r·e) + 2 q̂ (ê·e): two reflections applied to vectors, O(N·D), no (D, D) matrix
    rotated = e - 2 * r * (r * e).sum(1, keepdim=True) + 2 * q_hat * (e_hat * e).sum(1, keepdim=True)
    rotated = from_vectors(scale * rotated, z_e.shape)  # (B, D, ...) equals z_q up to rounding
    return z_q.detach() + (rotated - rotated.detach())  # the value of z_q exactly, the gradient of the rotation


class RotationTrickQuantizer(nn.Module):
    """Any nearest-code quantizer with the rotation trick in place of the straight-through estimator.

    z_e (B, D, ...) -> QuantizerOutput(z_q like z_e, loss (), indices (B, ...)): the wrapped
    quantizer's codes, losses and indices; only the gradient that reaches z_e through z_q changes.
    """

    def __init__(self, quantizer: nn.Module) -> None:
        super().__init__()
        if not hasattr(quantizer, "decode_indices"):
            raise TypeError(f"expected a quantizer with decode_indices (e.g. vqlib.quantizers.vector.VectorQuantizer), "
                            f"got {type(quantizer).__name__}")
        self.quantizer = quantizer
        self.codebook_size, self.code_dim = quantizer.codebook_size, quantizer.code_dim

    def forward(self, z_e: torch.Tensor) -> QuantizerOutput:
        out = self.quantizer(z_e)  # codes, the codebook/commitment losses and indices of the wrapped quantizer
        return QuantizerOutput(rotation_trick(z_e, out.z_q.detach()), out.loss, out.indices)

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """indices (B, ...) long -> code vectors (B, D, ...)."""
        return self.quantizer.decode_indices(indices)
