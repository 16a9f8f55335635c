"""bfloat16 autocast: every quantizer picks the codes float32 picks, every model trains to finite numbers.

On the CPU here (``torch.autocast("cpu", dtype=torch.bfloat16)``), and on CUDA through the ``device``
fixture where there is a GPU. Distances, argmin, FSQ's rounding and LFQ's signs stay in float32
(STYLE.md): bfloat16 has 8 bits of mantissa, so a vector near a boundary between two codes, or an
integer above 256, would change under it.
"""

import copy
import math

import pytest
import torch

from vqlib.core.device import to_device
from vqlib.judges.photonet import PhotoNet, PhotoNetConfig
from vqlib.losses.discriminator import PatchGAN, PatchGANConfig, discriminator_loss
from vqlib.losses.perceptual import PerceptualLoss
from vqlib.priors.base import prior_loss
from vqlib.priors.gpt import GPT, GPTConfig
from vqlib.priors.maskgit import MaskGIT, MaskGITConfig, maskgit_loss
from vqlib.priors.pixelcnn import PixelCNN, PixelCNNConfig
from vqlib.priors.text import CaptionTokenizer
from vqlib.priors.video_prior import VideoPrior, VideoPriorConfig, video_prior_loss
from vqlib.quantizers.factorized import FactorizedQuantizer
from vqlib.quantizers.fsq import FiniteScalarQuantizer
from vqlib.quantizers.lfq import LookupFreeQuantizer
from vqlib.quantizers.residual import ResidualVectorQuantizer
from vqlib.quantizers.rotation import RotationTrickQuantizer
from vqlib.quantizers.vector import EMAVectorQuantizer, VectorQuantizer
from vqlib.recipes.ch05_vqgan import VQGANLoss, VQGANLossConfig
from vqlib.tokenizers.vae import VAE, VAEConfig, negative_elbo
from vqlib.tokenizers.video import FrameVQVAE, VideoVQVAE, VideoVQVAEConfig
from vqlib.tokenizers.vqgan import VQGAN, VQGANConfig
from vqlib.tokenizers.vqvae import VQVAE, VQVAEConfig, vqvae_loss
from vqlib.tokenizers.vqvae2 import VQVAE2, VQVAE2Config

D = 16  # the encoder's channels in the quantizer tests
QUANTIZERS = {  # name -> a quantizer with K >= 512 codes, so that many codes compete for every vector
    "vq": lambda: VectorQuantizer(512, D),
    "ema": lambda: EMAVectorQuantizer(512, D),
    "factorized": lambda: FactorizedQuantizer(512, D, low_dim=8),
    "fsq": lambda: FiniteScalarQuantizer((8, 8, 8), D),  # 512 codes: integers above 256 are not all bfloat16
    "lfq": lambda: LookupFreeQuantizer(10, D),
    "residual": lambda: ResidualVectorQuantizer(3, 512, D),
    "rotation": lambda: RotationTrickQuantizer(VectorQuantizer(512, D)),
}


def autocast(device: torch.device):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def twins(name: str, device: torch.device):
    """Two copies of one quantizer with equal weights and buffers."""
    torch.manual_seed(1)
    a = QUANTIZERS[name]().to(device)
    b = QUANTIZERS[name]().to(device)
    b.load_state_dict(a.state_dict())
    return a, b


@pytest.mark.parametrize("name", QUANTIZERS)
def test_autocast_picks_the_float32_codes(name, device):
    """Same float32 latents, with and without autocast: the same indices, three training steps in a
    row (EMA codebooks, data initialisation and restarts included), then the same state."""
    plain, mixed = twins(name, device)
    for step in range(3):
        z_e = torch.randn(8, D, 8, 8, device=device) * (1 + step)  # 512 vectors
        torch.manual_seed(step)
        expected = plain(z_e)
        torch.manual_seed(step)  # the same restarts of dead codes
        with autocast(device):
            out = mixed(z_e)
        assert torch.equal(out.indices, expected.indices), f"step {step}"
        assert torch.isfinite(out.loss) and out.loss.dtype == torch.float32
    for key, value in plain.state_dict().items():
        assert torch.equal(mixed.state_dict()[key], value), key


@pytest.mark.parametrize("name", QUANTIZERS)
def test_bfloat16_latents_get_the_codes_of_their_float32_copy(name, device):
    """Under autocast an encoder hands the quantizer bfloat16 latents: their codes are those of the same
    values in float32 without autocast (the residual quantizer keeps its residuals in float32)."""
    plain, mixed = twins(name, device)
    plain.eval(), mixed.eval()
    z_e = torch.randn(8, D, 8, 8, device=device).bfloat16()
    expected = plain(z_e.float()).indices
    with autocast(device):
        out = mixed(z_e)
    assert torch.equal(out.indices, expected)
    assert out.z_q.shape == z_e.shape and torch.isfinite(out.z_q.float()).all()


