"""GPT: a decoder-only transformer prior over a sequence of codes, with a key/value cache.

Papers: Vaswani et al., "Attention Is All You Need", NeurIPS 2017 (the transformer); Radford et
al., "Language Models are Unsupervised Multitask Learners", 2019 (GPT-2: pre-norm blocks, the
initialisation used here). The code follows Karpathy's nanoGPT.

What is in it:

- Causal self-attention with ``F.scaled_dot_product_attention``; pre-norm blocks; learned
  position embeddings.
- A start token, so the first code is predicted too. The start token is an embedding that is not
  a code: the model sees ``[start, tokens[0], tokens[1], ...]``. With ``num_classes > 0`` the start
  token *is* the class embedding, so every position is conditioned on the label.
- The contract of ``forward`` is nanoGPT's: tokens (B, L) -> logits (B, L, K) where
  ``logits[:, t]`` is the distribution of token t+1 given tokens 0..t (and the start token). The
  distribution of token 0 comes from the start token alone; ``nll`` adds it, so training and
  bits/dim cover all L positions.
- A key/value cache (``KVCache``): when sampling, each step feeds only the newest token and
  attends to the stored keys and values of the earlier ones, so a step costs one token's work.
- ``sample(..., prefix=tokens)`` continues given tokens (the video chapter continues clips).
- An optional ``context`` (B, P, C) of vectors placed between the start token and the tokens
  (``forward``, ``nll``, ``next_logits`` and ``sample`` take it): every token attends to them and
  none of them is predicted. The video prior (``vqlib.priors.video_prior``) passes a caption's
  encoding this way, as DALL·E puts the text before the image tokens; ``block_size`` counts the
  P context positions too.
- An optional ``aligned`` (B, L, C): one vector per token, added to the input of the row that
  predicts that token (a condition laid out like the tokens themselves, such as another image's
  codes at the same places; the story prior of Chapter 10 passes its character sheet this way).

Left out: dropout on the residual stream beyond one ``dropout`` knob, weight tying, flash-attention
specifics (SDPA picks a kernel), and cross-attention (the context is a prefix).

Dimension key: B batch, L tokens, P context vectors, T positions fed to the transformer (start
token and context included), C embedding width (n_embd), N heads, K vocabulary size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vqlib.core.device import to_device
from vqlib.core.profile import pick
from vqlib.priors.base import check_cond, check_sampling, check_tokens, sample_from_logits


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int  # K: codebook size
    block_size: int  # L (+ P): longest token sequence (e.g. 49 for a 7 x 7 code map), with any context vectors
    n_layer: int = 4  # transformer blocks
    n_head: int = 4  # attention heads; must divide n_embd
    n_embd: int = 128  # C: embedding width
    dropout: float = 0.0  # on attention weights and residual branches while training
    num_classes: int = 0  # > 0: class-conditional; the class embedding is the start token

    def __post_init__(self) -> None:
        if self.vocab_size < 2 or self.block_size < 1 or self.n_layer < 1:
            raise ValueError(f"need vocab_size >= 2, block_size >= 1, n_layer >= 1, got {self}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.num_classes < 0 or not 0 <= self.dropout < 1:
            raise ValueError(f"need num_classes >= 0 and 0 <= dropout < 1, got {self}")

    @classmethod
    def for_profile(cls, vocab_size: int, block_size: int, profile: str | None = None, **overrides) -> "GPTConfig":
        """The book's size for ``profile`` (default: the current one); ``overrides`` set any field."""
        sizes = pick(smoke=dict(n_layer=1, n_head=2, n_embd=16), quick=dict(n_layer=3, n_head=4, n_embd=64),
                     full=dict(n_layer=8, n_head=8, n_embd=256, dropout=0.1), profile=profile)
        return cls(vocab_size=vocab_size, block_size=block_size, **{**sizes, **overrides})


# ----------------------------------------------------------------------------- blocks

