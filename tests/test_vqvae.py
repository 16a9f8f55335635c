"""vqlib.tokenizers.vqvae: shapes, errors, gradients, state, an overfit run, and the cached MNIST recipe
(vqlib.recipes.ch02_vqvae)."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from vqlib.data.mnist import mnist
from vqlib.recipes.ch02_vqvae import train_mnist_vqvae
from vqlib.tokenizers.base import TokenizerOutput
from vqlib.tokenizers.vqvae import VQVAE, VQVAEConfig, evaluate_vqvae, vqvae_loss

TINY = dict(in_channels=1, hidden=8, res_hidden=4, res_blocks=1, codebook_size=16, code_dim=4)


def tiny(**overrides) -> VQVAE:
    return VQVAE(VQVAEConfig(**{**TINY, **overrides}))


def buffers_and_weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("quantizer", ["ema", "vq"])
@pytest.mark.parametrize("factor, size", [(2, 28), (4, 28), (8, 32)])
def test_shapes_and_dtypes(quantizer, factor, size):
    model = tiny(quantizer=quantizer, downsample=factor)
    x = torch.rand(3, 1, size, size)
    out = model(x)
    assert isinstance(out, TokenizerOutput)
    assert out.x_hat.shape == x.shape and out.x_hat.dtype == torch.float32
    assert out.indices.shape == (3, size // factor, size // factor) and out.indices.dtype == torch.long
    assert out.z_e.shape == out.z_q.shape == (3, 4, size // factor, size // factor)
    assert out.loss.shape == () and torch.isfinite(out.loss)
    assert model.encode(x).shape == out.indices.shape
    assert model.decode(out.indices).shape == x.shape


def test_defaults_work_on_mnist_sized_input():
    model = VQVAE(VQVAEConfig(in_channels=1))
    assert model(torch.rand(2, 1, 28, 28)).x_hat.shape == (2, 1, 28, 28)


def test_output_is_not_squashed():  # no sigmoid/tanh: a linear output can leave [0, 1]
    model = tiny()
    with torch.no_grad():
        model.decoder.net[-1].bias.fill_(5.0)
    assert model(torch.rand(2, 1, 28, 28)).x_hat.min() > 1.0


def test_overfit_one_batch():
    # 100 Adam steps on 16 real digits cut the training loss at least 3-fold (about 5-fold seen).
    torch.manual_seed(0)
    x = mnist("train", profile="smoke").tensors[0][:16]
    model = tiny(hidden=16, res_hidden=8, codebook_size=32)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(100):
        loss = vqvae_loss(model, (x,))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 3, (losses[0], losses[-1])


# ----------------------------------------------------------------------------- bad input and config

@pytest.mark.parametrize("x, error, words", [
    (torch.rand(2, 1, 30, 28), ValueError, "downsampling factor f=4"),
    (torch.rand(2, 1, 28, 26), ValueError, "28×28"),
    (torch.rand(2, 3, 28, 28), ValueError, "(B, 1, H, W)"),
    (torch.rand(1, 28, 28), ValueError, "(B, 1, H, W)"),
    (torch.rand(0, 1, 28, 28), ValueError, "empty"),
    (torch.randint(0, 255, (2, 1, 28, 28)), TypeError, "floating-point"),
])
def test_bad_images(x, error, words):
    with pytest.raises(error) as info:
        tiny()(x)
    assert words in str(info.value)


def test_bad_code_map():
    with pytest.raises(ValueError, match="(B, h, w)"):
        tiny().decode(torch.zeros(2, 49, dtype=torch.long))


@pytest.mark.parametrize("field, value", [("downsample", 6), ("downsample", 1), ("quantizer", "fsq"),
                                          ("codebook_size", 0), ("code_dim", 0), ("res_blocks", -1)])
def test_bad_config(field, value):
    with pytest.raises(ValueError, match=field):
        VQVAEConfig(**{field: value})


def test_config_is_frozen_and_sized_by_profile():
    config = VQVAEConfig.for_profile("smoke", in_channels=1, beta=0.5)
    assert config.beta == 0.5 and config.in_channels == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.beta = 1.0
    smoke, quick = VQVAEConfig.for_profile("smoke"), VQVAEConfig.for_profile("quick")
    assert smoke.hidden < quick.hidden and smoke.codebook_size < quick.codebook_size


# ----------------------------------------------------------------------------- the MNIST recipe

def test_train_mnist_vqvae_trains_once_then_loads_from_the_cache():
    model, history = train_mnist_vqvae(profile="smoke", steps=6)
    assert not model.training and history.steps == 6
    assert set(history.eval[-1]) >= {"psnr", "usage", "perplexity"}
    again, history2 = train_mnist_vqvae(profile="smoke", steps=6)
    assert history2.seconds == history.seconds  # loaded, not retrained
    x = mnist("test", profile="smoke").tensors[0][:4]
    assert torch.equal(model(x).x_hat, again(x).x_hat)
    with pytest.raises(TypeError, match="unknown overrides"):
        train_mnist_vqvae(profile="smoke", nonsense=1)


def test_evaluate_runs_in_eval_mode_and_restores_the_mode():
    model = tiny().train()
    before = buffers_and_weights(model)
    data = torch.utils.data.TensorDataset(torch.rand(20, 1, 28, 28))
    evaluate_vqvae(model, data, batch_size=8)
    assert model.training and model.quantizer.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the EMA codebook did not move


def test_evaluate_vqvae_reports_psnr_usage_and_perplexity_over_the_whole_set():
    model = tiny().eval()
    data = mnist("test", profile="smoke")
    scores = evaluate_vqvae(model, torch.utils.data.TensorDataset(*(t[:50] for t in data.tensors)), batch_size=16)
    x = data.tensors[0][:50]
    with torch.no_grad():
        out = model(x)
    assert scores["psnr"] == pytest.approx(
        float(torch.stack([10 * torch.log10(1 / F.mse_loss(out.x_hat[i].clamp(0, 1), x[i])) for i in range(50)]).mean()),
        rel=1e-4)
    used = out.indices.unique().numel() / model.config.codebook_size
    assert scores["usage"] == pytest.approx(used)
