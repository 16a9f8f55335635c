"""Captions as tokens, and a small text encoder: the text side of caption-conditioned video.

Papers: Vaswani et al., "Attention Is All You Need", NeurIPS 2017 (the transformer encoder: every
word attends to every other word); Ramesh et al., "Zero-Shot Text-to-Image Generation", ICML 2021
(DALL·E: caption tokens come first, image tokens are generated after them).

What is in it:

- ``CaptionTokenizer``: a word-level vocabulary fitted on the training captions. ``encode`` turns
  captions into a (B, P) tensor of word ids, padded to a fixed length P with ``PAD``; a word that
  is not in the vocabulary, or a caption longer than P words, is a ValueError that names it. The
  empty caption ``""`` encodes to P pads: it is the "no caption" that the video prior of
  ``vqlib.priors.video_prior`` learns to continue without a text.
- ``TextEncoder``: word and position embeddings and a few pre-norm transformer encoder layers
  (full, non-causal self-attention) -> one C-dimensional vector per word. It is trained end to
  end with the video prior that reads its output; nothing is downloaded.

Left out: sub-word tokenizers (BPE), pretrained language models, and padding masks (the pad is a
learned word like the others: the captions of one data set have a fixed number of words, and the
empty caption would otherwise be a sequence with nothing to attend to).

Dimension key: B batch, P words per caption (padded), V vocabulary size, C embedding width.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
from torch import nn

PAD = "<pad>"  # word id 0: fills captions up to P words; the empty caption is P pads


def split_words(caption: str) -> list[str]:
    """The words of a caption: lower case, split on white space."""
    if not isinstance(caption, str):
        raise TypeError(f"a caption must be a str, got {type(caption).__name__}")
    return caption.lower().split()


@dataclass(frozen=True)
class CaptionTokenizer:
    """Word-level tokenizer with a fixed vocabulary: captions <-> (B, P) long word ids."""

    words: tuple[str, ...]  # the vocabulary, PAD first (id 0)
    length: int  # P: words per encoded caption

    def __post_init__(self) -> None:
        if not self.words or self.words[0] != PAD or len(set(self.words)) != len(self.words):
            raise ValueError(f"words must start with {PAD!r} and hold no duplicates, got {self.words[:5]}...")
        if self.length < 1:
            raise ValueError(f"length must be >= 1 word, got {self.length}")

    @classmethod
    def fit(cls, captions: Iterable[str], length: int | None = None) -> "CaptionTokenizer":
        """The vocabulary of ``captions`` (sorted) and, unless given, their longest length in words."""
        split = [split_words(c) for c in captions]
        if not split:
            raise ValueError("CaptionTokenizer.fit needs at least one caption")
        words = sorted({w for s in split for w in s})
        return cls(words=(PAD, *words), length=length or max(1, max(len(s) for s in split)))

    @property
    def vocab_size(self) -> int:
        """V: the number of words, PAD included."""
        return len(self.words)

    def encode(self, captions: str | Sequence[str]) -> torch.Tensor:
        """Captions (one str, or B of them) -> word ids (B, P) long, padded with PAD (id 0)."""
        captions = [captions] if isinstance(captions, str) else list(captions)
        if not captions:
            raise ValueError("encode needs at least one caption, got an empty list")
        ids = {w: i for i, w in enumerate(self.words)}
        rows = []
        for caption in captions:
            words = split_words(caption)
            unknown = [w for w in words if w not in ids or w == PAD]
            if unknown:
                raise ValueError(f"unknown word(s) {unknown} in caption {caption!r}; the vocabulary is "
                                 f"{list(self.words[1:])}")
            if len(words) > self.length:
                raise ValueError(f"caption {caption!r} has {len(words)} words, more than the {self.length} "
                                 "this tokenizer (and the model trained with it) can read")
            rows.append([ids[w] for w in words] + [0] * (self.length - len(words)))
        return torch.tensor(rows, dtype=torch.long)  # (B, P)

    def decode(self, tokens: torch.Tensor) -> list[str]:
        """Word ids (B, P) long -> B captions (pads dropped)."""
        check_words(tokens, self.vocab_size, self.length)
        return [" ".join(self.words[i] for i in row if i != 0) for row in tokens.tolist()]


def check_words(tokens: torch.Tensor, vocab_size: int, length: int) -> None:
    """Raise unless ``tokens`` is a (B, length) long tensor of word ids in [0, vocab_size), B >= 1."""
    if not torch.is_tensor(tokens) or tokens.dtype != torch.long:
        got = tokens.dtype if torch.is_tensor(tokens) else type(tokens).__name__
        raise TypeError(f"caption tokens must be a torch.long tensor (B, {length}) from CaptionTokenizer.encode, "
                        f"got {got}")
    if tokens.dim() != 2 or tokens.shape[0] == 0 or tokens.shape[1] != length:
        raise ValueError(f"caption tokens must have shape (B, {length}) with B >= 1, got {tuple(tokens.shape)}")
    if tokens.min() < 0 or tokens.max() >= vocab_size:
        raise ValueError(f"caption tokens must lie in [0, {vocab_size}), got values in "
                         f"[{int(tokens.min())}, {int(tokens.max())}]")


@dataclass(frozen=True)
class TextEncoderConfig:
    vocab_size: int  # V: words, PAD included
    length: int  # P: words per caption
    n_layer: int = 2  # transformer encoder layers
    n_head: int = 4  # attention heads; must divide n_embd
    n_embd: int = 64  # C: width of the output vectors (the video GPT's width)
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.vocab_size < 2 or self.length < 1 or self.n_layer < 1 or self.n_embd % self.n_head:
            raise ValueError(f"need vocab_size >= 2, length >= 1, n_layer >= 1 and n_head dividing n_embd, "
                             f"got {self}")


class TextEncoder(nn.Module):
    """Caption word ids (B, P) long -> one vector per word (B, P, C), every word seeing the whole caption."""

    def __init__(self, config: TextEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.pos_emb = nn.Embedding(config.length, config.n_embd)
        self.layers = nn.ModuleList(  # pre-norm (norm_first), as the GPT's blocks
            nn.TransformerEncoderLayer(config.n_embd, config.n_head, 4 * config.n_embd, config.dropout,
                                       activation="gelu", batch_first=True, norm_first=True)
            for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd)
        for module in self.modules():  # GPT-2's initialisation, as in vqlib.priors.gpt
            if isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        check_words(tokens, self.config.vocab_size, self.config.length)
        positions = torch.arange(tokens.shape[1], device=tokens.device)  # (P,)
        x = self.tok_emb(tokens) + self.pos_emb(positions)  # (B, P, C)
        for layer in self.layers:
            x = layer(x)  # (B, P, C)
        return self.ln_f(x)  # (B, P, C)
