"""How much the key/value cache speeds up GPT sampling: 256 tokens, with and without the cache.

Without the cache, step t runs the whole transformer on all t tokens so far (quadratic work in
the length); with it, step t runs it on the newest token only and attends to stored keys and
values. Both produce the same tokens (greedy decoding is compared exactly). The model is the
chapter-3 GPT of the ``quick`` profile (``GPTConfig.for_profile``) with K = 512 codes and room for
256 tokens.

Both paths run on one CPU thread by default: that compares the work each does, and a one-token
step is too small to share between threads anyway (on a busy machine a second thread mostly
waits for a core). Pass ``--threads 0`` to keep PyTorch's default.

Run: python benchmarks/gpt_cache_speed.py [--samples 8] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from vqlib.priors.gpt import GPT, GPTConfig

LENGTH = 256


def seconds(gpt: GPT, n: int, use_cache: bool) -> float:
    started = time.perf_counter()
    gpt.sample(n, LENGTH, temperature=1.0, use_cache=use_cache)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=8, help="sequences sampled at once (batch)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each; the median is reported")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads; 0 keeps PyTorch's default")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = GPTConfig.for_profile(vocab_size=512, block_size=LENGTH, profile="quick")
    gpt = GPT(config).eval()
    greedy = [gpt.sample(args.samples, 64, top_k=1, use_cache=use) for use in (True, False)]
    if not torch.equal(*greedy):  # checked on 64 tokens to save time
        raise AssertionError("cached and uncached greedy samples differ")
    seconds(gpt, args.samples, True)  # warm-up
    cached = statistics.median(seconds(gpt, args.samples, True) for _ in range(args.repeats))
    uncached = statistics.median(seconds(gpt, args.samples, False) for _ in range(args.repeats))
    print(f"GPT {config.n_layer} layers x {config.n_embd} wide, {args.samples} samples x {LENGTH} tokens, "
          f"{torch.get_num_threads()} thread(s), median of {args.repeats}: cached {cached:.2f} s, "
          f"uncached {uncached:.2f} s, speed-up {uncached / cached:.1f}x (greedy samples identical)")


if __name__ == "__main__":
    main()
