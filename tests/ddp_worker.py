"""Run by tests/test_distributed.py under torchrun (or directly, for one process).

Trains a tiny VQ autoencoder with vqlib.training.loop.fit and saves, per process, the codebook and
parameters it ends with: ``python ddp_worker.py OUT STEPS CHECKPOINT DATA_INIT [GAN]``. With GAN
= 1 it then trains a tiny VQGAN with its discriminator (``vqlib.training.gan.GANStep``) and saves
what each process ends with too.
"""

import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from vqlib.core import distributed
from vqlib.core.metrics import code_counts
from vqlib.losses.discriminator import PatchGAN, PatchGANConfig
from vqlib.losses.vqgan import VQGANLoss, VQGANLossConfig
from vqlib.quantizers.vector import EMAVectorQuantizer
from vqlib.tokenizers.vqgan import VQGAN, VQGANConfig
from vqlib.training.gan import GANStep
from vqlib.training.loop import TrainConfig, fit


@dataclass(frozen=True)
class TinyVQConfig:
    data_init: bool = True


class TinyVQ(nn.Module):
    def __init__(self, config: TinyVQConfig):
        super().__init__()
        self.config = config
        self.encoder = nn.Conv2d(1, 4, 3, padding=1)
        restart = 1.0 if config.data_init else 0.0
        self.quantizer = EMAVectorQuantizer(codebook_size=16, code_dim=4, beta=0.25, decay=0.9,
                                            data_init=config.data_init, restart_threshold=restart)
        self.decoder = nn.Conv2d(4, 1, 3, padding=1)

    def forward(self, x):
        out = self.quantizer(self.encoder(x))
        return self.decoder(out.z_q), out.loss


def loss_fn(model, batch):
    (x,) = batch
    x_hat, vq_loss = model(x)
    rec = F.mse_loss(x_hat, x)
    return {"loss": rec + vq_loss, "rec": rec, "vq": vq_loss}


def dataset() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.rand(64, 1, 6, 6, generator=g))


def run(out: Path, steps: int, checkpoint: str | None, data_init: bool) -> None:
    torch.manual_seed(0)
    model = TinyVQ(TinyVQConfig(data_init=data_init))
    config = TrainConfig(steps=steps, batch_size=8, lr=1e-2, log_every=2, checkpoint_every=3, seed=1)
    fit(model, loss_fn, dataset(), config, checkpoint=checkpoint, device="cpu", progress=False)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():  # codebook usage over the whole dataset, each process counting its shard
        (x,) = distributed.shard(dataset())[:]
        indices = model.quantizer(model.encoder(x)).indices
    state["counts"] = distributed.all_reduce_sum(code_counts(indices, 16))
    torch.save(state, out / f"rank{distributed.rank()}-of-{distributed.world_size()}.pt")


def run_gan(out: Path) -> None:
    """Four steps of a tiny VQGAN, the discriminator joining at step 2 (no perceptual term)."""
    torch.manual_seed(0)
    model = VQGAN(VQGANConfig(hidden=8, channel_mult=(1, 2), res_blocks=1, norm_groups=4, codebook_size=16,
                              code_dim=4, quantizer="ema"))
    criterion = VQGANLoss(VQGANLossConfig(perceptual_weight=0.0, disc_start=2),
                          PatchGAN(PatchGANConfig(width=4, n_layers=1)), None)
    images = TensorDataset(torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(0)))
    initial = [p.detach().clone() for p in criterion.discriminator.parameters()]
    fit(model, GANStep(criterion), images, TrainConfig(steps=4, batch_size=4), device="cpu", progress=False)
    state = {**model.state_dict(), **{f"discriminator.{k}": v for k, v in criterion.discriminator.named_parameters()}}
    state["discriminator_trained"] = torch.tensor(any(not torch.equal(a, b) for a, b in
                                                      zip(initial, criterion.discriminator.parameters())))
    torch.save(state, out / f"gan-rank{distributed.rank()}-of-{distributed.world_size()}.pt")


if __name__ == "__main__":
    out, steps, checkpoint, data_init = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"
    run(out, steps, None if checkpoint == "-" else checkpoint, data_init)
    if sys.argv[5:] == ["1"]:
        run_gan(out)
