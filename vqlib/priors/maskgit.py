"""MaskGIT: a bidirectional transformer over codes, trained by masked token modelling and
sampled by iterative parallel decoding.

Paper: Chang, Zhang, Jiang, Liu and Freeman, "MaskGIT: Masked Generative Image Transformer",
CVPR 2022. The training objective is BERT's (Devlin et al. 2019) with a random masking ratio;
Austin et al., "Structured Denoising Diffusion Models in Discrete State-Spaces" (D3PM, NeurIPS
2021) explain it as absorbing-state discrete diffusion: the mask token is the absorbing state and
the masking schedule plays the role of the noise schedule.

What is in it:

- ``gamma``: the masking schedule γ(r), the fraction of tokens masked at ratio r in [0, 1],
  γ(0) = 1 (all masked) and γ(1) = 0 (none); the paper's cosine γ(r) = cos(π r / 2), and linear
  and square for comparison.
- ``random_mask`` and ``maskgit_loss``: draw r ~ U(0, 1) per sequence, mask ⌈γ(r)·L⌉ random
  positions, and take the cross-entropy on the masked positions only, optionally label-smoothed
  while training (``MaskGITConfig.label_smoothing``; the paper uses 0.1; off by default, because in
  trials on the book's MNIST codes it did not lower the validation Fréchet distance consistently).
- ``masked_bits``: bits per masked token on held-out codes, with masks drawn from a fixed seed.
- ``any_order_bits``: an upper bound on the bits per token of whole sequences (Hoogeboom et al.,
  "Autoregressive Diffusion Models", ICLR 2022): the masked model read as an autoregressive model
  in a random order, the number a GPT's bits per token compares with.
- ``MaskGIT``: the bidirectional transformer, built from ``vqlib.priors.gpt.Block`` with an attention
  that has no causal mask (``SelfAttention``). The vocabulary has one extra token, the mask, whose
  id is K; a class token (or one learned start token) comes first.
- ``mask_counts`` and ``MaskGIT.decode``/``sample``: the paper's iterative decoding. Start with
  every position masked; at each of T steps predict and sample all masked positions at once, keep
  the most confident ones and re-mask the others so that the number still masked follows the
  schedule; the confidences get Gumbel noise whose scale ("choice temperature") anneals to zero.
  Given tokens (``decode(tokens=...)``, the mask id where unknown) are kept: inpainting.
- Classifier-free guidance (Ho & Salimans 2021; for masked models, Muse, Chang et al. 2023):
  ``class_dropout`` hides the label of a fraction of the training sequences, so the network also
  learns p(tokens) without a label; ``decode(..., guidance=w)`` uses ``base.guided_logits``.

Training MaskGIT (``train_maskgit``) and Chapter 7's recipes are in ``vqlib.recipes.ch07_maskgit``.

Left out: the paper's VQGAN tokenizer and its size (24 layers, 1024 codes of 16×16 images), and
Muse's text conditioning and guidance schedules.

Dimension key: B batch, L tokens (the flattened code map), C embedding width, K codebook size
(token ids 0..K-1 are codes, id K is the mask token), T decoding steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from vqlib.core.device import model_device, to_device
from vqlib.core.inference import evaluating
from vqlib.core.profile import pick
from vqlib.priors.base import check_cond, check_guidance, check_sampling, guided_logits, sample_from_logits, split_batch
from vqlib.priors.gpt import Block, CausalSelfAttention, GPTConfig, KVCache, init_weights

SCHEDULES = ("cosine", "linear", "square")


@dataclass(frozen=True)
class MaskGITConfig:
    vocab_size: int  # K: codebook size; the mask token gets id K
    block_size: int  # L: tokens per sequence (49 for a 7 x 7 code map)
    n_layer: int = 4  # transformer blocks (the paper: 24)
    n_head: int = 4  # attention heads; must divide n_embd (the paper: 16)
    n_embd: int = 128  # C: embedding width (the paper: 768)
    dropout: float = 0.0  # on attention weights and residual branches while training (the paper: 0.1)
    num_classes: int = 0  # > 0: class-conditional; the class embedding is the first token
    schedule: str = "cosine"  # masking schedule used for training (the paper: cosine)
    label_smoothing: float = 0.0  # of the masked cross-entropy while training (the paper: 0.1)
    class_dropout: float = 0.0  # training labels replaced by "no class", for guidance (Muse: 0.1)

    def __post_init__(self) -> None:
        if self.vocab_size < 2 or self.block_size < 1 or self.n_layer < 1:
            raise ValueError(f"need vocab_size >= 2, block_size >= 1, n_layer >= 1, got {self}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.num_classes < 0 or not 0 <= self.dropout < 1 or not 0 <= self.label_smoothing < 1:
            raise ValueError(f"need num_classes >= 0, 0 <= dropout < 1 and 0 <= label_smoothing < 1, got {self}")
        if not 0 <= self.class_dropout < 1 or (self.class_dropout > 0 and self.num_classes == 0):
            raise ValueError(f"class_dropout must be in [0, 1), and 0 for an unconditional model, got {self}")
        check_schedule(self.schedule)

    @classmethod
    def for_profile(cls, vocab_size: int, block_size: int, profile: str | None = None,
                    **overrides) -> "MaskGITConfig":
        """The book's size for ``profile`` (default: the current one), as ``GPTConfig.for_profile``;
        ``overrides`` set any field."""
        sizes = pick(smoke=dict(n_layer=1, n_head=2, n_embd=16, dropout=0.1),
                     quick=dict(n_layer=3, n_head=4, n_embd=64, dropout=0.1),  # the quick GPT's size
                     full=dict(n_layer=8, n_head=8, n_embd=256, dropout=0.1), profile=profile)
        return cls(vocab_size=vocab_size, block_size=block_size, **{**sizes, **overrides})

    @property
    def mask_id(self) -> int:
        return self.vocab_size


# ----------------------------------------------------------------------------- the schedule

def check_schedule(schedule: str) -> None:
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")


def gamma(r: torch.Tensor | float, schedule: str = "cosine") -> torch.Tensor:
    """Fraction of tokens masked at ratio r in [0, 1]: decreasing, γ(0) = 1, γ(1) = 0. Any shape."""
    check_schedule(schedule)
    r = torch.as_tensor(r, dtype=torch.float64)
    if r.numel() and (r.min() < 0 or r.max() > 1):
        raise ValueError(f"the ratio r must lie in [0, 1], got values in [{float(r.min())}, {float(r.max())}]")
    if schedule == "cosine":
        return torch.cos(math.pi / 2 * r).clamp(0, 1)  # the paper's choice (section 3.3)
    if schedule == "linear":
        return 1 - r
    return 1 - r**2  # "square"


def mask_counts(n_masked: int, steps: int, schedule: str = "cosine") -> list[int]:
    """How many tokens are still masked after each of ``steps`` decoding steps -> list of length T.

    Step t (0-based) leaves ⌊n_masked · γ((t+1)/T)⌋ masked, clipped so that every step unmasks at
    least one token and each later step still has one to unmask; the last entry is 0.
    """
    if steps < 1 or steps > n_masked:
        raise ValueError(f"steps must be in [1, {n_masked}] (at least one token unmasked per step), got {steps}")
    counts, left = [], n_masked
    for t in range(steps):
        target = math.floor(n_masked * float(gamma((t + 1) / steps, schedule)) + 1e-9)  # 1e-9: 10·0.2 is 1.99...
        left = min(max(target, steps - 1 - t), left - 1)
        counts.append(left)
    return counts


# ----------------------------------------------------------------------------- training

def random_mask(tokens: torch.Tensor, mask_id: int, schedule: str = "cosine",
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask ⌈γ(r)·L⌉ random positions of each sequence, r ~ U(0, 1) per sequence (at least one).

    tokens (B, L) -> (masked tokens (B, L) with ``mask_id`` at masked positions, mask (B, L) bool).
    """
    B, L = tokens.shape
    r = torch.rand(B, generator=generator).to(tokens.device)  # (B,)
    n = torch.ceil(gamma(r, schedule) * L).long().clamp(1, L)  # (B,) tokens to mask
    scores = torch.rand(B, L, generator=generator).to(tokens.device)  # (B, L) a random order per sequence
    ranks = scores.argsort(dim=1).argsort(dim=1)  # (B, L) rank of each position in that order
    mask = ranks < n[:, None]  # (B, L) the first n in the random order
    return tokens.masked_fill(mask, mask_id), mask


