"""A VQ-VAE whose decoder is also told a condition, so that its codes keep only what the condition does not say.

Paper: van den Oord, Vinyals and Kavukcuoglu, "Neural Discrete Representation Learning" (NeurIPS
2017), §4.3: on speech, the decoder is also given the speaker's identity; the codes then need not
carry the voice, and hold the content (which is what lets the authors turn one speaker's words into
another's voice). Here the condition is one vector per example, projected to a few channels,
broadcast over the code grid and concatenated to the quantised codes before the VQ-VAE's decoder.
The encoder may read another signal than the one the decoder draws: Chapter 10 encodes a panel's
ink layer and decodes the painted panel, told its colour and style, so that a code map is the same
drawing in every colour and style by construction.

What is in it: ``ConditionalVQVAEConfig`` (a ``VQVAEConfig`` with the condition's width and the
decoder's output channels) and ``ConditionalVQVAE`` (``forward(x, condition)``, ``encode(x)``,
``decode(indices, condition)``), and ``conditional_vqvae_loss`` for ``fit``.

Dimension key: B batch, C_in encoder channels, C_out decoder channels, H W image size, h w code grid,
D code dim, E condition width, F projected condition channels.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vqlib.core.nn import check_images
from vqlib.quantizers.factory import make_quantizer
from vqlib.quantizers.vector import inference_indices
from vqlib.tokenizers.base import TokenizerOutput, check_index_rank
from vqlib.tokenizers.vqvae import Decoder, Encoder, VQVAEConfig, quantizer_options


@dataclass(frozen=True)
class ConditionalVQVAEConfig(VQVAEConfig):
    condition_dim: int = 1  # E: width of the condition vector the decoder is told
    condition_channels: int = 16  # F: the condition is projected to this many channels
    out_channels: int = 3  # C_out: channels the decoder draws (in_channels: what the encoder reads)

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("condition_dim", "condition_channels", "out_channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


class ConditionalVQVAE(nn.Module):
    """x (B, C_in, H, W) and condition (B, E) -> TokenizerOutput(x_hat (B, C_out, H, W), loss, indices
    (B, h, w), z_e, z_q). ``encode`` reads x only; ``decode`` draws codes under a condition."""

    def __init__(self, config: ConditionalVQVAEConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.quantizer = make_quantizer(config.quantizer, config.code_dim, **quantizer_options(config))
        self.condition = nn.Linear(config.condition_dim, config.condition_channels)
        # the decoder of a VQ-VAE that draws out_channels from codes widened by the condition's channels
        self.decoder = Decoder(dataclasses.replace(config, in_channels=config.out_channels,
                                                   code_dim=config.code_dim + config.condition_channels))

    def check_input(self, x: torch.Tensor) -> None:
        check_images(x, self.config.in_channels, self.config.downsample, dtype=next(self.parameters()).dtype)

    def check_condition(self, condition: torch.Tensor, batch: int) -> None:
        e = self.config.condition_dim
        if not torch.is_tensor(condition) or not condition.is_floating_point() or condition.shape != (batch, e):
            got = tuple(condition.shape) if torch.is_tensor(condition) else type(condition).__name__
            raise ValueError(f"condition must be float vectors ({batch}, {e}), one per example, got {got}")

    def draw(self, z_q: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """Quantised codes (B, D, h, w) under conditions (B, E) -> (B, C_out, H, W)."""
        c = self.condition(condition)[:, :, None, None].expand(-1, -1, *z_q.shape[2:])  # (B, F, h, w)
        return self.decoder(torch.cat([z_q, c], dim=1))

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> TokenizerOutput:
        self.check_input(x)
        self.check_condition(condition, len(x))
        z_e = self.encoder(x)  # (B, D, h, w)
        q = self.quantizer(z_e)
        return TokenizerOutput(self.draw(q.z_q, condition), q.loss, q.indices, z_e, q.z_q)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C_in, H, W) -> indices (B, h, w). Inference only: the codebook never changes."""
        self.check_input(x)
        return inference_indices(self.quantizer, self.encoder(x))

    @torch.no_grad()
    def decode(self, indices: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """indices (B, h, w) long under conditions (B, E) -> x_hat (B, C_out, H, W)."""
        check_index_rank(indices, 3, "(B, h, w) code map")
        self.check_condition(condition, len(indices))
        return self.draw(self.quantizer.decode_indices(indices), condition)


def conditional_vqvae_loss(model: ConditionalVQVAE, batch: tuple) -> dict[str, torch.Tensor]:
    """The loss ``fit`` optimises on a batch (x, condition, target): mse(x_hat, target) + the quantizer's loss."""
    x, condition, target = batch
    out = model(x, condition)
    recon = F.mse_loss(out.x_hat, target)
    return {"loss": recon + out.loss, "recon": recon, "vq": out.loss}
