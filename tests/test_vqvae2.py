import math

import pytest
import torch
import torch.nn.functional as F

from vqlib.core.inference import reconstruct
from vqlib.core.metrics import code_bits
from vqlib.priors.gpt import GPTConfig
from vqlib.recipes.ch04_vqvae2 import train_photo_priors, train_photo_vqvae, train_photo_vqvae2
from vqlib.tokenizers.base import TokenizerOutput
from vqlib.tokenizers.vqvae import vqvae_loss
from vqlib.tokenizers.vqvae2 import VQVAE2, BottomPrior, VQVAE2Config, equal_bits_codebook_size

TINY = VQVAE2Config(hidden=16, res_hidden=8, res_blocks=1, codebook_size=16, code_dim=4)


def tiny_model() -> VQVAE2:
    torch.manual_seed(0)
    return VQVAE2(TINY)


def test_shapes_dtypes_and_finite_loss():
    out = tiny_model()(torch.rand(3, 3, 16, 24))
    assert out.x_hat.shape == (3, 3, 16, 24) and out.x_hat.dtype == torch.float32
    assert isinstance(out, TokenizerOutput)  # one tensor per level, top first
    (top, bottom), (z_e_top, z_e_bottom), (z_q_top, z_q_bottom) = out.indices, out.z_e, out.z_q
    assert top.shape == (3, 2, 3) and bottom.shape == (3, 4, 6)
    assert top.dtype == bottom.dtype == torch.long
    assert z_e_top.shape == z_q_top.shape == (3, 4, 2, 3) and z_e_bottom.shape == z_q_bottom.shape == (3, 4, 4, 6)
    assert out.loss.shape == () and torch.isfinite(out.loss)


def test_gradients_reach_both_encoders_through_the_quantizers():
    model = tiny_model()
    x = torch.rand(4, 3, 16, 16)
    model(x)  # the first training batch initialises the codebooks
    F.mse_loss(model(x).x_hat, x).backward()  # the reconstruction alone: only straight-through paths
    for name in ("encoder_bottom", "encoder_top"):
        grads = [p.grad for p in getattr(model, name).parameters()]
        assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0, name


def test_reconstruct_is_the_eval_forward_in_batches_and_keeps_the_mode():
    model = tiny_model()
    x = torch.rand(5, 3, 16, 16)
    model(x)  # a training batch initialises the codebooks; the model stays in training mode
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x_hat = reconstruct(model, x, batch_size=2)  # batches of 2, 2 and 1
    assert model.training and all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert x_hat.shape == x.shape and 0 <= x_hat.min() and x_hat.max() <= 1
    model.eval()
    torch.testing.assert_close(x_hat, model(x).x_hat.clamp(0, 1))


def test_overfits_one_batch():
    model = tiny_model()
    x = F.interpolate(torch.rand(8, 3, 4, 4), size=16, mode="bilinear")  # smooth images, like photos
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(100):
        terms = vqvae_loss(model, (x,))
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
        losses.append(terms["recon"].item())
    assert losses[-1] < losses[0] / 5