class KVCache:
    """Keys and values of one attention layer for the positions seen so far: (B, N, T_past, C/N)."""

    def __init__(self) -> None:
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.k is None else self.k.shape[2]

    def extend(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append the new positions' keys and values; return all of them, (B, N, T_past + T, C/N)."""
        self.k = k if self.k is None else torch.cat([self.k, k], dim=2)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=2)
        return self.k, self.v


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head, self.dropout = config.n_head, config.dropout
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.proj = nn.Linear(config.n_embd, config.n_embd)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C). With a cache, x holds the newest T positions only."""
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, N, T, C/N)
                   for t in self.qkv(x).split(C, dim=2))
        past = 0 if cache is None else len(cache)
        if cache is not None:
            k, v = cache.extend(k, v)  # (B, N, past + T, C/N)
        dropout = self.dropout if self.training else 0.0
        if past == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
        else:  # new position t may attend to every cached position and to new positions <= t
            allowed = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(diagonal=past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout)
        return self.drop(self.proj(y.transpose(1, 2).reshape(B, T, C)))  # (B, T, C)


class Block(nn.Module):
    """Pre-norm transformer block: x + attention(norm(x)), then x + MLP(norm(x)).

    ``attention`` is the attention module to use (default: ``CausalSelfAttention(config)``); a
    bidirectional model (``vqlib.priors.maskgit``) passes one without the causal mask.
    """

    def __init__(self, config: GPTConfig, attention: nn.Module | None = None) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(config.n_embd), nn.LayerNorm(config.n_embd)
        self.attn = attention if attention is not None else CausalSelfAttention(config)
        self.mlp = nn.Sequential(nn.Linear(config.n_embd, 4 * config.n_embd), nn.GELU(),
                                 nn.Linear(4 * config.n_embd, config.n_embd), nn.Dropout(config.dropout))

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), cache)
        return x + self.mlp(self.ln2(x))


# ----------------------------------------------------------------------------- the model

def init_weights(module: nn.Module) -> None:
    """GPT-2's initialisation: N(0, 0.02) for linear and embedding weights, zero biases."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


