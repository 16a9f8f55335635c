"""Train one of the book's models from the command line, on one process or on many.

    python scripts/train.py mnist-vqvae                          # one process
    torchrun --nproc_per_node=4 scripts/train.py mnist-vqvae     # four GPUs (or CPU processes)
    python scripts/train.py --list

The trained model lands in the checkpoint cache (``$VQLIB_CACHE``, default ``~/.cache/vqlib``),
where the chapters find it instead of training it again. An interrupted run resumes from its
last checkpoint when started again, with the same or another number of processes.
"""

from __future__ import annotations

import argparse
import importlib
import os

RECIPES = {  # name -> "module:function"; each function trains with vqlib.training.loop.fit and returns (model, history)
    "mnist-vae": "vqlib.recipes.ch01_vae:train_mnist_vae",
    "mnist-autoencoder": "vqlib.recipes.ch01_vae:train_mnist_autoencoder",
    "mnist-vqvae": "vqlib.recipes.ch02_vqvae:train_mnist_vqvae",
    "mnist-classifier": "vqlib.judges.classifier:train_mnist_classifier",
    "mnist-maskgit": "vqlib.recipes.ch07_maskgit:train_mnist_maskgit",  # chapter 7: class-conditional MaskGIT on VQ-VAE codes
    "mnist-codebooks": "vqlib.recipes.ch06_codebooks:train_mnist_codebooks",  # chapter 6: the table and the sweep over K
    "moving-mnist-video-vqvae": "vqlib.recipes.ch08_video_tokenizers:train_moving_mnist_tokenizer",  # chapter 8: 3D convolutions
    "moving-mnist-attention-vqvae": "vqlib.recipes.ch08_video_tokenizers:train_moving_mnist_attention_vqvae",  # chapter 8: (2+1)D
    "moving-mnist-frame-vqvae": "vqlib.recipes.ch08_video_tokenizers:train_moving_mnist_frame_vqvae",  # chapter 8: frame by frame
    "kth-video-vqvae": "vqlib.recipes.ch08_video_tokenizers:train_kth_tokenizer",  # chapter 8 in full: real video (KTH)
    "kth-video-prior": "vqlib.recipes.ch09_video_generation:train_kth_video_prior",  # chapter 9 in full: KTH, captioned
    "photo-vqvae2": "vqlib.recipes.ch04_vqvae2:train_photo_vqvae2",  # chapter 4: two levels of codes
    "photo-vqvae": "vqlib.recipes.ch04_vqvae2:train_photo_vqvae",  # chapter 4: one level, the same code bits
    "photo-vqgan": "vqlib.recipes.ch05_vqgan:train_photo_vqgan",  # chapter 5: two optimisers (training.gan.GANStep)
    "photo-vqgan-baseline": "vqlib.recipes.ch05_vqgan:train_photo_vqgan_baseline",  # chapter 5: VQ-VAE objective
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", nargs="?", choices=sorted(RECIPES), help="what to train")
    parser.add_argument("--profile", choices=("smoke", "quick", "full"),
                        help="compute profile (default: $VQLIB_PROFILE, else chosen from the hardware)")
    parser.add_argument("--list", action="store_true", help="list the recipes and exit")
    args = parser.parse_args()
    if args.list or args.recipe is None:
        print("\n".join(f"{name:20s} {target}" for name, target in sorted(RECIPES.items())))
        return
    if args.profile:
        os.environ["VQLIB_PROFILE"] = args.profile  # before vqlib reads it
    module, function = RECIPES[args.recipe].split(":")
    model, history = getattr(importlib.import_module(module), function)()

    from vqlib.core import distributed

    if distributed.is_main():
        print(f"{args.recipe}: {history.steps} steps, {history.seconds:.0f} s; last train loss "
              f"{history.series('loss')[1][-1]:.4g}; eval {history.eval[-1] if history.eval else {}}")


if __name__ == "__main__":
    main()
