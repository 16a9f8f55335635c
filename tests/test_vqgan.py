import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from vqlib.judges.photonet import PhotoNet, PhotoNetConfig
from vqlib.losses.discriminator import PatchGAN, PatchGANConfig
from vqlib.losses.perceptual import PerceptualLoss
from vqlib.losses.vqgan import VQGANLoss, VQGANLossConfig, adaptive_weight
from vqlib.recipes.ch05_vqgan import (OBJECTIVES, fine_tune_decoder, held_out_scores, train_photo_vqgan,
                                      train_photo_vqgan_baseline, train_photo_vqvae)
from vqlib.tokenizers.vqgan import VQGAN, AttentionBlock, FrozenCodes, VQGANConfig
from vqlib.training.gan import GANStep, pretrain_discriminator
from vqlib.training.loop import TrainConfig, fit

TINY = VQGANConfig(hidden=8, channel_mult=(1, 2), res_blocks=1, norm_groups=4, codebook_size=16, code_dim=4,
                   quantizer="vq")


def tiny_model(**changes) -> VQGAN:
    torch.manual_seed(0)
    return VQGAN(VQGANConfig(**{**TINY.__dict__, **changes}))


def tiny_loss(**changes) -> VQGANLoss:
    torch.manual_seed(1)
    disc = PatchGAN(PatchGANConfig(width=4, n_layers=1))
    perceptual = PerceptualLoss(PhotoNet(PhotoNetConfig(widths=(4, 8))))
    return VQGANLoss(VQGANLossConfig(**changes), disc, perceptual)


# ----------------------------------------------------------------------------- the autoencoder

def test_shapes_dtypes_and_finite_loss():
    out = tiny_model()(torch.rand(3, 3, 16, 24))
    assert out.x_hat.shape == (3, 3, 16, 24) and out.x_hat.dtype == torch.float32
    assert out.indices.shape == (3, 8, 12) and out.indices.dtype == torch.long
    assert out.z_e.shape == out.z_q.shape == (3, 4, 8, 12)
    assert out.loss.shape == () and torch.isfinite(out.loss)
    assert VQGANConfig().downsample == 16 and VQGANConfig.for_profile("quick").downsample == 4


