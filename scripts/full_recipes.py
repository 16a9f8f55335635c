"""Every model the book trains, at its ``full`` size: one table for the CPU dry run and the GPU check.

``RECIPES`` maps a name to a function that builds a ``FullRun``: the model at full size (its
``Config.for_profile(profile="full")``), the recipe's full ``TrainConfig`` (its batch size is the
full batch), random data of the full shape (the datasets ``full`` would download are replaced by
random tensors of their shape), the loss, and one sampling or encoding call.

- ``tests/test_full_dry_run.py`` builds each, runs two training steps and the call on the CPU at
  batch 2, and reports parameters, peak CPU memory and an estimate of GPU memory at the full batch.
- ``scripts/gpu_check.py`` trains each at its full batch on CUDA and measures throughput and peak memory.

Recipes move between modules while the book grows: the imports below are the one place that says
where each piece lives, and a budget that only a chapter states is copied here next to its name.
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import math
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import TensorDataset

from vqlib.core.device import to_device
from vqlib.core.inference import evaluating
from vqlib.judges.classifier import Classifier, ClassifierConfig, classifier_loss, mnist_classifier_train_config
from vqlib.judges.photonet import PhotoNet, PhotoNetConfig, photo_net_loss, photo_net_train_config
from vqlib.judges.tracker import Tracker, TrackerConfig, logits_to_states, tracker_loss, tracker_train_config
from vqlib.losses.discriminator import PatchGAN, PatchGANConfig
from vqlib.losses.perceptual import PerceptualLoss
from vqlib.priors.base import prior_loss
from vqlib.priors.gpt import GPT, GPTConfig
from vqlib.priors.maskgit import MaskGIT, maskgit_loss
from vqlib.priors.pixelcnn import PixelCNN, PixelCNNConfig
from vqlib.priors.text import CaptionTokenizer
from vqlib.priors.video_prior import VideoPrior, VideoPriorConfig, video_prior_loss
from vqlib.losses.vqgan import VQGANLoss
from vqlib.quantizers.factory import make_quantizer
from vqlib.recipes.ch01_vae import vae_train_config
from vqlib.recipes.ch02_vqvae import vqvae_train_config
from vqlib.recipes.ch04_vqvae2 import photo_train_config, prior_config, prior_train_config
from vqlib.recipes.ch05_vqgan import OBJECTIVES, fine_tune_train_config, image_size, vqgan_train_config
from vqlib.recipes.ch06_codebooks import COMPARED, comparison_model, comparison_training
from vqlib.recipes.ch07_maskgit import mnist_maskgit_config, mnist_maskgit_train_config
from vqlib.recipes.ch08_video_tokenizers import (TIME_MIXING, equal_bits_configs, time_mixing_configs,
                                                 time_mixing_train_config, video_train_config)
from vqlib.recipes.ch09_video_generation import KTH_TOKENIZER, superres_train_config, video_prior_train_config
from vqlib.recipes.ch10_stories import (caption_words, paint_condition, panel_tokenizer_config,
                                        panel_tokenizer_train_config, story_prior_train_config)
from vqlib.data.stories import StoryConfig, sheet_views
from vqlib.judges.panels import (InstanceJudge, InstanceJudgeConfig, PanelJudge, PanelJudgeConfig,
                                 instance_judge_loss, judge_train_config, panel_judge_loss)
from vqlib.priors.story_prior import StoryPrior, StoryPriorConfig, story_prior_loss
from vqlib.tokenizers.conditional import ConditionalVQVAE, conditional_vqvae_loss
from vqlib.tokenizers.superres import SuperResConfig, VideoSuperRes, superres_loss
from vqlib.data.kth import CAPTIONS as KTH_ACTION_CAPTIONS
from vqlib.tokenizers.vae import VAE, Autoencoder, VAEConfig, negative_elbo, reconstruction_loss
from vqlib.tokenizers.video import FrameVQVAE, VideoVQVAE, VideoVQVAEConfig
from vqlib.tokenizers.vqgan import VQGAN, FrozenCodes, VQGANConfig
from vqlib.tokenizers.vqvae import VQVAE, VQVAEConfig, vqvae_loss
from vqlib.tokenizers.vqvae2 import VQVAE2, BottomPrior, VQVAE2Config, equal_bits_codebook_size
from vqlib.training.gan import GANStep
from vqlib.training.loop import History, TrainConfig, fit

FULL = "full"

# Budgets that only a chapter states (copied; keep them equal to the chapter's ``full`` values)
CH3_PRIOR_TRAINING = TrainConfig(steps=8000, batch_size=128, lr=1e-3, warmup_steps=200, cosine=True,
                                 log_every=100, eval_every=1000)  # chapters/03_priors.md, PRIOR_TRAINING
CH8_CLIP = dict(frames=8, size=(24, 12), channels=3, hidden=32, res_hidden=16, res_blocks=1, codebook_size=64,
                code_dim=16)  # chapters/08_video_tokenizers.md, cfg_clip
CH8_CLIP_TRAINING = dict(steps=2000, batch_size=8)  # chapters/08_video_tokenizers.md, the clip's budget
CH9_T, CH9_S, CH9_DIGITS = 16, 32, 2  # chapters/09_video_generation.md: frames, side, digits per clip
CH9_SCALE = 2  # ... SCALE: the super-resolution stage's factor
CH9_TOKENIZER = dict(time_downsample=2, space_downsample=8, codebook_size=1024)  # ... TOKENIZER
CH9_TOKENIZER_STEPS = 20_000  # ... TOKENIZER_STEPS
CH9_PRIOR_TRAINING = TrainConfig(steps=20_000, batch_size=64, lr=1e-3, warmup_steps=500, cosine=True,
                                 log_every=200)  # ... PRIOR_TRAINING
MNIST_K, MNIST_L = VQVAEConfig.for_profile(FULL).codebook_size, 7 * 7  # the MNIST VQ-VAE's codes: K, 7 x 7


@dataclass
class FullRun:
    """One recipe at full size. ``example(n)`` is a random training batch of n at the full shape."""

    model: nn.Module
    train_config: TrainConfig  # the recipe's full budget; batch_size is the full batch
    example: Callable[[int], tuple]
    loss_fn: Callable[[nn.Module, tuple], dict] | None  # what one training step minimises
    infer: Callable[[nn.Module, tuple], Any]  # one sampling or encoding call on a batch (in eval mode)
    cpu_infer: Callable[[nn.Module, tuple], Any] | None = None  # a shorter call of the same code, for the CPU
    unit: str = "images"  # what throughput counts: images, clips or tokens
    per_example: int = 1  # units per example (tokens per sequence)
    criterion: nn.Module | None = None  # VQGAN: the loss module (discriminator and perceptual network)
    amp: bool = True  # whether the recipe's loop uses bfloat16 autocast on CUDA

    def attention_dropout(self) -> bool:
        """Whether attention with dropout trains here: on the CPU it keeps (T, T) attention matrices for the
        backward pass, which CUDA's fused attention kernels recompute instead."""
        return any(type(m).__name__.endswith("Attention") and getattr(m, "dropout", 0) > 0
                   for module in self.modules() for m in module.modules())

    def modules(self) -> list[nn.Module]:
        return [self.model] + ([self.criterion] if self.criterion is not None else [])

    def parameters(self) -> dict[str, int]:
        """Counts: trained parameters (each has a gradient and two Adam states), frozen ones, buffer elements."""
        params = [p for m in self.modules() for p in m.parameters()]
        return {"trained": sum(p.numel() for p in params if p.requires_grad),
                "frozen": sum(p.numel() for p in params if not p.requires_grad),
                "buffers": sum(b.numel() for m in self.modules() for b in m.buffers())}


