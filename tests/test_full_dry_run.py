"""The ``full`` profile, dry: every recipe's model at full size, two training steps and one sampling or
encoding call at batch 2 and full resolution, on the CPU, on random data of the full shape.

What a GPU run would meet first (a shape that only full sizes produce, a config that does not build, a
sampler that breaks on a long context) fails here, in CI, in about a minute on two cores. Each recipe reports
(in the terminal summary, "full dry run"):

- parameters: trained (with a gradient and two AdamW moments) and frozen;
- peak CPU memory: the resident set size (RSS) of this process sampled every 2 ms by a thread (psutil)
  during the two steps, minus the RSS before them; allocations freed and reused within a sample
  interval can hide, so it is a lower bound of the true peak;
- estimated GPU memory at the recipe's full batch: 16 bytes per trained parameter (float32 weight,
  gradient, two AdamW moments) + 4 bytes per frozen parameter and buffer element + the peak of the
  activations that autograd keeps for the backward pass during the two steps at batch 2 (saved-tensor
  hooks, each storage once, from saved to freed), halved and multiplied by the full batch. An estimate
  (see ``full_recipes.estimated_gpu_bytes``): on the CPU, attention with dropout keeps the (T, T) attention
  matrices that CUDA's fused kernels do not, so the transformers' estimates are high; ``make gpu-check``
  measures the real peak on a GPU.

Sampling: two priors sample a shorter sequence on the CPU (``FullRun.cpu_infer``): the PixelCNN over the
16 x 16 top codes of chapter 4 runs its network once per position, and chapter 4's bottom GPT grows its
key-value cache by concatenation; all 256 or 1024 positions take minutes on two cores, and their code path
is the one the first rows run (the training steps cover the full context).
"""

import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from full_recipes import (  # noqa: E402
    RECIPES,
    PeakRSS,
    SavedActivations,
    estimated_gpu_bytes,
    infer,
    train_steps,
)

BATCH = 2
MiB = 2**20


def tensors(obj) -> list[torch.Tensor]:
    if torch.is_tensor(obj):
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [t for item in obj for t in tensors(item)]
    return []


@pytest.fixture(autouse=True, scope="module")
def _warm_up():
    """One small step through each kind of layer first, so that the first recipe's peak RSS does not
    include the one-time start-up of PyTorch's kernels and thread pools."""
    torch.manual_seed(0)
    images, clips = torch.rand(2, 1, 8, 8), torch.rand(2, 1, 4, 8, 8)
    q = torch.rand(2, 2, 8, 4, requires_grad=True)
    attention = torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True, dropout_p=0.1)
    loss = (torch.nn.Conv2d(1, 4, 3)(images).sum() + torch.nn.Conv3d(1, 4, 3)(clips).sum() + attention.sum()
            + torch.nn.GroupNorm(2, 4)(torch.nn.ConvTranspose2d(1, 4, 4, 2, 1)(images)).sum())
    loss.backward()


@pytest.mark.parametrize("name", RECIPES)
def test_full_recipe_trains_and_samples_on_the_cpu(name, record_property):
    torch.manual_seed(0)
    run = RECIPES[name]()
    counts = run.parameters()
    with PeakRSS() as rss, SavedActivations(run.modules()) as saved:
        history = train_steps(run, steps=2, batch_size=BATCH, device="cpu")
    activations = saved.peak
    assert history.steps == 2
    losses = [row["loss"] for row in history.train]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses), losses
    assert all(torch.isfinite(p).all() for m in run.modules() for p in m.parameters()), "a weight is not finite"
    batch = run.example(BATCH)
    out = tensors(infer(run, batch, "cpu", cpu=True))
    assert out and all(t.numel() and (not t.is_floating_point() or torch.isfinite(t).all()) for t in out)
    assert all(len(t) == BATCH for t in out), [tuple(t.shape) for t in out]
    estimate = estimated_gpu_bytes(counts, activations / BATCH, run.train_config.batch_size)
    record_property("full_dry_run", {
        "recipe": name, "trained": counts["trained"], "frozen": counts["frozen"],
        "peak_rss_mib": (rss.peak - rss.before) / MiB, "activations_mib_per_example": activations / BATCH / MiB,
        "batch": run.train_config.batch_size, "gpu_estimate_gib": estimate / 2**30,
        "attention_dropout": run.attention_dropout()})