@pytest.mark.parametrize("levels", [(8, 8, 8), (8, 5, 5, 5), (16, 16, 8)])
def test_fsq_keeps_every_code_above_256_under_autocast(levels, device):
    """One latent per code of an FSQ of more than 256 codes (512, 1000, 2048): under autocast every code
    comes back as its own index, and decodes to its own vector."""
    d = len(levels)
    fsq = FiniteScalarQuantizer(levels, d).to(device).eval()
    with torch.no_grad():  # identity projections: the latents are the codes' coordinates
        for layer in (fsq.project_in, fsq.project_out):
            layer.weight.copy_(torch.eye(d))
            layer.bias.zero_()
    codes = fsq.implicit_codebook.double()  # (K, d) in [-1, 1], index order
    levels_t, half = fsq._levels.double(), fsq._half_width.double()
    half_l = (levels_t - 1) * (1 - fsq.eps) / 2
    offset = (levels_t % 2 == 0).double() / 2
    level = codes * half  # (K, d) the integer level of every coordinate
    target = level - 0.25 * level.sign()  # a quarter from the level, towards 0: inside its rounding interval
    z = torch.atanh((target + offset) / half_l) - torch.tan(offset / half_l)  # bound(z) = target
    z_e = z.float()[:, :, None, None]  # (K, d, 1, 1)
    with autocast(device):
        out = fsq(z_e)
        decoded = fsq.decode_indices(out.indices)  # (K, d, 1, 1)
    K = math.prod(levels)
    assert torch.equal(out.indices.flatten(), torch.arange(K, device=device))
    torch.testing.assert_close(decoded.float().flatten(1), codes.float(), atol=0, rtol=0)  # k/(L//2): exact in bf16


# ----------------------------------------------------------------------------- models

def _images(b=2, c=3, s=16):
    return torch.rand(b, c, s, s)


def _tokens(k, *shape):
    return torch.randint(k, shape)


CAPTIONS = CaptionTokenizer.fit(["a 3 moves left", "a 7 moves up"])
VIDEO = VideoVQVAEConfig(frames=4, size=8, channels=1, hidden=8, res_hidden=4, res_blocks=1, codebook_size=16,
                         code_dim=4, space_downsample=2, heads=2)
VQGAN_TINY = VQGANConfig(hidden=8, channel_mult=(1, 2), res_blocks=1, norm_groups=4, codebook_size=16, code_dim=4)


def vqgan_with_loss() -> tuple[torch.nn.Module, object, tuple]:
    """VQGAN and its criterion (PatchGAN, perceptual network) as one module; the loss is the generator's,
    adversarial term and adaptive weight on, plus the discriminator's."""
    pair = torch.nn.ModuleList([VQGAN(VQGAN_TINY), VQGANLoss(VQGANLossConfig(disc_start=0),
                                                             PatchGAN(PatchGANConfig(width=4, n_layers=1)),
                                                             PerceptualLoss(PhotoNet(PhotoNetConfig(widths=(4, 8)))))])

    def loss_fn(modules: torch.nn.ModuleList, batch: tuple) -> dict:
        model, criterion = modules
        terms = criterion.generator_terms(model, batch[0], step=0)
        d_terms = criterion.discriminator_terms(batch[0], terms.pop("x_hat"))
        return {**terms, "d_loss": d_terms["loss"], "loss": terms["loss"] + d_terms["loss"]}

    return pair, loss_fn, (_images(),)


