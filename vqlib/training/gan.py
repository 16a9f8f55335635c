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
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import torch
from torch import nn

from vqlib.core.device import to_device
from vqlib.losses.vqgan import VQGANLoss
from vqlib.training.loop import TrainConfig
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
