"""VQGAN's training step: the autoencoder and its discriminator, each with its own optimiser.

``GANStep(criterion)`` plugs a ``vqlib.losses.vqgan.VQGANLoss`` into ``vqlib.training.loop.fit``.
Each step computes the autoencoder's loss (pixel, perceptual, VQ and, after the warm-up,
λ·L_G), then, once the discriminator has joined (``disc_start``), the discriminator's hinge loss
on the same batch and the same (detached) reconstructions, and updates both networks. Each loss
updates only its own network: ``VQGANLoss`` freezes the discriminator for L_G and detaches x̂ for
L_D. Both optimisers are AdamW with the learning rate, betas and weight decay of the TrainConfig;
the discriminator's learning-rate schedule is stepped only when it trains, so it starts counting
at ``disc_start``. Gradients are clipped (``grad_clip``) for the autoencoder only. The checkpoint
keeps the discriminator, both optimisers and both schedules, and refuses to resume with another
loss config.

Left out: mixed precision (the step runs in float32 whatever ``config.amp`` says). Under torchrun
the step averages the gradients of both networks over the processes itself (DistributedDataParallel
cannot wrap a loss that differentiates twice for λ); λ and the discriminator's BatchNorm statistics
are those of each process's slice, and process 0's statistics are saved.

``pretrain_discriminator`` trains the discriminator alone, before the autoencoder: against fixed
reconstructions of a model that is already trained (a decoder about to be fine-tuned), so that its
first adversarial gradient is an informed one rather than a random network's.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn
from torch.utils.data import TensorDataset

from vqlib.core.device import to_device
from vqlib.losses.vqgan import VQGANLoss
from vqlib.training.loop import History, TrainConfig, fit
from vqlib.training.steps import Step, adamw, backward, check_finite_terms, lr_factor, update


class GANStep(Step):
    """One step of VQGAN's training: the autoencoder's update, then (after the warm-up) the discriminator's.

    Nothing is updated unless both losses and all gradients are finite. The logged terms are the
    autoencoder's (``"loss"``, ``"pixel"``, ``"vq"``, ``"perceptual"``, after the warm-up
    ``"g_loss"`` and ``"lambda"``) and the discriminator's (``"d_loss"``, ``"logits_real"``,
    ``"logits_fake"``).
    """

    def __init__(self, criterion: VQGANLoss) -> None:
        self.criterion = criterion
        self.meta = {"loss_config": dataclasses.asdict(criterion.config)}

    def start(self, model: nn.Module, config: TrainConfig, device: torch.device) -> None:
        self.model, self.grad_clip = model, config.grad_clip
        to_device(self.criterion, device).train()
        self.opt_g = adamw(model.parameters(), config)
        self.sched_g = torch.optim.lr_scheduler.LambdaLR(self.opt_g, lr_factor(config))
        self.disc = self.criterion.discriminator
        if self.disc is not None:
            self.opt_d = adamw(self.disc.parameters(), config)
            factor, disc_start = lr_factor(config), self.criterion.config.disc_start
            self.sched_d = torch.optim.lr_scheduler.LambdaLR(self.opt_d, lambda s: factor(s + disc_start))

    def __call__(self, batch: tuple, step: int) -> dict[str, torch.Tensor]:
        x = batch[0]
        terms = self.criterion.generator_terms(self.model, x, step)
        x_hat = terms.pop("x_hat")
        check_finite_terms(terms, step)
        backward(terms["loss"], self.opt_g, self.model.named_parameters(), step, average=True)
        adversarial = self.disc is not None and self.criterion.adversarial(step)
        if adversarial:  # the discriminator sees x̂ detached: the autoencoder's update cannot change it
            d_terms = self.criterion.discriminator_terms(x, x_hat)
            d_terms = {"d_loss": d_terms["loss"], "logits_real": d_terms["logits_real"],
                       "logits_fake": d_terms["logits_fake"]}
            check_finite_terms(d_terms, step)
            backward(d_terms["d_loss"], self.opt_d, self.disc.named_parameters(prefix="discriminator"), step,
                     average=True)
        update(self.opt_g, self.sched_g, self.model.parameters(), self.grad_clip)
        if adversarial:
            update(self.opt_d, self.sched_d)
            terms |= d_terms
        return {k: v.detach() for k, v in terms.items()}

    def state_dict(self) -> dict[str, Any]:
        state = {"optimizer": self.opt_g.state_dict(), "scheduler": self.sched_g.state_dict()}
        if self.disc is not None:
            state |= {"discriminator": self.disc.state_dict(), "optimizer_d": self.opt_d.state_dict(),
                      "scheduler_d": self.sched_d.state_dict()}
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.opt_g.load_state_dict(state["optimizer"])
        self.sched_g.load_state_dict(state["scheduler"])
        if self.disc is not None:
            self.disc.load_state_dict(state["discriminator"])
            self.opt_d.load_state_dict(state["optimizer_d"])
            self.sched_d.load_state_dict(state["scheduler_d"])


def pretrain_discriminator(criterion: VQGANLoss, real: torch.Tensor, fake: torch.Tensor, config: TrainConfig,
                           checkpoint: str | Path | None = None) -> History:
    """Train ``criterion``'s discriminator alone, with its hinge loss, on real and fake crops (N, C, H, W).

    fake[i] is a fixed reconstruction of real[i] (from the model the adversarial training will start
    from); every batch has the same crops both ways, scored in one batch (``VQGANLoss.scores``).
    ``fit`` runs it: ``config.steps`` steps of AdamW, cached in ``checkpoint``. Returns the History
    (``"loss"``, ``"logits_real"``, ``"logits_fake"``); the discriminator is trained in place.
    """
    if criterion.discriminator is None:
        raise ValueError("pretrain_discriminator needs a VQGANLoss with a discriminator (disc_weight > 0)")
    if not (torch.is_tensor(real) and torch.is_tensor(fake)) or real.shape != fake.shape or real.dim() != 4:
        shapes = [tuple(t.shape) if torch.is_tensor(t) else type(t).__name__ for t in (real, fake)]
        raise ValueError(f"real and fake must be image batches (N, C, H, W) of one shape, got {shapes[0]} and "
                         f"{shapes[1]}")
    return fit(criterion.discriminator, lambda disc, batch: criterion.discriminator_terms(*batch),
               TensorDataset(real, fake.detach()), config, checkpoint=checkpoint)