def masked_cross_entropy(model: "MaskGIT", tokens: torch.Tensor, cond: torch.Tensor | None = None,
                         generator: torch.Generator | None = None, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy (nats) over the masked positions of a random masking of ``tokens`` (B, L),
    against targets smoothed by ``label_smoothing`` (0: the plain cross-entropy)."""
    model.check_tokens(tokens, allow_mask=False)
    masked, mask = random_mask(tokens, model.config.mask_id, model.config.schedule, generator)
    logits = model(masked, cond)  # (B, L, K)
    return F.cross_entropy(logits[mask], tokens[mask], label_smoothing=label_smoothing)  # masked positions only


def maskgit_loss(model: "MaskGIT", batch: tuple) -> Mapping[str, torch.Tensor]:
    """Loss for ``vqlib.training.loop.fit``, batch ``(tokens,)`` or ``(tokens, labels)``: masked cross-entropy,
    label-smoothed by ``model.config.label_smoothing``; ``masked_bits`` is the plain (unsmoothed) one."""
    tokens, cond = split_batch(batch)
    model.check_tokens(tokens, allow_mask=False)
    masked, mask = random_mask(tokens, model.config.mask_id, model.config.schedule)
    logits, targets = model(masked, cond)[mask], tokens[mask]  # (M, K), (M,) masked positions only
    loss = F.cross_entropy(logits, targets, label_smoothing=model.config.label_smoothing)
    plain = F.cross_entropy(logits.detach(), targets)
    return {"loss": loss, "masked_bits": plain / math.log(2)}


@torch.no_grad()
def masked_bits(model: "MaskGIT", tokens: torch.Tensor, cond: torch.Tensor | None = None, seed: int = 0,
                batch_size: int = 500) -> float:
    """Bits per masked token on ``tokens`` (N, L), with masks drawn from a fixed seed (comparable
    between evaluations). Not a likelihood: a masked model has no exact one."""
    device = model_device(model)
    generator = torch.Generator().manual_seed(seed)
    total, count = 0.0, 0
    with evaluating(model):
        for start in range(0, len(tokens), batch_size):
            part = slice(start, start + batch_size)
            c = None if cond is None else to_device(cond[part], device)
            n = len(tokens[part])
            total += float(masked_cross_entropy(model, to_device(tokens[part], device), c, generator)) * n
            count += n
    return total / count / math.log(2)


@torch.no_grad()
def any_order_bits(model: "MaskGIT", tokens: torch.Tensor, cond: torch.Tensor | None = None, draws: int = 4,
                   seed: int = 0, batch_size: int = 500) -> torch.Tensor:
    """An upper bound on -log2 p(z) of each sequence, in bits per token: tokens (N, L) -> (N,) float64, CPU.

    Read as an autoregressive model that reveals the tokens in an order σ, p_σ(z) = Π_t p(z_σ(t) |
    z_σ(<t)), the masked model is a proper distribution for every σ, and the mean of -log2 p_σ(z) over
    uniformly random orders bounds -log2 of their mixture (Jensen). Hoogeboom et al. (ARDM, ICLR
    2022) estimate it with one pass per draw: mask m ~ U{1..L} random positions and take the mean
    bits of the masked ones, whose expectation is that bound divided by L. ``random_mask`` with the
    linear schedule draws exactly such an m. Each sequence gets ``draws`` masks (seeded); the result
    is their mean. An estimate of a bound, not an exact likelihood, which a masked model does not have.
    """
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    model.check_tokens(tokens, allow_mask=False)
    device, generator, parts = model_device(model), torch.Generator().manual_seed(seed), []
    with evaluating(model):
        for start in range(0, len(tokens), batch_size):
            z = to_device(tokens[start:start + batch_size], device)  # (b, L)
            c = None if cond is None else to_device(cond[start:start + batch_size], device)
            bits = torch.zeros(len(z), dtype=torch.float64, device=device)  # (b,)
            for _ in range(draws):
                masked, mask = random_mask(z, model.config.mask_id, "linear", generator)  # m ~ U{1..L}
                nats = F.cross_entropy(model(masked, c).transpose(1, 2), z, reduction="none")  # (b, L)
                bits += ((nats * mask).sum(1) / mask.sum(1)).double() / math.log(2)
            parts.append((bits / draws).cpu())
    return torch.cat(parts)  # (N,)


# ----------------------------------------------------------------------------- the model

class SelfAttention(CausalSelfAttention):
    """Bidirectional self-attention: every position attends to every position (no mask, no cache)."""

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C)."""
        if cache is not None:
            raise ValueError("bidirectional attention has no key/value cache: every step sees every position")
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, N, T, C/N)
                   for t in self.qkv(x).split(C, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.drop(self.proj(y.transpose(1, 2).reshape(B, T, C)))  # (B, T, C)


class MaskGIT(nn.Module):
    """Bidirectional transformer: tokens (B, L) in [0, K] (K = mask) -> logits (B, L, K) over the codes."""

    def __init__(self, config: MaskGITConfig) -> None:
        super().__init__()
        self.config = config
        blocks = GPTConfig(vocab_size=config.vocab_size, block_size=config.block_size, n_layer=config.n_layer,
                           n_head=config.n_head, n_embd=config.n_embd, dropout=config.dropout)
        self.tok_emb = nn.Embedding(config.vocab_size + 1, config.n_embd)  # +1: the mask token
        no_class = 1 if config.class_dropout > 0 else 0  # id num_classes: "no class", for guidance
        self.start = nn.Embedding(max(1, config.num_classes) + no_class, config.n_embd)  # one per class
        self.pos_emb = nn.Embedding(config.block_size + 1, config.n_embd)  # +1: the class token's position
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(blocks, SelfAttention(blocks)) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.head = nn.Linear(config.n_embd, config.vocab_size)  # predicts codes only, never the mask
        self.apply(init_weights)


    def check_tokens(self, tokens: torch.Tensor, allow_mask: bool = True) -> None:
        K, what = self.config.vocab_size, "(B, L) with L <= block_size"
        if not torch.is_tensor(tokens) or tokens.dtype != torch.long:
            got = tokens.dtype if torch.is_tensor(tokens) else type(tokens).__name__
            raise TypeError(f"tokens must be a torch.long tensor {what} of code indices, got {got}")
        if tokens.dim() != 2 or tokens.shape[0] == 0 or not 1 <= tokens.shape[1] <= self.config.block_size:
            raise ValueError(f"tokens must have shape {what}={self.config.block_size}, B >= 1, "
                             f"got {tuple(tokens.shape)}")
        top = K if allow_mask else K - 1
        if not torch.compiler.is_exporting() and (tokens.min() < 0 or tokens.max() > top):
            allowed = f"codes in [0, {K}) or the mask id {K}" if allow_mask else f"codes in [0, {K})"
            raise ValueError(f"tokens must be {allowed}, got values in [{int(tokens.min())}, {int(tokens.max())}]")

    def class_ids(self, cond: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor:
        """The id of each sequence's first token (B,): its label; 0 (the one start token) in an
        unconditional model; "no class" (id num_classes) for cond=None in a model trained with
        ``class_dropout``, which has learned p(tokens) without a label too."""
        c = self.config
        if cond is None and c.class_dropout > 0:
            return torch.full((batch,), c.num_classes, dtype=torch.long, device=device)
        check_cond(cond, c.num_classes, batch)
        return cond if cond is not None else torch.zeros(batch, dtype=torch.long, device=device)

    def forward(self, tokens: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """tokens (B, L) long in [0, K] (K = mask), cond (B,) labels or None -> logits (B, L, K).

        cond=None: no label (an unconditional model, or "no class" in one trained with class dropout).
        While training, ``class_dropout`` of the labels are replaced by "no class", as classifier-free
        guidance trains (Ho & Salimans 2021), so one network learns p(z | class) and p(z)."""
        self.check_tokens(tokens)
        labels = self.class_ids(cond, len(tokens), tokens.device)  # (B,)
        if self.training and self.config.class_dropout > 0:
            hidden = torch.rand(len(labels), device=labels.device) < self.config.class_dropout  # (B,)
            labels = labels.masked_fill(hidden, self.config.num_classes)
        x = torch.cat([self.start(labels)[:, None], self.tok_emb(tokens)], dim=1)  # (B, L + 1, C)
        x = self.drop(x + self.pos_emb(torch.arange(x.shape[1], device=x.device)))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x[:, 1:]))  # (B, L, K): the class token predicts nothing

    @torch.no_grad()
    def decode(self, n: int, cond: torch.Tensor | None = None, steps: int = 8, schedule: str | None = None,
               temperature: float = 1.0, top_k: int | None = None, choice_temperature: float = 4.5,
               tokens: torch.Tensor | None = None, guidance: float = 1.0) -> torch.Tensor:
        """Iterative decoding (the paper's Algorithm, section 3.2) -> every state, (T + 1, n, L) long.

        State 0 is the start (all masked, or ``tokens`` (n, L) with the mask id K where unknown); state
        t is after step t; state T has no mask left. One network evaluation per step. Known tokens
        never change. ``schedule`` defaults to the training one; ``choice_temperature`` scales the
        Gumbel noise added to the log-confidences (annealed linearly to 0; 0 = keep the most confident).
        ``guidance`` w != 1 decodes from the classifier-free guided logits (``guided_logits``) of a model
        trained with ``class_dropout``: two network evaluations per step, with the labels and without.
        """
        check_sampling(n, temperature, top_k)
        check_guidance(guidance)
        if guidance != 1.0 and (self.config.class_dropout == 0 or cond is None):
            raise ValueError(f"guidance={guidance} needs labels (cond) and a MaskGIT trained with class_dropout > 0 "
                             f"(this one: class_dropout={self.config.class_dropout}); use guidance=1 otherwise")
        if cond is not None or self.config.class_dropout == 0:  # cond=None: "no class", if trained for it
            check_cond(cond, self.config.num_classes, n)
        if not choice_temperature >= 0:
            raise ValueError(f"choice_temperature must be >= 0, got {choice_temperature}")
        schedule = schedule or self.config.schedule
        check_schedule(schedule)
        L, mask_id = self.config.block_size, self.config.mask_id
        device = self.tok_emb.weight.device
        if tokens is None:
            tokens = torch.full((n, L), mask_id, dtype=torch.long, device=device)  # (n, L) all masked
        else:
            self.check_tokens(tokens)
            if tokens.shape != (n, L):
                raise ValueError(f"tokens must have shape ({n}, {L}) (n, block_size), got {tuple(tokens.shape)}")
            tokens = to_device(tokens, device)
        unknown = tokens == mask_id  # (n, L)
        n_masked = int(unknown.sum(1).min())
        if not torch.equal(unknown.sum(1), torch.full((n,), n_masked, device=device)):
            raise ValueError("every sequence in tokens must have the same number of masked positions")
        counts = mask_counts(n_masked, steps, schedule)  # checks 1 <= steps <= n_masked
        cond = None if cond is None else to_device(cond, device)
        states = [tokens]
        guided = guidance != 1.0
        for t, keep_masked in enumerate(counts):
            logits = self(tokens, cond)[unknown]  # (M, K) at the M masked positions: one network evaluation
            if guided:  # and one more without the labels
                logits = guided_logits(logits, self(tokens)[unknown], guidance)
            drawn = sample_from_logits(logits, temperature, top_k)  # (M,) every masked position at once
            sampled = tokens.masked_scatter(unknown, drawn)  # (n, L) known tokens stay as they are
            log_p = F.log_softmax(logits.float(), dim=-1).gather(1, drawn[:, None])[:, 0]  # (M,) confidence
            if choice_temperature > 0:  # Gumbel noise, annealed: more random choices early on
                gumbel = -torch.empty_like(log_p).exponential_().log()  # (M,) -log E, E ~ Exp(1)
                log_p = log_p + choice_temperature * (1 - (t + 1) / len(counts)) * gumbel
            confidence = torch.full((n, L), float("inf"), device=device)  # known tokens are never re-masked
            confidence = confidence.masked_scatter(unknown, log_p)  # (n, L)
            remask = confidence.argsort(dim=1)[:, :keep_masked]  # (n, keep_masked) least confident
            unknown = torch.zeros_like(unknown).scatter_(1, remask, True)  # (n, L)
            tokens = sampled.masked_fill(unknown, mask_id)
            states.append(tokens)
        return torch.stack(states)  # (T + 1, n, L)

    def sample(self, n: int, cond: torch.Tensor | None = None, steps: int = 8, **kwargs) -> torch.Tensor:
        """n sequences by iterative decoding in ``steps`` network evaluations -> (n, L) long codes.
        Keyword arguments as ``decode``."""
        return self.decode(n, cond, steps, **kwargs)[-1]
