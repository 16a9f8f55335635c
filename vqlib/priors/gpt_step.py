"""One sampling step of the GPT with a key/value cache of fixed length: the graph a browser runs.

``GPT.sample`` (``vqlib.priors.gpt``) grows each layer's cache by concatenation, so every step has
new shapes. An exported graph (``vqlib.core.onnx``) wants fixed shapes: here the cache has a row
for every position from the start, a step writes its own row, and a mask hides the rows not yet
written. The arithmetic is the GPT's own (its layers, with the attention written out), and
``tests/test_live.py`` checks the step's logits against ``GPT.forward`` at every position.

Dimension key: K codebook size, N heads, T = block_size + 1 cache rows (the start token and every
code), C embedding width, d = C/N.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from vqlib.priors.gpt import GPT

class GPTStep(nn.Module):
    """(token, position, label, keys, values) -> (logits, keys, values): one step of ``GPT.sample``.

    ``token`` (1,) long: the code fed at this step, read when ``position`` > 0; ``position`` () long:
    0 feeds the start (class) token, t > 0 feeds code t - 1; ``label`` (1,) long: the class (0 for
    an unconditional GPT); ``keys``, ``values`` (n_layer, 1, N, T, d): the cache, rows < ``position``
    filled. Returns the logits (1, K) of the next code and the cache with row ``position`` written.
    A sample of L codes takes L steps, positions 0 .. L - 1.
    """

    def __init__(self, gpt: GPT) -> None:
        super().__init__()
        c = gpt.config
        self.gpt = gpt
        self.cache_shape = (c.n_layer, 1, c.n_head, c.block_size + 1, c.n_embd // c.n_head)

    def first_inputs(self, label: int = 0) -> tuple[torch.Tensor, ...]:
        """The inputs of the first step: no token yet, position 0, the class, an empty cache."""
        return (torch.zeros(1, dtype=torch.long), torch.tensor(0), torch.tensor([label]),
                torch.zeros(self.cache_shape), torch.zeros(self.cache_shape))

    def forward(self, token: torch.Tensor, position: torch.Tensor, label: torch.Tensor, keys: torch.Tensor,
                values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        gpt = self.gpt
        _, _, n, t_max, d = self.cache_shape
        x = torch.where(position == 0, gpt.start(label), gpt.tok_emb(token))  # (1, C) start token or a code
        x = (x + gpt.pos_emb(position))[:, None]  # (1, 1, C)
        rows = torch.arange(t_max, device=x.device)
        here = (rows == position).view(1, 1, t_max, 1)  # the row this step writes
        seen = (rows <= position).view(1, 1, 1, t_max)  # the rows it attends to
        new_keys, new_values = [], []
        for block, past_k, past_v in zip(gpt.blocks, keys, values):
            q, k, v = (t.view(1, 1, n, d).transpose(1, 2) for t in block.attn.qkv(block.ln1(x)).split(n * d, dim=2))
            k, v = torch.where(here, k, past_k), torch.where(here, v, past_v)  # (1, N, T, d)
            scores = (q @ k.transpose(2, 3) / math.sqrt(d)).masked_fill(~seen, float("-inf"))  # (1, N, 1, T)
            y = scores.softmax(-1) @ v  # (1, N, 1, d)
            x = x + block.attn.proj(y.transpose(1, 2).reshape(1, 1, n * d))
            x = x + block.mlp(block.ln2(x))
            new_keys.append(k)
            new_values.append(v)
        return gpt.head(gpt.ln_f(x))[:, 0], torch.stack(new_keys), torch.stack(new_values)  # (1, K), caches

    @torch.no_grad()
    def all_logits(self, tokens: torch.Tensor, label: int = 0) -> torch.Tensor:
        """Step through ``tokens`` (L,) long -> the logits (L, K) of each code given the ones before it,
        as ``GPT.forward`` computes them in one pass (the test of this module)."""
        token, position, label_t, keys, values = self.first_inputs(label)
        rows = []
        for t in range(len(tokens)):
            logits, keys, values = self(token, position, label_t, keys, values)
            rows.append(logits[0])
            token, position = tokens[t:t + 1], torch.tensor(t + 1)
        return torch.stack(rows)
