"""Gated PixelCNN: an autoregressive prior over a map of codes, in raster order.

Paper: van den Oord, Kalchbrenner, Vinyals, Espeholt, Graves, Kavukcuoglu, "Conditional Image
Generation with PixelCNN Decoders", NeurIPS 2016 (the gated PixelCNN), building on van den Oord,
Kalchbrenner, Kavukcuoglu, "Pixel Recurrent Neural Networks", ICML 2016 (masked convolutions).

What is in it:

- ``MaskedConv2d``: a convolution whose weight is multiplied by a fixed 0/1 mask on every call,
  so a masked tap never contributes and its gradient is exactly zero.
- Two stacks (Sec. 2.2 of the paper). The *vertical* stack sees every row above the current one
  (a k x k kernel masked below its centre row); the *horizontal* stack sees the pixels to the left
  in the current row (a 1 x k kernel masked right of its centre) plus the vertical stack's features.
  Together they cover every earlier pixel: no blind spot, unlike a stack of masked k x k convs.
  In the first layer both kernels also mask their centre (the paper's mask "A"): the vertical one
  its whole centre row, so a pixel never sees itself.
- Gated activations tanh(W_f * x + V_f h) * sigmoid(W_g * x + V_g h) (eq. 2 and 4): an optional
  class label is embedded into a bias V h added to both stacks (one embedding shared by all
  layers; the paper learns one per layer).
- Residual connections on the horizontal stack after the first layer.
- Sampling pixel by pixel; to sample row i only rows <= i are computed (rows below cannot matter).

Left out: the skip connections of the paper's large models, conditioning on spatial maps (a 1 x 1
convolution of a map instead of the class embedding; the VQ-VAE-2 bottom prior adds it), and
caching across sampling steps (a conv prior recomputes; the GPT caches, see ``vqlib.priors.gpt``).

Dimension key: B batch, C channels (hidden), H W code-map height and width, K vocabulary size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vqlib.core.device import to_device
from vqlib.core.profile import pick
from vqlib.priors.base import check_cond, check_sampling, check_tokens, is_integer, sample_from_logits


@dataclass(frozen=True)
class PixelCNNConfig:
    vocab_size: int  # K: codebook size of the VQ-VAE whose codes are modelled
    n_layers: int = 8  # gated layers; each grows the receptive field by kernel_size // 2 rows and columns
    hidden: int = 64  # C: channels of each stack
    kernel_size: int = 3  # odd; the paper uses 3 (and 7 in the first layer of its largest models)
    num_classes: int = 0  # > 0: class-conditional, forward and sample then need labels cond (B,)

    def __post_init__(self) -> None:
        if self.vocab_size < 2 or self.n_layers < 1 or self.hidden < 1:
            raise ValueError(f"need vocab_size >= 2, n_layers >= 1, hidden >= 1, got {self}")
        if self.kernel_size < 3 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and >= 3, got {self.kernel_size}")
        if self.num_classes < 0:
            raise ValueError(f"num_classes must be >= 0 (0 = unconditional), got {self.num_classes}")

    @classmethod
    def for_profile(cls, vocab_size: int, profile: str | None = None, **overrides) -> "PixelCNNConfig":
        """The book's size for a 7 x 7 code map in ``profile`` (default: the current one);
        ``overrides`` set any field."""
        sizes = pick(smoke=dict(n_layers=2, hidden=8), quick=dict(n_layers=6, hidden=32),
                     full=dict(n_layers=12, hidden=128), profile=profile)
        return cls(vocab_size=vocab_size, **{**sizes, **overrides})


# ----------------------------------------------------------------------------- masks and masked convs

def vertical_mask(kernel_size: int, include_center_row: bool) -> torch.Tensor:
    """(k, k) mask of the vertical stack: rows above the centre, and the centre row if included."""
    mask = torch.zeros(kernel_size, kernel_size)
    mask[: kernel_size // 2 + int(include_center_row)] = 1
    return mask


def horizontal_mask(kernel_size: int, include_center: bool) -> torch.Tensor:
    """(1, k) mask of the horizontal stack: pixels left of the centre, and the centre if included."""
    mask = torch.zeros(1, kernel_size)
    mask[0, : kernel_size // 2 + int(include_center)] = 1
    return mask


class MaskedConv2d(nn.Conv2d):
    """A 'same'-padded convolution computed with weight * mask, so masked taps get zero gradient."""

    def __init__(self, in_channels: int, out_channels: int, mask: torch.Tensor) -> None:
        kh, kw = mask.shape
        super().__init__(in_channels, out_channels, (kh, kw), padding=(kh // 2, kw // 2))
        self.register_buffer("mask", mask.clone(), persistent=False)  # rebuilt from the config, not saved

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


def gate(x: torch.Tensor) -> torch.Tensor:
    """tanh(first half) * sigmoid(second half) along channels: (B, 2C, H, W) -> (B, C, H, W)."""
    f, g = x.chunk(2, dim=1)
    return torch.tanh(f) * torch.sigmoid(g)


class GatedLayer(nn.Module):
    """One layer of both stacks (Fig. 2 of the paper). ``first``: mask the centre (mask A)."""

    def __init__(self, channels: int, kernel_size: int, first: bool) -> None:
        super().__init__()
        self.v_conv = MaskedConv2d(channels, 2 * channels, vertical_mask(kernel_size, not first))
        self.h_conv = MaskedConv2d(channels, 2 * channels, horizontal_mask(kernel_size, not first))
        self.v_to_h = nn.Conv2d(2 * channels, 2 * channels, 1)  # vertical features feed the horizontal stack
        self.h_out = nn.Conv2d(channels, channels, 1)

    def forward(self, v: torch.Tensor, h: torch.Tensor, bias: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
        """v, h (B, C, H, W); bias (B, 2C, 1, 1) from the condition, or 0 -> new v, h (B, C, H, W)."""
        v_feat = self.v_conv(v)  # (B, 2C, H, W): rows above only
        h_feat = self.h_conv(h) + self.v_to_h(v_feat)  # (B, 2C, H, W): left in the row + all rows above
        return gate(v_feat + bias), self.h_out(gate(h_feat + bias))


# ----------------------------------------------------------------------------- the model

class PixelCNN(nn.Module):
    """Gated PixelCNN over code maps: tokens (B, H, W) long -> logits (B, K, H, W).

    The logits at pixel p = (i, j) depend only on the pixels before p in raster order (rows above,
    then the pixels to its left), so ``F.cross_entropy(logits, tokens)`` is the exact negative
    log-likelihood, and sampling goes one pixel at a time.
    """

    def __init__(self, config: PixelCNNConfig) -> None:
        super().__init__()
        self.config = config
        c = config.hidden
        self.embed = nn.Embedding(config.vocab_size, c)
        self.class_embed = nn.Embedding(config.num_classes, 2 * c) if config.num_classes else None
        self.layers = nn.ModuleList(GatedLayer(c, config.kernel_size, first=i == 0) for i in range(config.n_layers))
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(c, c, 1), nn.ReLU(), nn.Conv2d(c, config.vocab_size, 1))

    def forward(self, tokens: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """tokens (B, H, W) long in [0, K), cond (B,) long labels or None -> logits (B, K, H, W)."""
        check_tokens(tokens, self.config.vocab_size, "(B, H, W)", ndim=3)
        check_cond(cond, self.config.num_classes, len(tokens))
        x = self.embed(tokens).permute(0, 3, 1, 2)  # (B, C, H, W)
        return self.logits_from_embeddings(x, cond)

    def logits_from_embeddings(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """The network after the token embedding: x (B, C, H, W) float -> logits (B, K, H, W).

        Public so that the receptive field can be measured with input gradients (see ``dependence``).
        """
        bias = 0.0 if cond is None else self.class_embed(cond)[:, :, None, None]  # (B, 2C, 1, 1)
        v, h = self.layers[0](x, x, bias)  # no residual here: x holds the current pixel
        for layer in self.layers[1:]:
            v, h_new = layer(v, h, bias)
            h = h + h_new
        return self.head(h)  # (B, K, H, W)

    def nll(self, tokens: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Negative log-likelihood in nats per token of each code map: (B, H, W) -> (B,)."""
        logits = self(tokens, cond)  # (B, K, H, W)
        return F.cross_entropy(logits, tokens, reduction="none").flatten(1).mean(1)

    @torch.no_grad()
    def sample(self, n: int, shape: tuple[int, int], cond: torch.Tensor | None = None,
               temperature: float = 1.0, top_k: int | None = None) -> torch.Tensor:
        """Draw n code maps of ``shape`` (H, W), one pixel at a time in raster order -> (n, H, W) long."""
        check_sampling(n, temperature, top_k)
        check_cond(cond, self.config.num_classes, n)
        if not (isinstance(shape, (tuple, list, torch.Size)) and len(shape) == 2
                and all(is_integer(s) and s >= 1 for s in shape)):
            raise ValueError(f"shape must be the code map's (H, W), two integers >= 1, got {shape!r}")
        height, width = shape
        device = self.embed.weight.device
        tokens = torch.zeros(n, height, width, dtype=torch.long, device=device)
        cond = None if cond is None else to_device(cond, device)
        for i in range(height):
            for j in range(width):
                logits = self(tokens[:, : i + 1], cond)  # (n, K, i+1, W): rows below cannot matter
                tokens[:, i, j] = sample_from_logits(logits[:, :, i, j], temperature, top_k)
        return tokens


def dependence(network, x: torch.Tensor, position: tuple[int, int]) -> torch.Tensor:
    """Which input pixels the output at ``position`` (i, j) depends on, by input gradients.

    network maps x (1, C, H, W) to outputs (1, C', H, W); returns (H, W): the summed absolute
    gradient of the outputs at (i, j) with respect to each input pixel (0 = no dependence).
    """
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"expected one input (1, C, H, W), got shape {tuple(x.shape)}")
    x = x.detach().clone().requires_grad_(True)
    i, j = position
    network(x)[0, :, i, j].sum().backward()
    return x.grad[0].abs().sum(0)  # (H, W)
