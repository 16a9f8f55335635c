"""Inputs a student gets slightly wrong get an error that says what was expected: not a raw torch
error from deep inside a layer, and not a silent NaN."""

import pytest
import torch

from vqlib.core.metrics import psnr
from vqlib.core.profile import check_profile, pick
from vqlib.priors.base import check_sampling
from vqlib.priors.pixelcnn import PixelCNN, PixelCNNConfig
from vqlib.quantizers.rotation import rotation_trick
from vqlib.tokenizers.vae import VAE, VAEConfig
from vqlib.tokenizers.video import VideoVQVAE, VideoVQVAEConfig
from vqlib.tokenizers.vqgan import VQGAN, VQGANConfig
from vqlib.tokenizers.vqvae import VQVAE, VQVAEConfig
from vqlib.tokenizers.vqvae2 import VQVAE2, VQVAE2Config

TOKENIZERS = {
    "vae": (lambda: VAE(VAEConfig.for_profile("smoke")), (2, 1, 28, 28)),
    "vqvae": (lambda: VQVAE(VQVAEConfig.for_profile("smoke", in_channels=1)), (2, 1, 28, 28)),
    "vqvae2": (lambda: VQVAE2(VQVAE2Config(hidden=16, res_hidden=8, res_blocks=1, codebook_size=16, code_dim=4)),
               (2, 3, 16, 16)),
    "vqgan": (lambda: VQGAN(VQGANConfig(hidden=8, channel_mult=(1, 2), res_blocks=1, norm_groups=4, codebook_size=16,
                                       code_dim=4, quantizer="vq")), (2, 3, 16, 16)),
    "video": (lambda: VideoVQVAE(VideoVQVAEConfig(frames=4, size=8, channels=1, hidden=8, res_hidden=4, res_blocks=1,
                                                  codebook_size=16, code_dim=4, space_downsample=2, heads=2)),
              (2, 4, 1, 8, 8)),
}


@pytest.mark.parametrize("name", sorted(TOKENIZERS))
def test_float64_images_are_refused_with_the_conversion_to_make(name):
    build, shape = TOKENIZERS[name]
    model = build()
    x = torch.rand(shape, dtype=torch.float64)
    with pytest.raises(TypeError, match=r"is torch.float64 but the model's weights are torch.float32.*\.float\(\)"):
        model(x)
    model(x.float())  # the advice works


@pytest.mark.parametrize("n, top_k, message", [(2.0, None, "n must be an integer"), (True, None, "n must be an integer"),
                                               (2, 2.5, "top_k must be an integer")])
def test_sampling_knobs_must_be_integers(n, top_k, message):
    with pytest.raises(TypeError, match=message):
        check_sampling(n, 1.0, top_k)


def test_pixelcnn_samples_need_a_positive_shape():
    model = PixelCNN(PixelCNNConfig(vocab_size=6, n_layers=2, hidden=8, kernel_size=3)).eval()
    for shape in [(-1, 3), (2, 0), (2, 3, 4), (2.0, 3)]:
        with pytest.raises(ValueError, match=r"shape must be the code map's \(H, W\), two integers >= 1"):
            model.sample(2, shape)
    with pytest.raises(TypeError, match="top_k must be an integer"):
        model.sample(2, (2, 2), top_k=2.5)
    assert model.sample(2, (2, 3)).shape == (2, 2, 3)


@pytest.mark.parametrize("where", ["z_e", "z_q"])
def test_the_rotation_trick_refuses_nan(where):
    z_e, z_q = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    (z_e if where == "z_e" else z_q)[1, 2, 0, 3] = float("nan")
    expected = "z_e has 1 and z_q 0" if where == "z_e" else "z_e has 0 and z_q 1"
    with pytest.raises(ValueError, match=rf"rotation trick needs finite vectors, but {expected} NaN or inf"):
        rotation_trick(z_e, z_q)


def test_psnr_refuses_nan_and_inf():
    x = torch.rand(2, 1, 4, 4)
    for bad in (float("nan"), float("inf")):
        x_hat = x.clone()
        x_hat[0, 0, 1, 1] = bad
        with pytest.raises(ValueError, match="psnr needs finite images, but x has 0 and x_hat 1 NaN or inf"):
            psnr(x, x_hat)
    assert torch.isfinite(psnr(x, x))  # identical images: the 1e-12 floor, not inf


@pytest.mark.parametrize("spelling", ["Smoke", "SMOKE", " smoke "])
def test_profile_names_are_case_insensitive(spelling):
    assert check_profile(spelling) == "smoke"
    assert pick(1, 2, 3, profile=spelling) == 1