def _images(n: int, channels: int, size: int | tuple[int, int]) -> torch.Tensor:
    h, w = (size, size) if isinstance(size, int) else size
    return torch.rand(n, channels, h, w)


def _labels(n: int, classes: int) -> torch.Tensor:
    return torch.randint(classes, (n,))


def _clips(n: int, config: VideoVQVAEConfig) -> torch.Tensor:
    return torch.rand(n, config.frames, config.channels, *config.frame_size)  # (n, T, C, H, W)


def _roundtrip(model: nn.Module, batch: tuple) -> torch.Tensor:
    """Encode to codes and decode them: what the chapters do with a trained tokenizer."""
    return model.decode(model.encode(batch[0]))


# ----------------------------------------------------------------------------- chapters 1-3: MNIST

def vae() -> FullRun:
    return FullRun(VAE(VAEConfig.for_profile(FULL, latent_dim=16)), vae_train_config(FULL),
                   lambda n: (_images(n, 1, 28),), lambda m, b: negative_elbo(m, b[0])._asdict(),
                   lambda m, b: m.sample(len(b[0])))


def autoencoder() -> FullRun:
    return FullRun(Autoencoder(VAEConfig.for_profile(FULL, latent_dim=16)), vae_train_config(FULL),
                   lambda n: (_images(n, 1, 28),), lambda m, b: {"loss": reconstruction_loss(m, b[0])},
                   lambda m, b: m.decode(m.encode(b[0])))


