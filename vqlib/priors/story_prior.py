"""A prior over one panel's codes given a caption, a style and a character: seed 004's story model, built right.

Papers: Ramesh et al., "Zero-Shot Text-to-Image Generation" (DALL·E), ICML 2021: the conditions come
first and the image tokens are generated after them by one transformer; Ho & Salimans,
"Classifier-Free Guidance", 2021; Brooks et al., "InstructPix2Pix", CVPR 2023 (a separate guidance
weight for each of several conditions, nested).

What is in it:

- ``StoryPriorConfig`` / ``StoryPrior``: a ``vqlib.priors.gpt.GPT`` whose ``context`` is
  ``[style token, caption vectors (P)]``, then the panel's L codes in raster order. The caption is
  read by ``vqlib.priors.text.TextEncoder``. The character is its model sheet: the codes of V
  views of its drawing (every place, size and pose a caption can name), embedded with the GPT's own
  code embedding ("no character", code K, is one learned vector). The caption chooses among the
  views (``read_sheet``: attention with one query from the caption's vectors and one learned key
  per view), and the chosen mix of views enters *aligned*: the vector of the sheet's code at place
  t is added to the input that predicts the panel's code at t, so copying a code is the easiest
  thing to learn. While training, each condition is dropped on its own with probability
  ``condition_dropout`` (style -> "no style", caption -> the empty caption, reference -> "no
  character"), so the model also learns every partial condition.
- ``sample``: one token at a time with the key/value cache. With ``guidance = (w_char, w_style,
  w_text)`` the logits are nested classifier-free guidance,
  l0 + w_char (l1 - l0) + w_style (l2 - l1) + w_text (l3 - l2), where l0 has no condition, l1 the
  character, l2 the character and the style, l3 all three: all weights 1 is plain conditional
  sampling. ``given``/``resample``: editing in code space; the codes marked False in ``resample``
  are kept as given, the others are drawn given every code before them (kept or redrawn).
- ``guided_levels`` and ``guide``: the condition rows and their combination, public so that a
  different sampler (seed 004's, in ``vqlib.recipes.ch10_stories``) uses the same conditions.

Left out: cross-attention to the sheet (the aligned views make it unnecessary here: a panel's
drawing lies where one view's does), and attention to the kept codes *after* a redrawn one (a
MaskGIT-style bidirectional prior would see them).

Dimension key: B batch, h w code-grid size, L = h·w codes, K codebook size, P caption words,
E embedding width, V views of a character sheet, R condition rows (B, or 4B with guidance).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn

from vqlib.core.device import model_device
from vqlib.core.inference import evaluating
from vqlib.core.profile import pick
from vqlib.priors.base import check_sampling, check_tokens, sample_from_logits
from vqlib.priors.gpt import GPT, GPTConfig, KVCache
from vqlib.priors.text import TextEncoder, TextEncoderConfig, check_words

LEVELS = 4  # condition rows of nested guidance: none; character; character + style; all three


@dataclass(frozen=True)
class StoryPriorConfig:
    vocab_size: int  # K: the panel tokenizer's codebook size
    grid: tuple[int, int]  # (h, w): the code grid of one panel
    views: int  # V: views of a character sheet
    styles: int  # number of styles (one more index, ``styles``, means "no style")
    words: tuple[str, ...]  # caption vocabulary (CaptionTokenizer.words)
    caption_length: int  # P
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128  # E
    text_layers: int = 1
    dropout: float = 0.0
    condition_dropout: float = 0.15  # training: each condition dropped on its own with this probability

    def __post_init__(self) -> None:
        object.__setattr__(self, "grid", tuple(int(n) for n in self.grid))
        object.__setattr__(self, "words", tuple(self.words))
        if (len(self.grid) != 2 or min(self.grid) < 1 or self.views < 1 or self.styles < 1
                or self.caption_length < 1):
            raise ValueError(f"need grid (h, w) >= 1, views >= 1, styles >= 1 and caption_length >= 1, got {self}")
        if not 0 <= self.condition_dropout < 1:
            raise ValueError(f"condition_dropout must be in [0, 1), got {self.condition_dropout}")

    @property
    def tokens(self) -> int:
        """L: codes per panel."""
        return self.grid[0] * self.grid[1]

    def gpt_config(self) -> GPTConfig:
        # context: 1 style token, P caption vectors; then the L codes of the panel
        return GPTConfig(vocab_size=self.vocab_size, block_size=1 + self.caption_length + self.tokens,
                         n_layer=self.n_layer, n_head=self.n_head, n_embd=self.n_embd, dropout=self.dropout)

    @classmethod
    def for_profile(cls, vocab_size: int, grid: tuple[int, int], views: int, styles: int, words: tuple[str, ...],
                    caption_length: int, profile: str | None = None, **overrides) -> "StoryPriorConfig":
        sizes = pick(smoke=dict(n_layer=1, n_head=2, n_embd=16), quick=dict(n_layer=2, n_head=4, n_embd=64),
                     full=dict(n_layer=8, n_head=8, n_embd=256, text_layers=2, dropout=0.1), profile=profile)
        return cls(vocab_size=vocab_size, grid=tuple(grid), views=views, styles=styles, words=tuple(words),
                   caption_length=caption_length, **{**sizes, **overrides})


class StoryPrior(nn.Module):
    """p(panel codes | caption, style, character): see the module docstring."""

    def __init__(self, config: StoryPriorConfig) -> None:
        super().__init__()
        self.config = config
        self.gpt = GPT(config.gpt_config())
        self.text = TextEncoder(TextEncoderConfig(len(config.words), config.caption_length, config.text_layers,
                                                  config.n_head, config.n_embd, config.dropout))
        self.style_emb = nn.Embedding(config.styles + 1, config.n_embd)  # row ``styles``: no style
        nn.init.normal_(self.style_emb.weight, std=0.02)
        self.no_character = nn.Parameter(torch.zeros(config.n_embd))  # the embedding of reference code K
        self.view_query = nn.Linear(config.n_embd, config.n_embd)  # the caption's question to the sheet
        self.view_keys = nn.Parameter(torch.randn(config.views, config.n_embd) * 0.02)  # (V, E) one key per view

    # ------------------------------------------------------------------ conditions
    def check(self, style: torch.Tensor, text: torch.Tensor, reference: torch.Tensor) -> int:
        """Raise unless style (B,), caption ids (B, P) and sheets (B, V, h, w) agree; return B."""
        c, n = self.config, len(style)
        if not torch.is_tensor(style) or style.dtype != torch.long or style.shape != (n,) or n == 0:
            raise TypeError(f"style must be a non-empty (B,) torch.long tensor of style indices, got "
                            f"{getattr(style, 'dtype', type(style).__name__)} {tuple(getattr(style, 'shape', ()))}")
        if style.min() < 0 or style.max() > c.styles:
            raise ValueError(f"style indices must lie in [0, {c.styles}] ({c.styles} = no style), got "
                             f"[{int(style.min())}, {int(style.max())}]")
        check_words(text, len(c.words), c.caption_length)
        sheet = f"(B, V={c.views}, {c.grid[0]}, {c.grid[1]})"
        check_tokens(reference, c.vocab_size + 1, sheet, ndim=4)
        if len(text) != n or len(reference) != n or tuple(reference.shape[1:]) != (c.views, *c.grid):
            raise ValueError(f"expected {n} captions (B, P) and sheets of codes {sheet} with B = {n}, "
                             f"got {tuple(text.shape)} and {tuple(reference.shape)}")
        return n

    def context(self, style: torch.Tensor, text: torch.Tensor,
                reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The GPT's inputs besides the codes: style (B,), caption ids (B, P), sheets (B, V, h, w) ->
        the context (B, 1 + P, E) and the aligned sheet (B, L, E)."""
        words = self.text(text)  # (B, P, E)
        context = torch.cat([self.style_emb(style)[:, None], words], dim=1)  # (B, 1 + P, E)
        return context, self.read_sheet(reference.flatten(2), words)

    def view_weights(self, words: torch.Tensor) -> torch.Tensor:
        """How much each view of the sheet the caption asks for: caption vectors (B, P, E) -> (B, V),
        a softmax over the views of the caption's query against each view's learned key."""
        query = self.view_query(words.mean(1))  # (B, E)
        return torch.softmax(query @ self.view_keys.T / math.sqrt(self.config.n_embd), dim=-1)

    def read_sheet(self, reference: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
        """Sheets of codes (B, V, L) and caption vectors (B, P, E) -> (B, L, E): at each place, the
        views' code embeddings mixed by ``view_weights``. A sheet's codes use the GPT's own code
        embedding, so the sheet's code at place t and the same code in the panel start as the same
        vector; code K, "no character", is one learned vector."""
        k = self.config.vocab_size
        codes = self.gpt.tok_emb(reference.clamp(max=k - 1))  # (B, V, L, E)
        codes = torch.where((reference < k)[..., None], codes, self.no_character)
        return torch.einsum("bv,bvle->ble", self.view_weights(words), codes)

    def dropped(self, style: torch.Tensor, text: torch.Tensor, reference: torch.Tensor,
                drop_style: torch.Tensor, drop_text: torch.Tensor, drop_reference: torch.Tensor):
        """The conditions with the rows marked True (B,) bool replaced by "no style", the empty caption
        and "no character"."""
        return (style.masked_fill(drop_style, self.config.styles), text.masked_fill(drop_text[:, None], 0),
                reference.masked_fill(drop_reference[:, None, None, None], self.config.vocab_size))

    def guided_levels(self, style: torch.Tensor, text: torch.Tensor, reference: torch.Tensor):
        """The LEVELS = 4 condition rows of nested guidance, stacked: (4B,), (4B, P), (4B, V, h, w):
        none; character; character + style; character + style + caption."""
        n = len(style)
        keep = torch.zeros(n, dtype=torch.bool, device=style.device)  # (B,) a "drop" mask that drops nothing
        drop = ~keep
        rows = [self.dropped(style, text, reference, *drops)  # (drop style?, drop caption?, drop character?)
                for drops in ((drop, drop, drop), (drop, drop, keep), (keep, drop, keep), (keep, keep, keep))]
        return tuple(torch.cat(parts) for parts in zip(*rows))

    @staticmethod
    def guide(logits: torch.Tensor, guidance: tuple[float, float, float]) -> torch.Tensor:
        """Nested guidance of logits (4B, ..., K) in ``guided_levels`` order -> (B, ..., K)."""
        l0, l1, l2, l3 = logits.chunk(LEVELS)
        w_char, w_style, w_text = guidance
        return l0 + w_char * (l1 - l0) + w_style * (l2 - l1) + w_text * (l3 - l2)

    # ------------------------------------------------------------------ likelihood
    def nll(self, indices: torch.Tensor, style: torch.Tensor, text: torch.Tensor,
            reference: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood in nats per code of panels' codes (B, h, w) given their conditions -> (B,)."""
        check_tokens(indices, self.config.vocab_size, f"(B, {self.config.grid[0]}, {self.config.grid[1]})", 3)
        self.check(style, text, reference)
        context, aligned = self.context(style, text, reference)
        return self.gpt.nll(indices.flatten(1), context=context, aligned=aligned)

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(self, style: torch.Tensor, text: torch.Tensor, reference: torch.Tensor,
               guidance: tuple[float, float, float] = (1.0, 1.0, 1.0), temperature: float = 1.0,
               top_k: int | None = None, given: torch.Tensor | None = None,
               resample: torch.Tensor | None = None) -> torch.Tensor:
        """Draw one panel's codes per row -> (B, h, w), one code at a time with the key/value cache.

        ``guidance``: the weights (character, style, caption) of nested classifier-free guidance.
        ``given`` (B, h, w) codes and ``resample`` (B, h, w) bool: keep the given codes where
        ``resample`` is False and draw the others (an edit in code space).
        """
        n = self.check(style, text, reference)
        check_sampling(n, temperature, top_k)
        if len(guidance) != 3 or min(guidance) < 0:
            raise ValueError(f"guidance must be three weights >= 0 (character, style, caption), got {guidance}")
        h, w = self.config.grid
        device = model_device(self)
        if (given is None) != (resample is None):
            raise ValueError("pass both given codes and the resample mask (an edit), or neither")
        if given is not None:
            check_tokens(given, self.config.vocab_size, f"({n}, {h}, {w})", ndim=3)
            if given.shape != (n, h, w) or resample.shape != (n, h, w) or resample.dtype != torch.bool:
                raise ValueError(f"given must be ({n}, {h}, {w}) codes and resample a bool mask of the same shape, "
                                 f"got {tuple(given.shape)} and {resample.dtype} {tuple(resample.shape)}")
            given, resample = given.flatten(1).to(device), resample.flatten(1).to(device)  # (B, L)
        guided = tuple(guidance) != (1.0, 1.0, 1.0)
        conditions = self.guided_levels(style, text, reference) if guided else (style, text, reference)
        rows = len(conditions[0])
        tokens = torch.zeros(rows, 0, dtype=torch.long, device=device)  # (R, 0)
        with evaluating(self):
            context, aligned = self.context(*conditions)  # (R, 1 + P, E), (R, L, E)
            caches = [KVCache() for _ in range(self.config.n_layer)]
            new = tokens
            for t in range(self.config.tokens):
                logits = self.gpt.next_logits(new, context=context, caches=caches, aligned=aligned)  # (R, K)
                if guided:
                    logits = self.guide(logits, guidance)  # (B, K)
                code = sample_from_logits(logits, temperature, top_k)  # (B,)
                if given is not None:
                    code = torch.where(resample[:, t], code, given[:, t])
                new = code.repeat(rows // n)[:, None]  # (R, 1)
                tokens = torch.cat([tokens, new], dim=1)  # (R, t + 1)
        return tokens[:n].view(n, h, w)


def story_prior_loss(model: StoryPrior, batch: tuple) -> Mapping[str, torch.Tensor]:
    """Loss for ``fit`` on a batch (codes (B, h, w), style (B,), caption ids (B, P), sheets of codes
    (B, V, h, w)): mean NLL per code, each condition dropped on its own while training."""
    indices, style, text, reference = batch
    p = model.config.condition_dropout
    if model.training and p > 0:
        drops = (torch.rand(3, len(style), device=style.device) < p).unbind(0)  # 3 × (B,)
        style, text, reference = model.dropped(style, text, reference, *drops)
    loss = model.nll(indices, style, text, reference).mean()
    return {"loss": loss, "bits_per_dim": loss.detach() / math.log(2)}


def logits_of_zeros(model: StoryPrior, style: torch.Tensor, text: torch.Tensor,
                    reference: torch.Tensor) -> torch.Tensor:
    """The logits of every position from ONE forward pass whose inputs are all code 0, as seed 004's
    ``LatentTransformer`` fed zeros: (B, L, K). Kept to measure that mistake, not to sample with."""
    context, aligned = model.context(style, text, reference)  # (B, 1 + P, E), (B, L, E)
    zeros = torch.zeros(len(style), model.config.tokens - 1, dtype=torch.long, device=model_device(model))
    first = model.gpt.next_logits(zeros[:, :0], context=context, aligned=aligned)[:, None]  # (B, 1, K)
    return torch.cat([first, model.gpt(zeros, context=context, aligned=aligned)], dim=1)  # (B, L, K)

