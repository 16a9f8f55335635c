"""Run by tests/test_resume.py in a subprocess (killed on purpose), under torchrun, or imported.

Trains the book's default smoke VQ-VAE (``vqlib.tokenizers.vqvae.train_mnist_vqvae`` spelled out,
so that a run can stop cleanly at ``stop_at``: an EMA codebook with data initialisation and random
dead-code restarts) with a checkpoint every ``EVERY`` steps, and saves the state it ends with:

    python resume_worker.py STEPS OUT CHECKPOINT STOP_AT [OUT CHECKPOINT STOP_AT ...]

One run per (OUT, CHECKPOINT, STOP_AT), one after the other (one torchrun launch, several runs);
``STOP_AT`` is ``-`` for the whole run. With ``VQLIB_TEST_SLOW_SAVE=1`` every file rename waits a
moment first, so that a test can kill the process while a checkpoint is half saved (the
temporary file written, not yet renamed).
"""

import os
import sys
import time
from pathlib import Path

import torch

from vqlib.core import distributed
from vqlib.core.profile import seed_everything
from vqlib.data.mnist import mnist
from vqlib.recipes.ch02_vqvae import vqvae_train_config
from vqlib.tokenizers.vqvae import VQVAE, VQVAEConfig, evaluate_vqvae, vqvae_loss
from vqlib.training.loop import fit

EVERY = 7  # checkpoint interval, in steps


def run(out: Path, checkpoint: Path, steps: int, stop_at: int | None, loss_fn=vqvae_loss) -> dict[str, torch.Tensor]:
    """Train (or resume) the smoke recipe; save and return the final state dict."""
    config = VQVAEConfig.for_profile("smoke", in_channels=1)
    train_config = vqvae_train_config("smoke", steps=steps, checkpoint_every=EVERY)
    seed_everything(train_config.seed)
    model = VQVAE(config)
    test = mnist("test", profile="smoke")
    fit(model, loss_fn, mnist("train", profile="smoke"), train_config, eval_fn=lambda m: evaluate_vqvae(m, test),
        checkpoint=checkpoint, device="cpu", progress=False, stop_at=stop_at)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    if distributed.is_main():
        torch.save(state, out)
    return state


def slow_renames() -> None:
    real = os.replace

    def replace(src, dst, *args, **kwargs):
        time.sleep(0.3)
        return real(src, dst, *args, **kwargs)

    os.replace = replace


if __name__ == "__main__":
    if os.environ.get("VQLIB_TEST_SLOW_SAVE") == "1":
        slow_renames()
    steps, jobs = int(sys.argv[1]), sys.argv[2:]
    for out, checkpoint, stop_at in zip(jobs[::3], jobs[1::3], jobs[2::3]):
        run(Path(out), Path(checkpoint), steps, None if stop_at == "-" else int(stop_at))