def mnist_vqvae() -> FullRun:
    return FullRun(VQVAE(VQVAEConfig.for_profile(FULL, in_channels=1)), vqvae_train_config(FULL),
                   lambda n: (_images(n, 1, 28),), vqvae_loss, _roundtrip)


def mnist_classifier() -> FullRun:
    return FullRun(Classifier(ClassifierConfig.for_profile(FULL)), mnist_classifier_train_config(FULL),
                   lambda n: (_images(n, 1, 28), _labels(n, 10)), classifier_loss, lambda m, b: m(b[0]).argmax(1))


def mnist_pixelcnn() -> FullRun:
    return FullRun(PixelCNN(PixelCNNConfig.for_profile(MNIST_K, profile=FULL)), CH3_PRIOR_TRAINING,
                   lambda n: (torch.randint(MNIST_K, (n, 7, 7)),), prior_loss,
                   lambda m, b: m.sample(len(b[0]), (7, 7)), unit="tokens", per_example=MNIST_L)


def mnist_gpt() -> FullRun:
    return FullRun(GPT(GPTConfig.for_profile(MNIST_K, MNIST_L, profile=FULL, num_classes=10)), CH3_PRIOR_TRAINING,
                   lambda n: (torch.randint(MNIST_K, (n, MNIST_L)), _labels(n, 10)), prior_loss,
                   lambda m, b: m.sample(len(b[0]), MNIST_L, cond=b[1]), unit="tokens", per_example=MNIST_L)


# ----------------------------------------------------------------------------- chapter 4: VQ-VAE-2 on photographs

PHOTO = 128  # the side of chapter 4's full-profile photographs (vqlib.data.photos.photos)


def photo_vqvae2() -> FullRun:
    return FullRun(VQVAE2(VQVAE2Config.for_profile(FULL)), photo_train_config(FULL),
                   lambda n: (_images(n, 3, PHOTO),), vqvae_loss, lambda m, b: m.decode(m.encode(b[0])))


def photo_vqvae() -> FullRun:
    two_level = VQVAE2Config.for_profile(FULL)
    config = dataclasses.replace(two_level.part(3, two_level.code_dim, downsample=4),
                                 codebook_size=equal_bits_codebook_size(two_level))
    return FullRun(VQVAE(config), photo_train_config(FULL), lambda n: (_images(n, 3, PHOTO),), vqvae_loss, _roundtrip)


