"""A GPT prior over the spatio-temporal tokens of a video, optionally conditioned on a caption.

Papers: Yan et al., "VideoGPT: Video Generation using VQ-VAE and Transformers", 2021: a video
tokenizer turns a clip into a (t, h, w) grid of codes, and a GPT models the codes in raster order
(latent frame by latent frame, each row by row). Ramesh et al., "Zero-Shot Text-to-Image
Generation" (DALL·E), ICML 2021: the caption comes first and the visual tokens are generated after
it, by one transformer. Here a separate bidirectional ``vqlib.priors.text.TextEncoder`` reads the caption,
and its P output vectors sit between the GPT's start token and the video tokens.

What is in it:

- ``VideoPriorConfig`` / ``VideoPrior``: a ``vqlib.priors.gpt.GPT`` that reads the caption's
  vectors as its ``context``, so the transformer sees ``[start, caption vectors (P), video tokens
  (L)]`` and only the video tokens are predicted. ``nll`` for training, ``forward`` with the GPT
  contract, and ``sample``, which draws one token at a time, each conditioned on the caption and
  on every token drawn before it (seed 004's sampler drew every position from one forward pass).
  ``video_prior_loss`` is the training loss (the recipe is ``vqlib.recipes.ch09_video_generation``);
  ``vqlib.priors.base.bits_per_dim`` scores it, with the caption ids as ``cond``.
- One model, three uses: unconditional samples (the empty caption), continuation (the tokens of
  the first frames are given), caption-conditioned samples. While training, ``caption_dropout``
  replaces a fraction of the captions by the empty caption, as classifier-free guidance does
  (Ho & Salimans 2021), so the model also learns p(video) without a text.
- ``prompt_indices``: the tokens of the first k frames, computed from those frames only;
  ``continue_video`` continues clips from their first frames; ``copy_last_frame`` is the baseline;
  ``check_prompt`` is their input check.
- ``sample(..., guidance=w)``: classifier-free guidance, which the caption dropout makes possible.

Left out: cross-attention (the caption is a prefix), and the sparse axial attention with which
VideoGPT reaches larger grids.

Dimension key: B batch, T frames, S frame side, K codebook size, (t, h, w) the grid of codes of a
clip, L = t·h·w video tokens, P caption words, E embedding width (``n_embd``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from torch import nn

from vqlib.core.device import to_device
from vqlib.core.inference import evaluating, in_batches
from vqlib.core.profile import pick
from vqlib.priors.base import check_sampling, check_tokens, guided_logits, sample_from_logits, split_batch
from vqlib.priors.gpt import GPT, GPTConfig, KVCache
from vqlib.priors.text import CaptionTokenizer, TextEncoder, TextEncoderConfig, check_words


@dataclass(frozen=True)
class VideoPriorConfig:
    vocab_size: int  # K: codebook size of the video tokenizer
    latent_shape: tuple[int, int, int]  # (t, h, w): the grid of codes of one clip
    words: tuple[str, ...] = ()  # caption vocabulary (CaptionTokenizer.words); () = no captions
    caption_length: int = 0  # P: words per caption (0 without captions)
    n_layer: int = 4  # GPT blocks
    n_head: int = 4  # attention heads (GPT and text encoder)
    n_embd: int = 128  # E: width of the GPT and of the text encoder's output
    text_layers: int = 2  # text encoder layers
    dropout: float = 0.0
    caption_dropout: float = 0.0  # training: fraction of captions replaced by the empty caption

    def __post_init__(self) -> None:
        object.__setattr__(self, "latent_shape", tuple(int(n) for n in self.latent_shape))
        object.__setattr__(self, "words", tuple(self.words))
        if len(self.latent_shape) != 3 or min(self.latent_shape) < 1:
            raise ValueError(f"latent_shape must be (t, h, w) with positive sizes, got {self.latent_shape}")
        if bool(self.words) != (self.caption_length > 0):
            raise ValueError("give both words and caption_length (a captioned prior) or neither, got "
                             f"{len(self.words)} words and caption_length={self.caption_length}")
        if not 0 <= self.caption_dropout < 1:
            raise ValueError(f"caption_dropout must be in [0, 1), got {self.caption_dropout}")

    @property
    def tokens(self) -> int:
        """L: video tokens per clip."""
        return math.prod(self.latent_shape)

    @property
    def conditional(self) -> bool:
        return self.caption_length > 0

    def gpt_config(self) -> GPTConfig:
        # block_size counts every position after the start token: P caption vectors and L video tokens.
        return GPTConfig(vocab_size=self.vocab_size, block_size=self.caption_length + self.tokens,
                         n_layer=self.n_layer, n_head=self.n_head, n_embd=self.n_embd, dropout=self.dropout)

    @classmethod
    def for_profile(cls, vocab_size: int, latent_shape: tuple[int, int, int],
                    tokenizer: CaptionTokenizer | None = None, profile: str | None = None,
                    **overrides) -> "VideoPriorConfig":
        """The book's size for ``profile``; with a caption ``tokenizer`` the prior reads captions.
        ``overrides`` set any field."""
        sizes = pick(smoke=dict(n_layer=1, n_head=2, n_embd=16, text_layers=1),
                     quick=dict(n_layer=3, n_head=4, n_embd=64, text_layers=1),
                     full=dict(n_layer=8, n_head=8, n_embd=256, text_layers=2, dropout=0.1), profile=profile)
        text = dict(words=tokenizer.words, caption_length=tokenizer.length, caption_dropout=0.1) if tokenizer else {}
        return cls(vocab_size=vocab_size, latent_shape=tuple(latent_shape), **{**sizes, **text, **overrides})


def to_sequence(indices: torch.Tensor) -> torch.Tensor:
    """Raster order: a grid of codes (B, t, h, w) -> tokens (B, t·h·w), latent frame after latent frame."""
    return indices.flatten(1)


def to_grid(tokens: torch.Tensor, latent_shape: tuple[int, int, int]) -> torch.Tensor:
    """tokens (B, L) -> the grid of codes (B, t, h, w)."""
    return tokens.view(len(tokens), *latent_shape)


class VideoPrior(nn.Module):
    """p(video tokens | caption): a GPT whose context is the caption's vectors. See the module docstring."""

    def __init__(self, config: VideoPriorConfig) -> None:
        super().__init__()
        self.config = config
        self.gpt = GPT(config.gpt_config())
        self.text: TextEncoder | None = None
        self.tokenizer: CaptionTokenizer | None = None
        if config.conditional:
            self.tokenizer = CaptionTokenizer(config.words, config.caption_length)
            self.text = TextEncoder(TextEncoderConfig(len(config.words), config.caption_length, config.text_layers,
                                                      config.n_head, config.n_embd, config.dropout))

    @property
    def device(self) -> torch.device:
        """Where the model's parameters are: inputs built here (word ids, tokens) go there."""
        return next(self.parameters()).device

    # ------------------------------------------------------------------ inputs
    def caption_tokens(self, captions: Sequence[str] | None, n: int) -> torch.Tensor | None:
        """n captions -> word ids (n, P), None -> n empty captions; None for a prior without captions."""
        if self.tokenizer is None:
            if captions is not None:
                raise ValueError("this prior was trained without captions (words=()), but got captions")
            return None
        captions = [""] * n if captions is None else [captions] if isinstance(captions, str) else list(captions)
        if len(captions) != n:
            raise ValueError(f"expected one caption per sample, {n} in all, got {len(captions)}")
        return to_device(self.tokenizer.encode(captions), self.device)  # (n, P)

    def _text(self, text: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        """Caption word ids (B, P), or None (empty captions for a captioned prior): checked, on device."""
        if self.text is None:
            if text is not None:
                raise ValueError("this prior was trained without captions (words=()), but got caption tokens")
            return None
        if text is None:
            return torch.zeros(batch, self.config.caption_length, dtype=torch.long,
                               device=self.device)  # (B, P) the empty caption
        check_words(text, len(self.config.words), self.config.caption_length)
        if len(text) != batch:
            raise ValueError(f"expected caption tokens for {batch} clips, got {len(text)}")
        return text

    def _check(self, tokens: torch.Tensor) -> None:
        check_tokens(tokens, self.config.vocab_size, "(B, L)", ndim=2)
        if tokens.shape[1] > self.config.tokens:
            raise ValueError(f"{tokens.shape[1]} video tokens is more than the model's context of "
                             f"L = {self.config.tokens} tokens (a grid of {self.config.latent_shape})")

    # ------------------------------------------------------------------ the transformer
    def context(self, text: torch.Tensor | None) -> torch.Tensor | None:
        """The GPT's ``context``: the caption's vectors (B, P, E) from word ids (B, P); None without captions."""
        return None if text is None else self.text(text)

    def forward(self, tokens: torch.Tensor, text: torch.Tensor | None = None) -> torch.Tensor:
        """Video tokens (B, L') in raster order, L' <= L, and caption ids (B, P) -> logits (B, L', K);
        logits[:, i] predicts token i + 1 (the GPT contract)."""
        self._check(tokens)
        return self.gpt(tokens, context=self.context(self._text(text, len(tokens))))

    def nll(self, indices: torch.Tensor, text: torch.Tensor | None = None) -> torch.Tensor:
        """Negative log-likelihood in nats per token of whole clips: grids (B, t, h, w), caption ids (B, P) -> (B,)."""
        check_tokens(indices, self.config.vocab_size, f"(B, {', '.join(map(str, self.config.latent_shape))})", 4)
        if tuple(indices.shape[1:]) != self.config.latent_shape:
            raise ValueError(f"expected grids of codes (B, {self.config.latent_shape}), got {tuple(indices.shape)}")
        tokens = to_sequence(indices)  # (B, L)
        return self.gpt.nll(tokens, context=self.context(self._text(text, len(tokens))))

    @torch.no_grad()
    def sample(self, n: int, captions: Sequence[str] | None = None, prompt: torch.Tensor | None = None,
               temperature: float = 1.0, top_k: int | None = None, use_cache: bool = True,
               guidance: float = 1.0) -> torch.Tensor:
        """Draw n grids of codes (n, t, h, w), one token at a time in raster order.

        ``captions``: n strings (None: the empty caption). ``prompt`` (n, t', h, w): the codes of the
        first t' < t latent frames, kept as they are and continued. ``top_k=1`` is greedy.
        ``guidance`` w != 1 samples from the classifier-free guided logits
        l_empty + w·(l_caption − l_empty) (Ho & Salimans 2021): the caption and the empty caption
        run side by side, and both continue with the token drawn from the guided logits.
        """
        check_sampling(n, temperature, top_k)
        guided = guidance != 1.0
        if guided and (self.text is None or captions is None):
            raise ValueError("guidance needs a prior trained with captions and the captions to follow; "
                             f"got guidance={guidance} with {'no captions' if captions is None else 'an unconditional prior'}")
        if not guidance >= 0:
            raise ValueError(f"guidance must be >= 0 (1 = plain conditional sampling), got {guidance}")
        t, h, w = self.config.latent_shape
        device = self.device
        text = self.caption_tokens(captions, n)  # (n, P) or None
        tokens = torch.zeros(n, 0, dtype=torch.long, device=device)  # (n, 0)
        if prompt is not None:
            check_tokens(prompt, self.config.vocab_size, f"({n}, t', {h}, {w})", ndim=4)
            if len(prompt) != n or tuple(prompt.shape[2:]) != (h, w):
                raise ValueError(f"prompt must be codes of the first latent frames, shape ({n}, t', {h}, {w}), "
                                 f"got {tuple(prompt.shape)}")
            if prompt.shape[1] >= t:
                raise ValueError(f"a prompt of {prompt.shape[1]} latent frames leaves nothing to generate: the "
                                 f"model's context is t = {t} latent frames; give at most {t - 1}")
            tokens = to_device(to_sequence(prompt), device)  # (n, t'·h·w)
        if guided:  # rows n..2n-1: the same clips with the empty caption
            text, tokens = torch.cat([text, torch.zeros_like(text)]), tokens.repeat(2, 1)  # (2n, P), (2n, ·)
        with evaluating(self):
            context = self.context(text)  # (n or 2n, P, E) or None
            caches = [KVCache() for _ in range(self.config.n_layer)] if use_cache else None
            new = tokens  # what the cache has not seen yet
            while tokens.shape[1] < self.config.tokens:
                logits = self.gpt.next_logits(new if use_cache else tokens, context=context,
                                              caches=caches)  # (n or 2n, K)
                if guided:
                    with_caption, empty = logits.chunk(2)  # (n, K) each
                    logits = guided_logits(with_caption, empty, guidance)
                new = sample_from_logits(logits, temperature, top_k)[:, None]  # (n, 1)
                new = new.repeat(2, 1) if guided else new
                tokens = torch.cat([tokens, new], dim=1)  # (n or 2n, i + 1)
        return to_grid(tokens[:n], self.config.latent_shape)  # (n, t, h, w)


# ----------------------------------------------------------------------------- the training loss

def video_prior_loss(model: VideoPrior, batch: tuple) -> Mapping[str, torch.Tensor]:
    """Loss for ``vqlib.training.loop.fit`` on a batch (grids,) or (grids, caption ids): mean NLL per token.

    While training, ``config.caption_dropout`` of the captions are replaced by the empty caption.
    """
    indices, text = split_batch(batch)
    if text is not None and model.training and model.config.caption_dropout > 0:
        drop = torch.rand(len(text), device=text.device) < model.config.caption_dropout  # (B,)
        text = text.masked_fill(drop[:, None], 0)  # the empty caption: P pads
    loss = model.nll(indices, text).mean()
    return {"loss": loss, "bits_per_dim": loss.detach() / math.log(2)}


# ----------------------------------------------------------------------------- continuation

def temporal_stride(tokenizer: nn.Module, frames: int) -> int:
    """Frames per latent frame of a video tokenizer (``latent_shape`` (t, h, w)) for clips of ``frames``."""
    t = tokenizer.latent_shape[0]
    if frames % t:
        raise ValueError(f"clips of {frames} frames do not map onto {t} latent frames evenly")
    return frames // t


def check_prompt(prompt: torch.Tensor) -> None:
    """Raise unless ``prompt``, the first frames of clips, is a non-empty float (B, T, C, S, S) tensor."""
    if not torch.is_tensor(prompt) or not prompt.is_floating_point():
        got = prompt.dtype if torch.is_tensor(prompt) else type(prompt).__name__
        raise TypeError(f"prompt must be float (B, T, C, S, S) in [0, 1], got {got}")
    if prompt.dim() != 5 or prompt.shape[0] == 0 or prompt.shape[1] == 0:
        raise ValueError(f"prompt must have shape (B, T, C, S, S) with B, T >= 1, got {tuple(prompt.shape)}")


def pad_with_last_frame(prompt: torch.Tensor, frames: int) -> torch.Tensor:
    """Repeat the last frame of prompt (B, k, C, S, S) up to (B, frames, C, S, S)."""
    check_prompt(prompt)
    k = prompt.shape[1]
    if k > frames:
        raise ValueError(f"a prompt of {k} frames is longer than the {frames} frames asked for")
    return torch.cat([prompt, prompt[:, -1:].expand(-1, frames - k, *prompt.shape[2:])], dim=1)


copy_last_frame = pad_with_last_frame  # the baseline: the future looks like the last frame seen


def prompt_indices(tokenizer: nn.Module, prompt: torch.Tensor, frames: int) -> torch.Tensor:
    """The codes of the first k frames, computed from those k frames only: (B, k, C, S, S) -> (B, k/s, h, w).

    A 3D-convolutional encoder is not causal in time: the codes of the whole clip at latent frame j
    may depend on frames after k. So the k frames are padded to ``frames`` by repeating the last
    one, encoded, and only the first k/s latent frames are kept (s = ``temporal_stride``).
    """
    s = temporal_stride(tokenizer, frames)
    k = prompt.shape[1] if prompt.dim() == 5 else 0
    check_prompt(prompt)
    if k % s:
        raise ValueError(f"the tokenizer codes {s} frames per latent frame, so a prompt must hold a multiple of "
                         f"{s} frames; got {k} (use the first {k - k % s or s} frames)")
    if k >= frames:
        raise ValueError(f"a prompt of {k} frames leaves nothing to predict in clips of {frames} frames "
                         f"(the model's context); give at most {frames - s}")
    codes = in_batches(tokenizer.encode, tokenizer, pad_with_last_frame(prompt, frames))  # (B, t, h, w)
    return codes[:, : k // s]  # (B, k/s, h, w)


@torch.no_grad()
def continue_video(prior: VideoPrior, tokenizer: nn.Module, prompt: torch.Tensor, frames: int,
                   captions: Sequence[str] | None = None, temperature: float = 1.0,
                   top_k: int | None = None, guidance: float = 1.0) -> torch.Tensor:
    """Continue clips from their first k frames: prompt (B, k, C, S, S) -> decoded clips (B, frames, C, S, S).

    The prompt's codes are kept, the rest are sampled by the prior, and the whole grid is decoded
    (so the first k frames are the tokenizer's reconstruction of the prompt).
    """
    codes = prompt_indices(tokenizer, prompt, frames)  # (B, k/s, h, w)
    grid = prior.sample(len(prompt), captions=captions, prompt=to_device(codes, prior.device),
                        temperature=temperature, top_k=top_k, guidance=guidance)  # (B, t, h, w)
    return in_batches(lambda g: tokenizer.decode(g).clamp(0, 1), tokenizer, grid.cpu())  # (B, T, C, S, S)
