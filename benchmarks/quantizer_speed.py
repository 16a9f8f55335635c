"""How fast is a vector quantiser, measured against the least work any quantiser must do?

The bound is the bare distance matrix product and argmin, argmin_k (||e_k||² - 2 z·e_k), for
N = 16,384 vectors of dimension D = 64 and K = 512 codes. Each quantiser is timed for a forward
and a backward pass in training mode (EMA updates and dead-code restarts included). Its time and
the bound's are taken back to back, repeat after repeat, and the median of their ratios is
printed: on a shared machine the load changes, and a ratio of neighbours is steadier than two
medians taken minutes apart.

Compared: vqlib's ``VectorQuantizer`` and ``EMAVectorQuantizer``; seed 004's one-hot quantizer
(``vqlib.book.errata``); and ``vector-quantize-pytorch`` configured alike (EMA, decay 0.99,
commitment weight 0.25, dead-code restarts below one vector per batch, no rotation trick), when
it is installed (``pip install -e ".[bench]"``). Then chapter 6's quantizers, each with 512 codes
per position where it has a codebook size: l2-normalised factorized codes (d = 8), the EMA
quantizer with the rotation trick, residual VQ (2 stages of 512 codes: twice the bits), FSQ with
levels 8·8·8 and LFQ with 9 bits (``--no-chapter6`` leaves them out).

Run: ``python benchmarks/quantizer_speed.py [--repeats 15] [--threads 2] [--no-chapter6]``
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch
from torch import nn

from vqlib.book import errata
from vqlib.quantizers.factorized import FactorizedQuantizer
from vqlib.quantizers.fsq import FiniteScalarQuantizer
from vqlib.quantizers.lfq import LookupFreeQuantizer
from vqlib.quantizers.residual import ResidualVectorQuantizer
from vqlib.quantizers.rotation import RotationTrickQuantizer
from vqlib.quantizers.vector import EMAVectorQuantizer, VectorQuantizer

N, K, D = 16_384, 512, 64
B, H, W = 16, 32, 32  # z_e is (B, D, H, W) with B·H·W = N


def bound_step(z_e: torch.Tensor, codebook: torch.Tensor) -> Callable[[], None]:
    """The bare distance product + argmin on ready-made (N, D) rows: no copy, no gradient."""
    vectors = z_e.detach().movedim(1, -1).reshape(N, D).contiguous()  # (N, D)

    def step() -> None:
        torch.addmm(codebook.pow(2).sum(1), vectors, codebook.t(), alpha=-2).argmin(dim=1)
    return step


def training_step(quantize: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
                  module: nn.Module, z_e: torch.Tensor, grad: torch.Tensor) -> Callable[[], None]:
    """Forward and backward in training mode; ``quantize(z_e) -> (z_q, loss)``."""
    module.train()
    one = torch.ones(())

    def step() -> None:
        z_e.grad = None
        module.zero_grad(set_to_none=True)
        z_q, loss = quantize(z_e)
        if loss.requires_grad:
            torch.autograd.backward((z_q, loss), (grad, one))
        else:  # FSQ has no loss
            z_q.backward(grad)
    return step


def candidates(z_e: torch.Tensor) -> dict[str, tuple[nn.Module, Callable]]:
    """Name -> (module, quantize(z_e) -> (z_q, loss)) for every quantiser that can be run here."""
    vq, ema = VectorQuantizer(K, D, beta=0.25), EMAVectorQuantizer(K, D, beta=0.25, decay=0.99)
    seed = errata.VectorQuantizer(K, D, 0.25)
    out: dict[str, tuple[nn.Module, Callable]] = {
        "vqlib VectorQuantizer": (vq, lambda z: vq(z)[:2]),
        "vqlib EMAVectorQuantizer (restarts on)": (ema, lambda z: ema(z)[:2]),
        "seed 004 one-hot VectorQuantizer (vqlib.book.errata)": (seed, lambda z: seed(z)[:2]),
    }
    try:  # optional: the `bench` extra
        from vector_quantize_pytorch import VectorQuantize
    except ImportError:
        print("vector-quantize-pytorch is not installed, so it is skipped: "
              'pip install -e ".[bench]" (or pip install vector-quantize-pytorch) to compare with it\n')
        return out
    lucid = VectorQuantize(dim=D, codebook_size=K, decay=0.99, commitment_weight=0.25, rotation_trick=False,
                           threshold_ema_dead_code=1, accept_image_fmap=True)
    out["vector-quantize-pytorch (EMA, restarts on)"] = (lucid, lambda z: (lambda q, i, l: (q, l.sum()))(*lucid(z)))
    return out


def chapter6_candidates() -> dict[str, tuple[nn.Module, Callable]]:
    """Chapter 6's quantizers at K = 512 codes (residual VQ: 2 stages of 512), same interface."""
    modules = {
        "vqlib FactorizedQuantizer (l2, d=8)": FactorizedQuantizer(K, D, low_dim=8),
        "vqlib RotationTrickQuantizer (EMA inside)": RotationTrickQuantizer(EMAVectorQuantizer(K, D)),
        "vqlib ResidualVectorQuantizer (2 stages)": ResidualVectorQuantizer(2, K, D),
        "vqlib FiniteScalarQuantizer (8·8·8 levels)": FiniteScalarQuantizer((8, 8, 8), D),
        "vqlib LookupFreeQuantizer (9 bits)": LookupFreeQuantizer(9, D),
    }
    return {name: (m, (lambda module: lambda z: module(z)[:2])(m)) for name, m in modules.items()}


def seconds(step: Callable[[], None]) -> float:
    started = time.perf_counter()
    step()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15, help="timed repeats per quantiser (median)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed repeats first")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--no-chapter6", action="store_true", help="leave out chapter 6's quantizers")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    z_e = torch.randn(B, D, H, W, requires_grad=True)  # (B, D, H, W)
    grad = torch.randn(B, D, H, W)  # the gradient the decoder would send back
    bound = bound_step(z_e, torch.randn(K, D))
    print(f"N={N} vectors (z_e {B}×{D}×{H}×{W}), K={K} codes, D={D}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; median of {args.repeats} repeats after {args.warmup} warm-up\n")
    print(f"{'quantiser (forward + backward, training mode)':52s} {'ms':>8s} {'bound ms':>9s} {'× bound':>8s}")
    compared = candidates(z_e) | ({} if args.no_chapter6 else chapter6_candidates())
    for name, (module, quantize) in compared.items():
        step = training_step(quantize, module, z_e, grad)
        for _ in range(args.warmup):
            step(), bound()
        pairs = [(seconds(bound), seconds(step)) for _ in range(args.repeats)]
        ratio = statistics.median(s / b for b, s in pairs)
        print(f"{name:52s} {1e3 * statistics.median(s for _, s in pairs):8.1f} "
              f"{1e3 * statistics.median(b for b, _ in pairs):9.1f} {ratio:8.2f}")


if __name__ == "__main__":
    main()