def _photo_codes() -> tuple[int, int, tuple[int, int], tuple[int, int]]:
    """Kt, Kb and the top and bottom map shapes of chapter 4's full model."""
    config = VQVAE2Config.for_profile(FULL)
    return config.codebook_size, config.bottom_codebook_size, (PHOTO // 8,) * 2, (PHOTO // 4,) * 2


def photo_top_prior() -> FullRun:
    k, _, top, _ = _photo_codes()
    length = math.prod(top)
    return FullRun(GPT(prior_config(k, length, FULL)), prior_train_config(FULL),
                   lambda n: (torch.randint(k, (n, length)),), prior_loss,
                   lambda m, b: m.sample(len(b[0]), length), unit="tokens", per_example=length)


def photo_bottom_prior() -> FullRun:
    k_top, k_bottom, top, bottom = _photo_codes()
    config = prior_config(k_top + k_bottom, 6 * math.prod(top), FULL)  # the top map, then 5 tokens per top code
    # on the CPU, the whole top map and the first two rows of bottom codes (one row of top cells, 5 tokens each):
    # the key-value cache grows by concatenation, so the CPU spends minutes on all 1024 (training runs the full context)
    return FullRun(BottomPrior(config, top, (k_top, k_bottom)), prior_train_config(FULL),
                   lambda n: (torch.randint(k_bottom, (n, *bottom)), torch.randint(k_top, (n, *top))),
                   lambda m, b: {"loss": m.nll(b[0], b[1]).mean()}, lambda m, b: m.sample(b[1]),
                   unit="tokens", per_example=math.prod(bottom),
                   cpu_infer=lambda m, b: m.gpt.sample(len(b[1]), math.prod(top) + 5 * top[1],
                                                       prefix=b[1].flatten(1) + k_bottom))


def photo_baseline_prior() -> FullRun:
    k, length = equal_bits_codebook_size(VQVAE2Config.for_profile(FULL)), math.prod(_photo_codes()[3])
    return FullRun(GPT(prior_config(k, length, FULL)), prior_train_config(FULL),
                   lambda n: (torch.randint(k, (n, length)),), prior_loss,
                   lambda m, b: m.sample(len(b[0]), length), unit="tokens", per_example=length,
                   cpu_infer=lambda m, b: m.sample(len(b[0]), 2 * PHOTO // 4))  # the first two rows


# ----------------------------------------------------------------------------- chapter 5: VQGAN

def photo_net() -> FullRun:
    size = image_size(FULL)  # vqlib.judges.photonet.train_photo_net: Flowers-102 and its 102 classes
    config = PhotoNetConfig.for_profile(FULL)
    return FullRun(PhotoNet(config), photo_net_train_config(FULL),
                   lambda n: (_images(n, 3, size), _labels(n, config.num_classes)), photo_net_loss,
                   lambda m, b: m.embed(b[0]))


def photo_vqgan_vqvae() -> FullRun:
    size = image_size(FULL)  # vqlib.recipes.ch05_vqgan.train_photo_vqvae: squared error + VQ loss
    criterion = VQGANLoss(OBJECTIVES["mse"], None, None)

    def loss_fn(model: VQGAN, batch: tuple) -> dict:
        terms = criterion.generator_terms(model, batch[0], step=0)
        terms.pop("x_hat")
        return terms

    return FullRun(VQGAN(VQGANConfig.for_profile(FULL)), vqgan_train_config(FULL), lambda n: (_images(n, 3, size),),
                   loss_fn, _roundtrip, criterion=criterion, amp=False)  # as the recipe: GANStep, in float32


def photo_vqgan() -> FullRun:
    # vqlib.recipes.ch05_vqgan.fine_tune_decoder(..., "vqgan"): the decoder alone, the discriminator from step 0
    objective = OBJECTIVES["vqgan"]  # as the recipe: a perceptual network only if its term is on
    perceptual = PerceptualLoss(PhotoNet(PhotoNetConfig.for_profile(FULL))) if objective.perceptual_weight > 0 else None
    criterion = VQGANLoss(objective, PatchGAN(PatchGANConfig.for_profile(FULL)), perceptual)

    def loss_fn(model: VQGAN, batch: tuple) -> dict:  # both networks' losses of one step, for the memory probe
        terms = criterion.generator_terms(model, batch[0], step=0)
        d_terms = criterion.discriminator_terms(batch[0], terms.pop("x_hat"))
        return {**terms, "loss": terms["loss"] + d_terms["loss"]}

    size = image_size(FULL)
    return FullRun(FrozenCodes(VQGANConfig.for_profile(FULL)), fine_tune_train_config(FULL),
                   lambda n: (_images(n, 3, size),), loss_fn, _roundtrip, criterion=criterion, amp=False)


# ----------------------------------------------------------------------------- chapters 6-7: codebooks, MaskGIT

def mnist_codebook(name: str) -> FullRun:
    kind, options = COMPARED[name]
    config = VQVAEConfig.for_profile(FULL, in_channels=1, **comparison_model(FULL))
    train_config = vqvae_train_config(FULL, **comparison_training(FULL))
    model = VQVAE(config, quantizer=make_quantizer(kind, config.code_dim, **options))
    return FullRun(model, train_config, lambda n: (_images(n, 1, 28),), vqvae_loss, _roundtrip)


def mnist_maskgit() -> FullRun:
    model = MaskGIT(mnist_maskgit_config(MNIST_K, MNIST_L, FULL))
    return FullRun(model, mnist_maskgit_train_config(FULL),
                   lambda n: (torch.randint(MNIST_K, (n, MNIST_L)), _labels(n, 10)), maskgit_loss,
                   lambda m, b: m.sample(len(b[0]), b[1]), unit="tokens", per_example=MNIST_L)


# ----------------------------------------------------------------------------- chapters 8-9: video

def video_tokenizer(kind: str) -> FullRun:
    config = equal_bits_configs(FULL)[kind]
    model = FrameVQVAE(config) if kind == "frame" else VideoVQVAE(config)
    return FullRun(model, video_train_config(FULL), lambda n: (_clips(n, config),), vqvae_loss, _roundtrip,
                   unit="clips")


def time_mixing_tokenizer(where: str) -> FullRun:
    config = time_mixing_configs(FULL)[where]
    return FullRun(VideoVQVAE(config), time_mixing_train_config(FULL), lambda n: (_clips(n, config),), vqvae_loss,
                   _roundtrip, unit="clips")


def skimage_clip_tokenizer() -> FullRun:
    config = VideoVQVAEConfig.for_profile(FULL, **CH8_CLIP)
    return FullRun(VideoVQVAE(config), video_train_config(FULL, **CH8_CLIP_TRAINING),
                   lambda n: (_clips(n, config),), vqvae_loss, _roundtrip, unit="clips")


def ch9_tokenizer_config() -> VideoVQVAEConfig:
    return VideoVQVAEConfig.for_profile(FULL, frames=CH9_T, size=CH9_S, channels=1, **CH9_TOKENIZER)


def moving_mnist_tokenizer() -> FullRun:
    config = ch9_tokenizer_config()
    return FullRun(VideoVQVAE(config), video_train_config(FULL, steps=CH9_TOKENIZER_STEPS),
                   lambda n: (_clips(n, config),), vqvae_loss, _roundtrip, unit="clips")


def _states(n: int) -> torch.Tensor:
    """Random tracker targets: CH9_DIGITS present classes per clip, each with a heading 1..4."""
    states = torch.zeros(n, 10, dtype=torch.long)
    for row in states:
        row[torch.randperm(10)[:CH9_DIGITS]] = torch.randint(1, 5, (CH9_DIGITS,))
    return states


def tracker() -> FullRun:
    config = TrackerConfig.for_profile(CH9_T, CH9_S, num_digits=CH9_DIGITS, profile=FULL)
    return FullRun(Tracker(config), tracker_train_config(FULL),
                   lambda n: (torch.rand(n, CH9_T, 1, CH9_S, CH9_S), _states(n)), tracker_loss,
                   lambda m, b: logits_to_states(m(b[0]), CH9_DIGITS), unit="clips")


def superres() -> FullRun:
    tokenizer = ch9_tokenizer_config()
    config = SuperResConfig.for_profile(tokenizer.code_dim, tokenizer.time_downsample, tokenizer.space_downsample,
                                        scale=CH9_SCALE, profile=FULL)
    t, h, w = tokenizer.latent_shape
    big = CH9_SCALE * CH9_S

    def example(n: int) -> tuple:
        return (torch.rand(n, CH9_T, 1, CH9_S, CH9_S), torch.randn(n, tokenizer.code_dim, t, h, w),
                torch.rand(n, CH9_T, 1, big, big))

    return FullRun(VideoSuperRes(config), superres_train_config(FULL), example, superres_loss,
                   lambda m, b: m(b[0], b[1]), unit="clips")


CAPTIONS = CaptionTokenizer.fit(["a 0 moves left while a 1 moves right", "a 2 moves up while a 3 moves down",
                                 "a 4 moves left while a 5 moves up", "a 6 moves down while a 7 moves right",
                                 "an 8 moves up while a 9 moves left"])  # the vocabulary of the clips' captions


def video_prior() -> FullRun:
    latent = ch9_tokenizer_config().latent_shape
    k = CH9_TOKENIZER["codebook_size"]
    model = VideoPrior(VideoPriorConfig.for_profile(k, latent, CAPTIONS, profile=FULL))
    captions = ["a 3 moves left while an 8 moves up", "a 1 moves down while a 7 moves right"]

    def example(n: int) -> tuple:
        return torch.randint(k, (n, *latent)), CAPTIONS.encode([captions[i % 2] for i in range(n)])

    return FullRun(model, CH9_PRIOR_TRAINING, example, video_prior_loss,
                   lambda m, b: m.sample(len(b[0]), captions=[captions[i % 2] for i in range(len(b[0]))]),
                   unit="tokens", per_example=math.prod(latent))


def kth_tokenizer_config() -> VideoVQVAEConfig:
    """Chapter 9's KTH tokenizer in full: chapter 8's 3D tokenizer at KTH's clip size, chapter 9's code grid."""
    return equal_bits_configs(FULL, **KTH_TOKENIZER)["3d"]


def kth_prior_tokenizer() -> FullRun:
    config = kth_tokenizer_config()
    return FullRun(VideoVQVAE(config), video_train_config(FULL), lambda n: (_clips(n, config),), vqvae_loss,
                   _roundtrip, unit="clips")


KTH_CAPTIONS = CaptionTokenizer.fit(list(KTH_ACTION_CAPTIONS.values()))  # "a person boxes", ...


def kth_video_prior() -> FullRun:
    latent = kth_tokenizer_config().latent_shape
    k = kth_tokenizer_config().codebook_size
    model = VideoPrior(VideoPriorConfig.for_profile(k, latent, KTH_CAPTIONS, profile=FULL))
    captions = list(KTH_ACTION_CAPTIONS.values())

    def example(n: int) -> tuple:
        return torch.randint(k, (n, *latent)), KTH_CAPTIONS.encode([captions[i % len(captions)] for i in range(n)])

    return FullRun(model, video_prior_train_config(FULL), example, video_prior_loss,
                   lambda m, b: m.sample(len(b[0]), captions=[captions[i % len(captions)] for i in range(len(b[0]))]),
                   unit="tokens", per_example=math.prod(latent))


# ----------------------------------------------------------------------------- chapter 10: stories

CH10 = StoryConfig.for_profile(FULL)


def story_tokenizer() -> FullRun:
    config = panel_tokenizer_config(CH10, FULL)

    def example(n: int) -> tuple:  # ink layer, what to paint (RGB, style one-hot), the painted panel
        paint = paint_condition(CH10, _labels(n, len(CH10.colours)), _labels(n, len(CH10.styles)))
        return _images(n, 1, CH10.side), paint, _images(n, 3, CH10.side)

    return FullRun(ConditionalVQVAE(config), panel_tokenizer_train_config(FULL), example, conditional_vqvae_loss,
                   lambda m, b: m.decode(m.encode(b[0]), b[1]))


def story_prior() -> FullRun:
    tokenizer = panel_tokenizer_config(CH10, FULL)
    grid = (CH10.side // tokenizer.downsample,) * 2
    k, words, views = tokenizer.codebook_size, caption_words(CH10), len(sheet_views(CH10))
    model = StoryPrior(StoryPriorConfig.for_profile(k, grid, views, len(CH10.styles), words.words, words.length,
                                                    profile=FULL))
    captions = ["a large red seven at the top left", "a small blue two at the bottom right"]

    def example(n: int) -> tuple:
        return (torch.randint(k, (n, *grid)), _labels(n, len(CH10.styles)),
                words.encode([captions[i % 2] for i in range(n)]), torch.randint(k, (n, views, *grid)))

    return FullRun(model, story_prior_train_config(FULL), example, story_prior_loss,
                   lambda m, b: m.sample(b[1], b[2], b[3], guidance=(2.0, 1.0, 1.0)),
                   unit="tokens", per_example=grid[0] * grid[1])


def panel_judge() -> FullRun:
    config = PanelJudgeConfig.for_profile(len(CH10.colours), len(CH10.styles), FULL)

    def example(n: int) -> tuple:
        return (_images(n, 3, CH10.side), *(_labels(n, c) for c in config.classes().values()))

    return FullRun(PanelJudge(config), judge_train_config(FULL), example, panel_judge_loss,
                   lambda m, b: m(b[0])["digit"])


def instance_judge() -> FullRun:
    def example(n: int) -> tuple:
        return _images(n, 3, CH10.side), _images(n, 3, CH10.side), torch.randint(2, (n,)).float()

    return FullRun(InstanceJudge(InstanceJudgeConfig.for_profile(FULL)), judge_train_config(FULL), example,
                   instance_judge_loss, lambda m, b: m(b[0], b[1]))


RECIPES: dict[str, Callable[[], FullRun]] = {  # name -> builder; scripts/train.py's names where it has one
    "mnist-vae": vae,  # chapter 1
    "mnist-autoencoder": autoencoder,
    "mnist-vqvae": mnist_vqvae,  # chapter 2
    "mnist-classifier": mnist_classifier,  # chapter 3
    "ch3-pixelcnn": mnist_pixelcnn,
    "ch3-gpt-class": mnist_gpt,  # chapter 7's GPT is the same network
    "photo-vqvae2": photo_vqvae2,  # chapter 4
    "photo-vqvae": photo_vqvae,
    "photo-top-prior": photo_top_prior,
    "photo-bottom-prior": photo_bottom_prior,
    "photo-baseline-prior": photo_baseline_prior,
    "photonet": photo_net,  # chapter 5
    "photo-vqgan-vqvae": photo_vqgan_vqvae,
    "photo-vqgan": photo_vqgan,
    **{f"codebooks-{name}": (lambda name=name: mnist_codebook(name)) for name in COMPARED},  # chapter 6
    "mnist-maskgit": mnist_maskgit,  # chapter 7
    "moving-mnist-video-vqvae": lambda: video_tokenizer("3d"),  # chapter 8
    "moving-mnist-attention-vqvae": lambda: video_tokenizer("attention"),
    "moving-mnist-frame-vqvae": lambda: video_tokenizer("frame"),
    **{f"ch8-time-mixing-{where}": (lambda where=where: time_mixing_tokenizer(where)) for where in TIME_MIXING},
    "ch8-skimage-clip": skimage_clip_tokenizer,
    "ch9-tokenizer": moving_mnist_tokenizer,  # chapter 9
    "ch9-tracker": tracker,
    "ch9-video-prior": video_prior,
    "ch9-superres": superres,
    "kth-prior-tokenizer": kth_prior_tokenizer,  # chapters 8-9 in full: real video
    "kth-video-prior": kth_video_prior,
    "ch10-panel-tokenizer": story_tokenizer,  # chapter 10
    "ch10-story-prior": story_prior,
    "ch10-panel-judge": panel_judge,
    "ch10-instance-judge": instance_judge,
}


# ----------------------------------------------------------------------------- running and measuring

def train_steps(run: FullRun, steps: int, batch_size: int, device: torch.device | str) -> History:
    """``steps`` steps of the recipe's own training loop on random data of ``batch_size`` examples."""
    config = dataclasses.replace(run.train_config, steps=steps, batch_size=batch_size, log_every=1, eval_every=0,
                                 max_seconds=None, checkpoint_every=10**9)
    data = TensorDataset(*run.example(batch_size))
    step = GANStep(run.criterion) if run.criterion is not None else run.loss_fn  # VQGAN: two optimisers
    return fit(run.model, step, data, config, device=device, progress=False)


@torch.no_grad()
def infer(run: FullRun, batch: tuple, device: torch.device | str, cpu: bool = False) -> Any:
    """The recipe's sampling or encoding call on ``batch`` in eval mode (``cpu``: its shorter CPU version)."""
    call = run.cpu_infer if cpu and run.cpu_infer is not None else run.infer
    with evaluating(run.model):
        return call(run.model, to_device(batch, device))


class SavedActivations:
    """The peak of the bytes that autograd keeps for the backward pass while the block runs: every
    tensor saved by a forward pass, each storage once, parameters and buffers of ``modules`` excluded,
    counted from when it is saved until it is freed (``with SavedActivations(modules) as a: ...; a.peak``)."""

    def __init__(self, modules: list[nn.Module]) -> None:
        self.own = {t.untyped_storage().data_ptr() for m in modules for t in [*m.parameters(), *m.buffers()]}
        self.live: dict[int, list[int]] = {}  # storage pointer -> [bytes, tensors saved from it and alive]
        self.bytes = self.peak = 0

    def _release(self, pointer: int) -> None:
        entry = self.live[pointer]
        entry[1] -= 1
        if entry[1] == 0:
            self.bytes -= entry[0]
            del self.live[pointer]

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        pointer = storage.data_ptr()
        if pointer in self.own:
            return t
        if pointer not in self.live:
            self.live[pointer] = [storage.nbytes(), 0]
            self.bytes += storage.nbytes()
            self.peak = max(self.peak, self.bytes)
        self.live[pointer][1] += 1
        weakref.finalize(t, self._release, pointer)
        return t

    def __enter__(self) -> "SavedActivations":
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)


def estimated_gpu_bytes(counts: dict[str, int], activations_per_example: float, batch_size: int) -> float:
    """float32 weights, gradients and two AdamW moments (16 bytes per trained parameter), float32 frozen
    weights and buffers (4 bytes), plus the saved activations per example times the full batch.
    An estimate: it leaves out the CUDA context, workspaces, the allocator's rounding and the
    transient peak inside the backward pass, and bfloat16 autocast stores some activations in half the bytes."""
    return 16 * counts["trained"] + 4 * (counts["frozen"] + counts["buffers"]) + activations_per_example * batch_size


class PeakRSS:
    """Peak resident memory of this process while the block runs, sampled every ``interval`` seconds
    by a thread (psutil), and the RSS before it: ``with PeakRSS() as m: ...; m.peak - m.before``.

    Before the block, garbage is collected and glibc returns freed memory to the system (``malloc_trim``),
    so that memory an earlier test freed but the process kept does not hide this block's growth."""

    def __init__(self, interval: float = 0.002) -> None:
        import psutil

        self.process, self.interval = psutil.Process(), interval
        self.before = self.peak = 0
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self) -> "PeakRSS":
        gc.collect()
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc: the RSS before may include memory freed earlier
            pass
        self.before = self.peak = self.process.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)