class GPT(nn.Module):
    """GPT prior over token sequences: tokens (B, L) long -> logits (B, L, K) (see the module docstring)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.start = nn.Embedding(max(1, config.num_classes), config.n_embd)  # one start token, or one per class
        self.pos_emb = nn.Embedding(config.block_size + 1, config.n_embd)  # +1: the start token's position
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.apply(init_weights)
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by 1/sqrt(2 n_layer)
            if name.endswith(("attn.proj.weight", "mlp.2.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * config.n_layer))

    def embed_context(self, cond: torch.Tensor | None, batch: int, context: torch.Tensor | None = None) -> torch.Tensor:
        """What comes before the tokens: the start token (or the class token), then the ``context``
        vectors (B, P, C) if any. -> (B, 1 + P, C)"""
        labels = cond if cond is not None else torch.zeros(batch, dtype=torch.long, device=self.start.weight.device)
        start = self.start(labels)[:, None]  # (B, 1, C)
        return start if context is None else torch.cat([start, context], dim=1)  # (B, 1 + P, C)

    def _logits(self, tokens: torch.Tensor, cond: torch.Tensor | None, caches: list[KVCache] | None = None,
                context: torch.Tensor | None = None, aligned: torch.Tensor | None = None) -> torch.Tensor:
        """Logits at every new position. tokens (B, L) -> (B, 1 + P + L, K) when nothing is cached yet
        (the start token and the P context vectors come first: row P predicts token 0), else
        (B, L, K) for the L new tokens (the context is in the cache then; ``context`` only gives P).
        ``aligned`` (B, L_all, C): one vector per token of the sequence, added to the row that predicts it."""
        past = len(caches[0]) if caches else 0
        x = self.tok_emb(tokens)  # (B, L, C)
        if past == 0:
            x = torch.cat([self.embed_context(cond, len(tokens), context), x], dim=1)  # (B, T = 1 + P + L, C)
        positions = torch.arange(past, past + x.shape[1], device=x.device)  # (T,)
        x = x + self.pos_emb(positions)
        if aligned is not None:
            predicts = positions - (0 if context is None else context.shape[1])  # (T,) the token each row predicts
            rows = (predicts >= 0) & (predicts < aligned.shape[1])  # (T,) rows that predict a token
            add = x.new_zeros(x.shape)
            add[:, rows] = aligned[:, predicts[rows]]
            x = x + add
        x = self.drop(x)
        for block, cache in zip(self.blocks, caches or [None] * len(self.blocks)):
            x = block(x, cache)
        return self.head(self.ln_f(x))  # (B, T, K)

    def _check_context(self, context: torch.Tensor | None, batch: int) -> int:
        """Raise unless ``context`` is None or float (batch, P, C); return P (0 without a context)."""
        if context is None:
            return 0
        c = self.config.n_embd
        if not torch.is_tensor(context) or not context.is_floating_point():
            got = context.dtype if torch.is_tensor(context) else type(context).__name__
            raise TypeError(f"context must be float vectors (B, P, {c}), got {got}")
        if context.dim() != 3 or len(context) != batch or context.shape[2] != c:
            raise ValueError(f"context must have shape ({batch}, P, {c}), one row of P vectors of width "
                             f"n_embd per sequence, got {tuple(context.shape)}")
        return context.shape[1]

    def _check(self, tokens: torch.Tensor, cond: torch.Tensor | None, context: torch.Tensor | None = None) -> int:
        """Check the inputs of ``forward`` and ``nll``; return P, the number of context vectors."""
        check_tokens(tokens, self.config.vocab_size, "(B, L)", ndim=2)
        p = self._check_context(context, len(tokens))
        if p + tokens.shape[1] > self.config.block_size:
            raise ValueError(f"sequence of {tokens.shape[1]} tokens" + (f" after {p} context vectors" if p else "")
                             + f" is longer than block_size={self.config.block_size}; the model has no positions "
                             "beyond it")
        check_cond(cond, self.config.num_classes, len(tokens))
        return p

    def check_aligned(self, aligned: torch.Tensor | None, batch: int, length: int) -> None:
        """Raise unless ``aligned`` is None or float (batch, length, C): one vector per token."""
        c = self.config.n_embd
        if aligned is not None and (not torch.is_tensor(aligned) or not aligned.is_floating_point()
                                    or aligned.shape != (batch, length, c)):
            got = tuple(aligned.shape) if torch.is_tensor(aligned) else type(aligned).__name__
            raise ValueError(f"aligned must be float vectors ({batch}, {length}, {c}), one per token, got {got}")

    def forward(self, tokens: torch.Tensor, cond: torch.Tensor | None = None,
                context: torch.Tensor | None = None, aligned: torch.Tensor | None = None) -> torch.Tensor:
        """tokens (B, L) long, P + L <= block_size -> logits (B, L, K); logits[:, t] predicts token t+1.
        ``aligned`` (B, L + 1, C): a vector added to the input that predicts each token."""
        p = self._check(tokens, cond, context)
        self.check_aligned(aligned, len(tokens), tokens.shape[1] + 1)
        return self._logits(tokens, cond, context=context, aligned=aligned)[:, 1 + p:]  # rows predicting tokens 1..L

    def nll(self, tokens: torch.Tensor, cond: torch.Tensor | None = None,
            context: torch.Tensor | None = None, aligned: torch.Tensor | None = None) -> torch.Tensor:
        """Negative log-likelihood in nats per token of each sequence, all L positions: (B, L) -> (B,).
        ``aligned`` (B, L, C): a vector added to the input that predicts each token."""
        p = self._check(tokens, cond, context)
        self.check_aligned(aligned, len(tokens), tokens.shape[1])
        logits = self._logits(tokens[:, :-1], cond, context=context, aligned=aligned)[:, p:]  # row t predicts token t
        return F.cross_entropy(logits.transpose(1, 2), tokens, reduction="none").mean(1)

    def next_logits(self, tokens: torch.Tensor, cond: torch.Tensor | None = None, context: torch.Tensor | None = None,
                    caches: list[KVCache] | None = None, aligned: torch.Tensor | None = None) -> torch.Tensor:
        """The logits of the token after ``tokens`` (B, L) -> (B, K), one sampling step.

        With ``caches`` (one ``KVCache`` per block), ``tokens`` are only the positions the caches
        have not seen yet: the first call (empty caches) also reads the start token and ``context``,
        later calls feed the newest tokens. ``aligned`` (B, L_all, C) as in ``nll``, for the whole
        sequence. Inputs are checked by ``sample`` and ``forward``, not here.
        """
        return self._logits(tokens, cond, caches, context, aligned)[:, -1]  # (B, K)

    @torch.no_grad()
    def sample(self, n: int, length: int, cond: torch.Tensor | None = None, temperature: float = 1.0,
               top_k: int | None = None, use_cache: bool = True, prefix: torch.Tensor | None = None,
               context: torch.Tensor | None = None) -> torch.Tensor:
        """Draw n sequences of ``length`` tokens, one token at a time -> (n, length) long.

        ``prefix`` (n, P') long: the first P' tokens are given and continued. ``context`` (n, P, C):
        vectors read before the tokens. ``top_k=1`` is greedy. With ``use_cache`` each step feeds
        only the newest token (same result, less work).
        """
        check_sampling(n, temperature, top_k)
        check_cond(cond, self.config.num_classes, n)
        p = self._check_context(context, n)
        if not 1 <= length <= self.config.block_size - p:
            limit = f"block_size - P = {self.config.block_size - p}" if p else f"block_size={self.config.block_size}"
            raise ValueError(f"length must be in [1, {limit}], got {length}")
        if prefix is None:
            prefix = torch.zeros(n, 0, dtype=torch.long)  # (n, 0): nothing given
        else:
            check_tokens(prefix, self.config.vocab_size, f"({n}, P')", ndim=2)
            if len(prefix) != n or prefix.shape[1] > length:
                raise ValueError(f"prefix must have shape ({n}, P') with P' <= length={length}, "
                                 f"got {tuple(prefix.shape)}")
        device = self.tok_emb.weight.device
        tokens = to_device(prefix, device)  # (n, P')
        cond = None if cond is None else to_device(cond, device)
        context = None if context is None else to_device(context, device)
        caches = [KVCache() for _ in self.blocks] if use_cache else None
        new = tokens  # what the cache has not seen yet
        while tokens.shape[1] < length:
            logits = self.next_logits(new if use_cache else tokens, cond, context, caches)  # (n, K)
            new = sample_from_logits(logits, temperature, top_k)[:, None]  # (n, 1)
            tokens = torch.cat([tokens, new], dim=1)  # (n, t + 1)
        return tokens