MODELS = {  # name -> () -> (model, loss_fn(model, batch) -> dict with "loss", batch)
    "VAE": lambda: (VAE(VAEConfig(latent_dim=3, hidden=(16,))),
                    lambda m, b: negative_elbo(m, b[0])._asdict(), (torch.rand(4, 1, 28, 28),)),
    "VQVAE": lambda: (VQVAE(VQVAEConfig(hidden=16, res_hidden=8, res_blocks=1, codebook_size=32, code_dim=8)),
                      vqvae_loss, (_images(),)),
    "VQVAE-vq": lambda: (VQVAE(VQVAEConfig(hidden=16, res_hidden=8, res_blocks=1, codebook_size=32, code_dim=8,
                                           quantizer="vq")), vqvae_loss, (_images(),)),
    "VQVAE2": lambda: (VQVAE2(VQVAE2Config(hidden=16, res_hidden=8, res_blocks=1, codebook_size=16, code_dim=4)),
                       vqvae_loss, (_images(),)),
    "VQGAN": vqgan_with_loss,
    "VideoVQVAE": lambda: (VideoVQVAE(VIDEO), vqvae_loss, (torch.rand(2, 4, 1, 8, 8),)),
    "VideoVQVAE-attention": lambda: (VideoVQVAE(VideoVQVAEConfig(**{**VIDEO.__dict__, "temporal": "attention"})),
                                     vqvae_loss, (torch.rand(2, 4, 1, 8, 8),)),
    "FrameVQVAE": lambda: (FrameVQVAE(VideoVQVAEConfig(**{**VIDEO.__dict__, "time_downsample": 1})), vqvae_loss,
                           (torch.rand(2, 4, 1, 8, 8),)),
    "PixelCNN": lambda: (PixelCNN(PixelCNNConfig(vocab_size=16, n_layers=3, hidden=8, num_classes=3)), prior_loss,
                         (_tokens(16, 2, 5, 5), _tokens(3, 2))),
    "GPT": lambda: (GPT(GPTConfig(vocab_size=16, block_size=12, n_layer=2, n_head=2, n_embd=16, num_classes=3)),
                    prior_loss, (_tokens(16, 2, 12), _tokens(3, 2))),
    "MaskGIT": lambda: (MaskGIT(MaskGITConfig(vocab_size=16, block_size=12, n_layer=2, n_head=2, n_embd=16,
                                              num_classes=3)), maskgit_loss, (_tokens(16, 2, 12), _tokens(3, 2))),
    "VideoPrior": lambda: (VideoPrior(VideoPriorConfig.for_profile(16, (2, 2, 2), CAPTIONS, profile="smoke")),
                           video_prior_loss, (_tokens(16, 2, 2, 2, 2), CAPTIONS.encode(["a 3 moves left", ""]))),
    "PatchGAN": lambda: (PatchGAN(PatchGANConfig(width=4, n_layers=2)),
                         lambda m, b: {"loss": discriminator_loss(m(b[0]), m(b[1]))}, (_images(), _images())),
    "PerceptualLoss": lambda: (PerceptualLoss(PhotoNet(PhotoNetConfig(widths=(4, 8)))),
                               lambda m, b: {"loss": m(b[0], b[1]).mean()},
                               (_images(), _images().requires_grad_(True))),
}
TOKENIZERS = ("VAE", "VQVAE", "VQVAE-vq", "VQVAE2", "VQGAN", "VideoVQVAE", "VideoVQVAE-attention", "FrameVQVAE")


def build(name: str, device: torch.device):
    torch.manual_seed(0)
    model, loss_fn, batch = MODELS[name]()
    return model.to(device).train(), loss_fn, to_device(batch, device)


@pytest.mark.parametrize("name", MODELS)
def test_forward_and_backward_are_finite_under_autocast(name, device):
    model, loss_fn, batch = build(name, device)
    reference = copy.deepcopy(model)  # the same state: a training step of an EMA codebook changes it
    torch.manual_seed(1)
    expected = float(loss_fn(reference, batch)["loss"].detach())  # float32
    torch.manual_seed(1)
    with autocast(device):
        terms = loss_fn(model, batch)
    loss = terms["loss"]
    assert loss.dim() == 0 and all(torch.isfinite(v).all() for v in terms.values()), terms
    # bfloat16 keeps about 3 significant digits; the loss must still be the same quantity
    assert float(loss.detach()) == pytest.approx(expected, rel=0.1, abs=1e-3)
    # what the loss must reach: the parameters, or x_hat for the frozen perceptual network
    wanted = [p for p in model.parameters() if p.requires_grad] or [t for t in batch if t.requires_grad]
    grads = torch.autograd.grad(loss, wanted, allow_unused=True)
    assert grads[0] is not None and grads[0].abs().sum() > 0, "no gradient reaches the first layer"
    assert sum(g is None for g in grads) <= len(grads) // 2
    assert all(torch.isfinite(g).all() for g in grads if g is not None)


@pytest.mark.parametrize("name", TOKENIZERS)
def test_three_training_steps_under_autocast_stay_finite(name, device):
    model, loss_fn, batch = build(name, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for step in range(3):
        with autocast(device):
            loss = loss_fn(model, batch)["loss"]
        assert torch.isfinite(loss), f"step {step}: loss {float(loss)}"
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(torch.isfinite(b.float()).all() for b in model.buffers())  # EMA codebooks too