def test_bad_inputs_have_clear_errors():
    model = tiny_model()
    with pytest.raises(ValueError, match="multiples of the top codes' downsampling factor f=8"):
        model(torch.rand(1, 3, 20, 16))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\).*grey"):
        model(torch.rand(1, 1, 16, 16))
    with pytest.raises(TypeError, match="floating-point"):
        model(torch.zeros(1, 3, 16, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match="empty"):
        model(torch.rand(0, 3, 16, 16))
    top, bottom = torch.zeros(2, 2, 2, dtype=torch.long), torch.zeros(2, 4, 4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"twice the top map's size.*\(2, 4, 4\).*\(2, 2, 2\)"):
        model.decode((top, top))
    with pytest.raises(ValueError, match="twice the top map's size"):
        model.decode((top, bottom[:1]))
    with pytest.raises(ValueError, match=r"\(B, h, w\) code map"):
        model.decode((top.flatten(1), bottom))
    with pytest.raises(ValueError, match="must lie in"):
        model.decode((top + 16, bottom))


def tiny_prior() -> BottomPrior:
    torch.manual_seed(0)
    return BottomPrior(GPTConfig(vocab_size=16, block_size=4 + 16, n_layer=2, n_head=2, n_embd=16), (2, 2), (4, 4))


def test_bottom_prior_is_causal_in_the_bottom_codes():
    prior = tiny_prior().eval()
    top, bottom = torch.randint(0, 16, (1, 2, 2)), torch.randint(0, 16, (1, 4, 4))
    logits = prior(bottom, top).flatten(2)  # (1, K, 16)
    for t in (0, 5, 15):
        changed = bottom.clone().view(1, -1)
        changed[0, t] = (changed[0, t] + 1) % 16
        new = prior(changed.view(1, 4, 4), top).flatten(2)
        torch.testing.assert_close(new[..., : t + 1], logits[..., : t + 1])  # position t never sees code t
        if t < 15:
            assert not torch.allclose(new[..., t + 1:], logits[..., t + 1:])


def test_bottom_prior_uses_the_top_codes():
    prior = tiny_prior().eval()
    top, bottom = torch.randint(0, 16, (1, 2, 2)), torch.randint(0, 16, (1, 4, 4))
    other_top = top.clone()
    other_top[0, 1, 1] = (other_top[0, 1, 1] + 1) % 16  # the last top code: the first bottom code sees it
    assert not torch.allclose(prior(bottom, other_top)[..., 0, 0], prior(bottom, top)[..., 0, 0])


def test_bottom_prior_nll_and_greedy_sampling():
    prior = tiny_prior().eval()
    top, bottom = torch.randint(0, 16, (3, 2, 2)), torch.randint(0, 16, (3, 4, 4))
    torch.testing.assert_close(prior.nll(bottom, top).mean(), F.cross_entropy(prior(bottom, top), bottom))
    greedy = prior.sample(top, top_k=1)
    assert greedy.shape == (3, 4, 4) and greedy.dtype == torch.long
    assert torch.equal(prior(greedy, top).argmax(1), greedy)  # each code is the argmax given those before it
    with pytest.raises(ValueError, match=r"expected top \(B, 2, 2\)"):
        prior(bottom, top[:, :1])
    with pytest.raises(ValueError, match="block_size must be 4 top"):
        BottomPrior(GPTConfig(vocab_size=16, block_size=16), (2, 2), (4, 4))


def test_equal_bits_baseline():
    config = VQVAE2Config.for_profile("quick")
    k = equal_bits_codebook_size(config)
    assert code_bits((16, 16), k) == code_bits((16, 16), config.codebook_size) + code_bits((8, 8), config.codebook_size)
    with pytest.raises(ValueError, match="power of 16"):
        equal_bits_codebook_size(VQVAE2Config(codebook_size=512))


def test_recipes_train_once_then_load():
    model, history = train_photo_vqvae2("smoke", steps=3)
    assert history.steps == 3 and math.isfinite(history.last("psnr")) and 0 < history.last("ssim") < 1
    again, _ = train_photo_vqvae2("smoke", steps=3)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())
    baseline, _ = train_photo_vqvae("smoke", steps=3)
    assert baseline.config.codebook_size == equal_bits_codebook_size(model.config)
    with pytest.raises(TypeError, match="unknown overrides"):
        train_photo_vqvae2("smoke", colour=True)
    top, bottom = model.encode(torch.rand(6, 3, 16, 16))
    top_prior, bottom_prior, histories = train_photo_priors(model, top, bottom, "smoke", val=(top, bottom))
    assert histories["bottom"].last("bits_per_dim") > 0
    assert bottom_prior.sample(top[:2]).shape == (2, 4, 4) and top_prior.sample(2, (2, 2)).shape == (2, 2, 2)


def test_per_image_scores_average_to_the_batch_scores_and_bits_per_code_to_bits_per_dim():
    from vqlib.core.metrics import psnr, ssim
    from vqlib.priors.base import bits_per_dim
    from vqlib.priors.pixelcnn import PixelCNN, PixelCNNConfig
    from vqlib.recipes.ch04_vqvae2 import bits_per_code, per_image_scores

    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 16, 16, generator=g)
    x_hat = (x + 0.1 * torch.randn(6, 3, 16, 16, generator=g)).clamp(0, 1)
    x_hat[0] = x[0]  # a perfect reconstruction scores SSIM 1
    scores = per_image_scores(x, x_hat)
    assert scores["psnr"].shape == scores["ssim"].shape == (6,)
    torch.testing.assert_close(scores["psnr"].mean(), psnr(x, x_hat))
    torch.testing.assert_close(scores["ssim"].mean(), ssim(x, x_hat))
    assert scores["ssim"][0] == pytest.approx(1.0) and (scores["ssim"][1:] < 1).all()
    torch.manual_seed(0)
    prior = PixelCNN(PixelCNNConfig(vocab_size=16, n_layers=2, hidden=8))
    tokens = torch.randint(16, (5, 4, 4), generator=g)
    per_map = bits_per_code(prior, tokens, batch_size=2)
    assert per_map.shape == (5,) and prior.training  # the mode is restored
    assert per_map.mean().item() == pytest.approx(bits_per_dim(prior, tokens), rel=1e-6)
