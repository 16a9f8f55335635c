"""Lookup-free quantization (LFQ): the sign of each of d dimensions, a codebook of 2^d corners.

Paper: Yu et al., "Language Model Beats Diffusion: Tokenizer is Key to Visual Generation"
(MAGVIT-v2, ICLR 2024), section 3.1. The codebook is the set {-1, 1}^d, so finding the nearest code
needs no search (no "lookup"): each dimension is quantised on its own,

    q(z_i) = sign(z_i) = -1 if z_i <= 0 else 1,      Index(z) = sum_i 2^(i-1) · 1[z_i > 0]   (i = 1..d).

To use every code and to make assignments confident, the paper adds an entropy penalty,

    L_entropy = E_z[ H(p(c | z)) ] - H( E_z[ p(c | z) ] ),

small per-sample entropy (each z sits firmly in one code) minus large entropy of the batch-average
assignment (the batch spreads over all codes). The soft assignment is a softmax over the codes of
the negative squared distances, p(c | z) ∝ exp(-||z - c||² / tau). For the corners of a cube it
factorises over dimensions, p(c_i = 1 | z) = sigmoid(4 z_i / tau), so the per-sample entropy is a sum
of d binary entropies; the batch average does not factorise and is computed over all 2^d codes,
as one matrix product of the probabilities of the low and the high half of the bits (fine for the
d <= 12 used here). The loss is beta · mse(z, sg[q]) + entropy_weight · L_entropy,
with z_q = z + sg[q - z] (straight through).

The weight of the penalty is fixed during training here. Projections D -> d and back d -> D let
LFQ drop into the Chapter 2 VQ-VAE unchanged. ``tau`` is this implementation's choice.

Dimension key: B batch, D the encoder's channels, d bits (code dimensions), T frames, H W latent
height and width, N = B·T·H·W vectors, K = 2^d codes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vqlib.quantizers.vector import (QuantizerOutput, check_finite_loss, check_indices, check_latents, from_vectors,
                                     project, project_float32, straight_through_with_loss, to_vectors)

MAX_BITS = 12  # the batch entropy is computed over all 2^d codes: (N, 2^d) probabilities


def binary_entropy(logits: torch.Tensor) -> torch.Tensor:
    """H(sigmoid(logits)) in nats, elementwise, stable for large |logits|."""
    p = torch.sigmoid(logits)
    return -(p * F.logsigmoid(logits) + (1 - p) * F.logsigmoid(-logits))


class LookupFreeQuantizer(nn.Module):
    """LFQ with d = ``bits`` binary dimensions behind a projection D -> d and back.

    z_e (B, D, H, W) or (B, D, T, H, W) -> QuantizerOutput(z_q like z_e, loss (), indices (B, [T,] H, W)).
    """

    def __init__(self, bits: int, code_dim: int, beta: float = 0.25, entropy_weight: float = 0.1,
                 tau: float = 0.1) -> None:
        super().__init__()
        if int(bits) != bits or not 1 <= bits <= MAX_BITS:
            raise ValueError(f"bits must be an integer in [1, {MAX_BITS}] (the codebook has 2^bits codes), got {bits!r}")
        if int(code_dim) != code_dim or code_dim < 1:
            raise ValueError(f"code_dim must be an integer >= 1, got {code_dim!r}")
        if not (beta >= 0 and entropy_weight >= 0 and tau > 0):
            raise ValueError(f"beta and entropy_weight must be >= 0 and tau > 0, got beta={beta!r}, "
                             f"entropy_weight={entropy_weight!r}, tau={tau!r}")
        self.bits, self.code_dim, self.codebook_size = int(bits), int(code_dim), 2 ** int(bits)
        self.beta, self.entropy_weight, self.tau = float(beta), float(entropy_weight), float(tau)
        self.project_in = nn.Linear(self.code_dim, self.bits)  # D -> d
        self.project_out = nn.Linear(self.bits, self.code_dim)  # d -> D
        self.register_buffer("_powers", 2 ** torch.arange(self.bits), persistent=False)  # (d,) 1, 2, 4, ...

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """Indices (...,) long -> corners (..., d) in {-1, 1}: bit i of the index is dimension i."""
        bits = (indices[..., None] // self._powers) % 2  # (..., d) in {0, 1}
        return bits.float() * 2 - 1

    def entropy_terms(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(E_z[H(p(c|z))], H(E_z[p(c|z)])) in nats, for z (N, d), p(c|z) ∝ exp(-||z - c||²/tau).

        Computed in float32 even under autocast: a bfloat16 product would round the log-probabilities.
        """
        with torch.autocast(z.device.type, enabled=False):
            logits = 4 * z.float() / self.tau  # (N, d) logit of p(c_i = 1 | z)
            per_sample = binary_entropy(logits).sum(dim=1).mean()
            # p(c|z) = p(c_low|z) · p(c_high|z) for the low and high bits of the index, so the batch
            # average over all 2^d codes is one matrix product of the two halves' probabilities,
            # (2^(d-b), N) x (N, 2^b), instead of N·2^d exponentials
            low = self.bits // 2
            p_low, p_high = self.half_probs(logits[:, :low]), self.half_probs(logits[:, low:])  # (N, 2^b), (N, 2^(d-b))
            average = (p_high.t() @ p_low).flatten() / len(z)  # (K,) E_z[p(c | z)], index = high·2^b + low
            batch = -(average * average.clamp_min(1e-30).log()).sum()
        return per_sample, batch

    @staticmethod
    def half_probs(logits: torch.Tensor) -> torch.Tensor:
        """p(c|z) over the 2^b codes of b dimensions, from their logits (N, b) -> (N, 2^b), code k's bit i
        the sign of dimension i."""
        b = logits.shape[1]
        corners = ((torch.arange(2 ** b, device=logits.device)[:, None] >> torch.arange(b, device=logits.device)) & 1)
        # log p(c|z) = sum_i [c_i = 1] logsig(l_i) + [c_i = -1] logsig(-l_i) = sum_i logsig(-l_i) + l·[c = 1],
        # since logsig(l) - logsig(-l) = l: one (N, b) x (b, 2^b) product
        log_p = F.logsigmoid(-logits).sum(dim=1, keepdim=True) + logits @ corners.t().float()  # (N, 2^b)
        # below e^-40 (e^-80 for a product of two halves) a probability adds nothing to the average, and
        # exp would return slow subnormal floats
        return log_p.clamp_min(-40.0).exp()

    def forward(self, z_e: torch.Tensor) -> QuantizerOutput:
        check_latents(z_e, self.code_dim)
        z = project_float32(self.project_in, to_vectors(z_e))  # (N, d), float32 even under autocast: signs near 0
        q = torch.where(z > 0, 1.0, -1.0).to(z.dtype).detach()  # (N, d) sign, with sign(0) = -1 as in the paper
        z_q_low, commitment = straight_through_with_loss(z, q, 0.0, self.beta)  # beta·mse(z, sg[q]); no codebook
        check_finite_loss(commitment, z_e)
        per_sample, batch = self.entropy_terms(z)
        loss = commitment + self.entropy_weight * (per_sample - batch)
        indices = ((q > 0).long() * self._powers).sum(dim=1)  # (N,) sum_i 2^i · 1[z_i > 0]
        z_q = from_vectors(self.project_out(z_q_low), z_e.shape)  # (B, D, ...)
        return QuantizerOutput(z_q, loss, indices.view(z_e.shape[:1] + z_e.shape[2:]))

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """indices (B, ...) long -> vectors in the encoder's space (B, D, ...)."""
        check_indices(indices, self.codebook_size)
        codes = self.indices_to_codes(indices).movedim(-1, 1)  # (B, d, ...)
        return project(self.project_out, codes.to(self.project_out.weight.dtype))  # (B, D, ...)

    def extra_repr(self) -> str:
        return (f"bits={self.bits}, code_dim={self.code_dim}, beta={self.beta}, "
                f"entropy_weight={self.entropy_weight}, tau={self.tau}")
