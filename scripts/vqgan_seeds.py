"""Chapter 5's stability check: both decoder fine-tunes with any seeds, and the spread of their validation PSNR.

    VQLIB_PROFILE=quick python scripts/vqgan_seeds.py [--seeds 0 1 2]

Each seed changes the discriminator's initialisation and the order of the batches (``TrainConfig.seed``)
of the two fine-tunes of the shared VQ-VAE's decoder (squared error, and the VQGAN objective), trained
with ``vqlib.recipes.ch05_vqgan``'s recipes (and cached like them; the chapter runs seeds 0, 1 and 2
and scores them with the realism judges). The script fails if any run met NaN/inf (the training loop
stops on them) or ended with non-finite weights, and prints the validation PSNR of every run, with
its mean and standard deviation over the seeds.
"""

from __future__ import annotations

import argparse
import statistics

import torch

import vqlib
from vqlib.recipes.ch05_vqgan import train_photo_vqgan, train_photo_vqgan_baseline

METRICS = ("psnr",)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    print(vqlib.stamp(seed=args.seeds[0]))
    results: dict[str, list[dict[str, float]]] = {"squared error": [], "VQGAN objective": []}
    for seed in args.seeds:
        for name, recipe in (("squared error", train_photo_vqgan_baseline), ("VQGAN objective", train_photo_vqgan)):
            model, history = recipe(seed=seed)
            finite = all(torch.isfinite(p).all() for p in model.parameters())
            logged = all(torch.isfinite(torch.tensor(v)).item() for r in history.train for v in r.values())
            if not (finite and logged and history.stopped == "steps"):
                raise SystemExit(f"{name}, seed {seed}: non-finite weights or losses, or stopped early")
            scores = history.eval[-1]
            results[name].append(scores)
            print(f"seed {seed} {name:>17}: " + ", ".join(f"{k} {scores[k]:.4f}" for k in METRICS), flush=True)
    print()
    for name, runs in results.items():
        summary = ", ".join(f"{k} {statistics.mean(r[k] for r in runs):.4f} ± "
                            f"{statistics.stdev(r[k] for r in runs) if len(runs) > 1 else 0.0:.4f}" for k in METRICS)
        print(f"{name:>17} over {len(runs)} seeds: {summary}")


if __name__ == "__main__":
    main()
