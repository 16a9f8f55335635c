"""Residual vector quantization: quantise what the previous stages missed, stage after stage.

Papers: Zeghidour et al., "SoundStream: An End-to-End Neural Audio Codec" (2021), algorithm 1,
and Lee et al., "Autoregressive Image Generation using Residual Quantization" (RQ-VAE, CVPR 2022),
section 3.1. With S stages, each with its own codebook of K codes,

    r_1 = z,   k_s = argmin_k ||r_s - e^s_k||²,   r_{s+1} = r_s - e^s_{k_s},   z_q = sum_s e^s_{k_s}.

The code of a position is the tuple (k_1, ..., k_S): S·log2 K bits that can name K^S vectors
from S·K stored ones, each stage refining the previous ones' error. Each stage here is an
``EMAVectorQuantizer`` (EMA codebook, data init, dead-code restarts, as in SoundStream) applied to
the residual r_s = z - sg[sum of the earlier codes], so that its commitment loss is RQ-VAE's
beta·||z - sg[Ẑ^(s)]||² on the partial sum Ẑ^(s) = e^1 + ... + e^s; the loss is the sum over
stages. The decoder's gradient passes straight through from z_q to z.

Left out: quantizer dropout (SoundStream trains with a random number of stages, for bit rates
chosen at inference) and RQ-VAE's shared codebook across stages.

Dimension key: B batch, S stages, D code dim, T frames, H W latent height and width,
N = B·T·H·W vectors, K codes per stage.
"""

from __future__ import annotations

import torch
from torch import nn

from vqlib.quantizers.vector import (EMAVectorQuantizer, QuantizerOutput, at_least_float32, check_latents,
                                     straight_through)


class ResidualVectorQuantizer(nn.Module):
    """S stages of EMA vector quantization, each on the residual of the ones before.

    z_e (B, D, H, W) or (B, D, T, H, W) -> QuantizerOutput(z_q like z_e, loss (), indices (B, S, [T,] H, W)).
    """

    def __init__(self, num_stages: int, codebook_size: int, code_dim: int, beta: float = 0.25,
                 decay: float = 0.99, data_init: bool = True, restart_threshold: float = 1.0) -> None:
        super().__init__()
        if int(num_stages) != num_stages or num_stages < 1:
            raise ValueError(f"num_stages must be an integer >= 1, got {num_stages!r}")
        self.stages = nn.ModuleList(
            EMAVectorQuantizer(codebook_size, code_dim, beta=beta, decay=decay, data_init=data_init,
                               restart_threshold=restart_threshold) for _ in range(int(num_stages)))
        self.num_stages, self.codebook_size, self.code_dim = int(num_stages), int(codebook_size), int(code_dim)

    def forward(self, z_e: torch.Tensor) -> QuantizerOutput:
        check_latents(z_e, self.code_dim)
        z = z_e.to(at_least_float32(z_e.dtype))  # residuals in float32: in bfloat16 they would lose the small errors
        partial = torch.zeros_like(z)  # (B, D, ...) Ẑ^(s), the sum of the codes so far (no gradient)
        loss, indices = z.new_zeros(()), []
        for stage in self.stages:
            out = stage(z - partial)  # r_s = z - sg[Ẑ^(s-1)]: the commitment loss pulls z towards Ẑ^(s)
            partial = partial + out.z_q.detach()
            loss = loss + out.loss
            indices.append(out.indices)  # (B, ...)
        z_q = straight_through(z_e, partial.to(z_e.dtype))
        return QuantizerOutput(z_q, loss, torch.stack(indices, dim=1))  # indices (B, S, ...)

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """indices (B, S, ...) long, one code per stage -> the sum of the codes (B, D, ...)."""
        if not torch.is_tensor(indices) or indices.dim() < 2 or indices.shape[1] != self.num_stages:
            shape = tuple(indices.shape) if torch.is_tensor(indices) else type(indices).__name__
            raise ValueError(f"indices must have shape (B, S, ...) with S={self.num_stages} stages in dim 1, got {shape}")
        return sum(stage.decode_indices(indices[:, s]) for s, stage in enumerate(self.stages))

    def extra_repr(self) -> str:
        return f"num_stages={self.num_stages}, codebook_size={self.codebook_size}, code_dim={self.code_dim}"