def test_gradient_reaches_the_encoder_through_the_quantizer():
    model = tiny_model()
    x = torch.rand(2, 3, 16, 16)
    F.l1_loss(model(x).x_hat, x).backward()  # the reconstruction alone: only the straight-through path
    grads = [p.grad for p in model.encoder.parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0


def test_beta_weighs_the_commitment_term_not_the_codebook_term():
    """d loss / d z_e = β·2(z_e - z_q)/M (commitment) and d loss / d e_k = Σ 2(e_k - z_e)/M (codebook).

    With β on the codebook term instead (as in some public VQGAN releases) both checks fail.
    """
    beta = 0.1
    model = tiny_model(beta=beta)
    z_e = model.encoder(torch.rand(2, 3, 16, 16)).detach().requires_grad_()
    out = model.quantizer(z_e)
    out.loss.backward()
    z_q = out.z_q.detach()
    m = z_e.numel()
    torch.testing.assert_close(z_e.grad, beta * 2 * (z_e.detach() - z_q) / m)
    codebook = model.quantizer.codebook
    vectors = z_e.detach().movedim(1, -1).reshape(-1, 4)  # (N, D)
    expected = torch.zeros_like(codebook).index_add_(0, out.indices.flatten(),
                                                     2 * (codebook[out.indices.flatten()].detach() - vectors) / m)
    torch.testing.assert_close(codebook.grad, expected)


def test_attention_block_keeps_the_shape_and_mixes_all_positions():
    torch.manual_seed(0)
    block = AttentionBlock(8, 4)
    x = torch.randn(2, 8, 5, 6, requires_grad=True)
    y = block(x)
    assert y.shape == x.shape
    y[0, :, 0, 0].sum().backward()  # the top-left output sees the bottom-right input: global receptive field
    assert x.grad[0, :, 4, 5].abs().sum() > 0 and x.grad[1].abs().sum() == 0


def test_bad_inputs_and_configs():
    model = tiny_model()
    with pytest.raises(ValueError, match="multiples of the downsampling factor f=2"):
        model(torch.rand(1, 3, 15, 16))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.rand(1, 1, 16, 16))
    with pytest.raises(TypeError, match="floating-point"):
        model(torch.zeros(1, 3, 16, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match="empty"):
        model(torch.rand(0, 3, 16, 16))
    with pytest.raises(ValueError, match="code map"):
        model.decode(torch.zeros(2, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="quantizer"):
        VQGANConfig(quantizer="fsq")
    with pytest.raises(ValueError, match="pixel_loss"):
        VQGANLossConfig(pixel_loss="l2")
    with pytest.raises(ValueError, match="PerceptualLoss"):
        VQGANLoss(VQGANLossConfig(), PatchGAN(PatchGANConfig()), None)
    with pytest.raises(TypeError, match="unknown overrides"):
        train_photo_vqgan(profile="smoke", learning_rate=1.0)


# ----------------------------------------------------------------------------- the losses

def test_adaptive_weight_matches_a_manual_autograd_computation_and_is_clamped():
    model, criterion = tiny_model(), tiny_loss()
    x = torch.rand(2, 3, 16, 16)

    def losses():
        x_hat = model(x).x_hat
        return F.l1_loss(x_hat, x) + criterion.perceptual(x, x_hat).mean(), -criterion.discriminator(x_hat).mean()

    rec, gan = losses()
    lam = adaptive_weight(rec, gan, model.last_layer)
    rec.backward(retain_graph=True)
    g_rec = model.last_layer.grad.clone()
    model.zero_grad()
    gan.backward()
    g_gan = model.last_layer.grad.clone()
    torch.testing.assert_close(lam, g_rec.norm() / (g_gan.norm() + 1e-4))
    assert not lam.requires_grad
    rec, gan = losses()
    assert adaptive_weight(100 * rec, 1e-12 * gan, model.last_layer) == 1e4  # a vanishing GAN gradient: λ clamps
    assert adaptive_weight(rec, gan, model.last_layer, max_weight=0.5) <= 0.5


def test_hinge_generator_loss_enters_with_lambda_after_the_warm_up_only():
    model, criterion = tiny_model(), tiny_loss(disc_start=5)
    calls = []
    criterion.discriminator.register_forward_hook(lambda *_: calls.append(1))
    x = torch.rand(2, 3, 16, 16)
    before = criterion.generator_terms(model, x, step=4)
    assert "g_loss" not in before and "lambda" not in before and not calls  # the discriminator is not even run
    torch.testing.assert_close(before["loss"], before["pixel"] + before["perceptual"] + before["vq"])
    after = criterion.generator_terms(model, x, step=5)
    assert calls and after["lambda"] > 0
    torch.testing.assert_close(after["loss"], after["pixel"] + after["perceptual"] + after["vq"]
                               + after["lambda"] * after["g_loss"])


def test_discriminator_loss_gives_the_generator_no_gradient_and_vice_versa():
    model, criterion = tiny_model(), tiny_loss()
    x = torch.rand(2, 3, 16, 16)
    terms = criterion.generator_terms(model, x, step=0)
    terms["loss"].backward(retain_graph=True)
    assert all(p.grad is None for p in criterion.discriminator.parameters())  # L_G trains the autoencoder only
    assert all(p.requires_grad for p in criterion.discriminator.parameters())  # and unfreezes it afterwards
    model.zero_grad(set_to_none=True)
    criterion.discriminator_terms(x, terms["x_hat"])["loss"].backward()
    assert all(p.grad is None for p in model.parameters())
    assert all(p.grad is not None for p in criterion.discriminator.parameters())


# ----------------------------------------------------------------------------- training

def photo_batch(n: int = 8) -> TensorDataset:
    torch.manual_seed(0)
    x = torch.rand(n, 3, 1, 1).expand(n, 3, 16, 16) * torch.linspace(0.3, 1, 16)  # smooth colour ramps
    return TensorDataset(x.contiguous())


def test_overfit_one_batch_cuts_the_pixel_loss():
    model, criterion = tiny_model(quantizer="ema"), tiny_loss(disc_weight=0.0)  # pixel + perceptual + VQ
    config = TrainConfig(steps=60, batch_size=8, lr=3e-3, betas=(0.5, 0.9), log_every=5)
    history = fit(model, GANStep(criterion), photo_batch(), config, progress=False)
    _, pixel = history.series("pixel")
    assert pixel[-1] < pixel[0] / 2


def test_lambda_and_discriminator_terms_are_logged_after_the_warm_up():
    model, criterion = tiny_model(quantizer="ema"), tiny_loss(disc_start=6)
    config = TrainConfig(steps=12, batch_size=8, betas=(0.5, 0.9), log_every=2)
    history = fit(model, GANStep(criterion), photo_batch(), config, progress=False)
    for key in ("lambda", "g_loss", "d_loss"):
        steps, values = history.series(key)
        assert steps == [8, 10, 12] and all(torch.isfinite(torch.tensor(values)))
    assert all(v > 0 for v in history.series("lambda")[1])
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_warm_up_leaves_the_discriminator_untouched():
    model, criterion = tiny_model(), tiny_loss(disc_start=100)
    before = {k: v.clone() for k, v in criterion.discriminator.state_dict().items()}
    history = fit(model, GANStep(criterion), photo_batch(), TrainConfig(steps=4, batch_size=4), progress=False)
    assert all(torch.equal(v, criterion.discriminator.state_dict()[k]) for k, v in before.items())
    assert not any("d_loss" in r or "lambda" in r for r in history.train)


def test_resume_after_interrupt_matches_an_uninterrupted_run(tmp_path):
    config = TrainConfig(steps=6, batch_size=4, log_every=2, checkpoint_every=3, cosine=True)
    whole, criterion = tiny_model(quantizer="ema"), tiny_loss(disc_start=2)  # EMA: random dead-code restarts
    fit(whole, GANStep(criterion), photo_batch(), config, checkpoint=tmp_path / "a.pt", progress=False)
    part, criterion2 = tiny_model(quantizer="ema"), tiny_loss(disc_start=2)
    half = fit(part, GANStep(criterion2), photo_batch(), config, checkpoint=tmp_path / "b.pt", progress=False,
               stop_at=3)
    assert half.steps == 3 and half.stopped == "stop_at"
    saved = torch.load(tmp_path / "b.pt", weights_only=True)["step"]  # tensors and plain data only
    assert {"optimizer", "scheduler", "discriminator", "optimizer_d", "scheduler_d"} <= set(saved)
    resumed, criterion3 = tiny_model(quantizer="ema"), tiny_loss(disc_start=2)
    history = fit(resumed, GANStep(criterion3), photo_batch(), config, checkpoint=tmp_path / "b.pt", progress=False)
    assert history.steps == 6
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)  # bit for bit: the checkpoint keeps both networks, optimisers and generators
    for a, b in zip(criterion.discriminator.state_dict().values(), criterion3.discriminator.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="loss config"):
        fit(tiny_model(quantizer="ema"), GANStep(tiny_loss(disc_start=3)), photo_batch(), config,
            checkpoint=tmp_path / "b.pt", progress=False)


def test_a_non_finite_discriminator_gradient_updates_neither_network():
    model, criterion = tiny_model(), tiny_loss(disc_start=0)
    first = next(criterion.discriminator.parameters())
    first.register_hook(lambda grad: grad * float("nan"))  # a finite L_D with a NaN gradient
    before = [p.detach().clone() for p in [*model.parameters(), *criterion.discriminator.parameters()]]
    with pytest.raises(FloatingPointError, match=r"step 0: the loss is finite but the gradient of discriminator\."):
        fit(model, GANStep(criterion), photo_batch(), TrainConfig(steps=3, batch_size=4), progress=False)
    after = [*model.parameters(), *criterion.discriminator.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(before, after))


def test_a_time_budget_stops_gan_training_too():
    history = fit(tiny_model(), GANStep(tiny_loss(disc_start=1)), photo_batch(),
                  TrainConfig(steps=10_000, batch_size=4, max_seconds=0.2), progress=False)
    assert history.stopped == "time" and 0 < history.steps < 10_000


def test_nan_input_stops_training_with_a_clear_error():
    data = photo_batch()
    data.tensors[0][0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        fit(tiny_model(), GANStep(tiny_loss()), data, TrainConfig(steps=2, batch_size=8), progress=False)


def test_the_discriminator_sees_real_and_reconstructed_crops_in_one_batch():
    """With BatchNorm, two separate batches would each be normalised on their own, hiding a shared defect."""
    model, criterion = tiny_model(), tiny_loss(disc_start=0)
    sizes = []
    criterion.discriminator.register_forward_hook(lambda module, inputs, output: sizes.append(len(inputs[0])))
    x = torch.rand(4, 3, 16, 16)
    terms = criterion.generator_terms(model, x, step=0)
    d_terms = criterion.discriminator_terms(x, terms["x_hat"])
    assert sizes == [8, 8]
    with torch.no_grad():
        real, fake = criterion.scores(x, terms["x_hat"])
    assert real.shape == fake.shape == (4, 1, 6, 6)
    assert d_terms["loss"].item() == pytest.approx(discriminator_loss_of(real, fake).item())


def discriminator_loss_of(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (torch.relu(1 - real).mean() + torch.relu(1 + fake).mean())


def test_frozen_codes_train_the_decoder_only_and_keep_every_code():
    model = tiny_model(quantizer="ema")
    x = photo_batch().tensors[0]
    fit(model, GANStep(tiny_loss(pixel_loss="mse", perceptual_weight=0.0, disc_weight=0.0)), photo_batch(),
        TrainConfig(steps=3, batch_size=4), progress=False)  # an EMA codebook initialised from data
    frozen = FrozenCodes.of(model)
    codes, encoder = model.encode(x), [p.clone() for p in frozen.encoder.parameters()]
    codebook, decoder = frozen.quantizer.codebook.clone(), [p.clone() for p in frozen.decoder.parameters()]
    fit(frozen, GANStep(tiny_loss(disc_start=0)), photo_batch(), TrainConfig(steps=4, batch_size=4), progress=False)
    assert torch.equal(frozen.encode(x), codes) and torch.equal(frozen.quantizer.codebook, codebook)
    assert all(torch.equal(a, b) for a, b in zip(frozen.encoder.parameters(), encoder))
    assert not all(torch.equal(a, b) for a, b in zip(frozen.decoder.parameters(), decoder))
    assert frozen.train().training and not frozen.encoder.training and not frozen.quantizer.training


def test_recipes_run_in_smoke(monkeypatch):
    model, history = train_photo_vqvae(profile="smoke")
    assert history.steps == 8 and "psnr" in history.eval[-1]
    assert not any("perceptual" in r or "lambda" in r for r in history.train)
    x = torch.rand(2, 3, 16, 16)
    tuned, tuned_history = fine_tune_decoder(model, "vqgan", profile="smoke", steps=3, seed=1)
    assert tuned_history.steps == 3 and all("lambda" in r for r in tuned_history.train)  # no warm-up: the VQ-VAE was it
    assert isinstance(tuned, FrozenCodes) and torch.equal(tuned.encode(x), model.encode(x))
    control, control_history = train_photo_vqgan_baseline(profile="smoke", steps=2)
    assert not any("perceptual" in r or "lambda" in r for r in control_history.train)
    assert control.config == tuned.config == model.config
    assert OBJECTIVES["vqgan"].disc_start == 0 and OBJECTIVES["mse"].disc_weight == 0
    pretrained, pretrained_history = fine_tune_decoder(model, "vqgan", profile="smoke", steps=3, seed=1,
                                                       pretrain_steps=2)
    assert pretrained_history.steps == 3 and torch.equal(pretrained.encode(x), model.encode(x))
    assert not torch.equal(pretrained(x).x_hat, tuned(x).x_hat)  # another run, not the cached one above
    with monkeypatch.context() as patch:  # once the fine-tune is cached, its discriminator comes from its checkpoint
        patch.setattr("vqlib.recipes.ch05_vqgan.pretrain_discriminator", lambda *args, **kwargs: pytest.fail())
        cached, _ = fine_tune_decoder(model, "vqgan", profile="smoke", steps=3, seed=1, pretrain_steps=2)
    assert torch.equal(cached(x).x_hat, pretrained(x).x_hat)
    with pytest.raises(ValueError, match="unknown objective"):
        fine_tune_decoder(model, "lpips", profile="smoke")
    for objective, steps in (("mse", 2), ("vqgan", -1)):
        with pytest.raises(ValueError, match="pretrain_steps must be"):
            fine_tune_decoder(model, objective, profile="smoke", pretrain_steps=steps)
    with pytest.raises(TypeError, match="unknown overrides"):
        train_photo_vqgan(profile="smoke", colour=1)


def test_pretraining_teaches_the_discriminator_alone_to_tell_fixed_reconstructions_apart(tmp_path):
    g = torch.Generator().manual_seed(0)
    real = torch.rand(16, 3, 16, 16, generator=g)
    fake = F.avg_pool2d(real, 3, stride=1, padding=1, count_include_pad=False)  # a blur: the reconstructions' tell
    criterion = tiny_loss(perceptual_weight=0.0)
    disc = criterion.discriminator
    config = TrainConfig(steps=30, batch_size=8, lr=2e-3, betas=(0.5, 0.9), log_every=10)

    def gap() -> float:  # mean logit of the real crops minus that of their reconstructions, in one batch
        disc.train()  # as in training: BatchNorm normalises the batch of both
        with torch.no_grad():
            logits_real, logits_fake = criterion.scores(real, fake)
        return float(logits_real.mean() - logits_fake.mean())

    initial = {k: v.clone() for k, v in disc.state_dict().items()}
    before = gap()
    disc.load_state_dict(initial)  # the BatchNorm statistics as they were
    history = pretrain_discriminator(criterion, real, fake, config, checkpoint=tmp_path / "d.pt")
    trained = {k: v.clone() for k, v in disc.state_dict().items()}
    assert history.steps == 30 and {"loss", "logits_real", "logits_fake"} <= set(history.train[-1])
    assert history.train[-1]["loss"] < history.train[0]["loss"] and gap() > before + 1.0
    again = tiny_loss(perceptual_weight=0.0)  # a fresh discriminator, loaded from the finished run
    assert pretrain_discriminator(again, real, fake, config, checkpoint=tmp_path / "d.pt").steps == 30
    assert all(torch.equal(v, again.discriminator.state_dict()[k]) for k, v in trained.items())
    with pytest.raises(ValueError, match="one shape"):
        pretrain_discriminator(criterion, real, fake[:8], config)
    with pytest.raises(ValueError, match="needs a VQGANLoss with a discriminator"):
        pretrain_discriminator(VQGANLoss(VQGANLossConfig(perceptual_weight=0.0, disc_weight=0.0), None, None),
                               real, fake, config)


def test_held_out_scores_per_crop():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 3, 16, 16, generator=g)
    scores = held_out_scores(x, x.clone())
    assert set(scores) == {"psnr", "ssim", "spectral", "two_sample", "divergence"}
    assert scores["divergence"].shape == (16,)
    assert scores["spectral"].shape == (16,) and torch.all(scores["spectral"] == 0)
    assert scores["two_sample"].shape == (16,) and set(scores["two_sample"].tolist()) <= {0.0, 1.0}
    noisy = held_out_scores(x, (x + 0.3 * torch.randn(x.shape, generator=g)).clamp(0, 1))
    assert noisy["spectral"].mean() > 0.1 and noisy["psnr"].mean() < 20
