import math

import pytest
import torch
import torch.nn.functional as F

from vqlib.core.inference import reconstruct
from vqlib.core.metrics import code_bits
from vqlib.priors.gpt import GPT, GPTConfig
from vqlib.priors.pixelcnn import PixelCNN, PixelCNNConfig, dependence
from vqlib.recipes.ch04_vqvae2 import (position_dependence, sample_one_level, sample_two_levels, train_baseline_prior,
                                       train_photo_priors, train_photo_vqvae, train_photo_vqvae2)
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
    return BottomPrior(GPTConfig(vocab_size=16 + 4, block_size=6 * 4, n_layer=2, n_head=2, n_embd=16), (2, 2), (16, 4))


def sequence_rank(h: int, w: int) -> torch.Tensor:
    """(h, w): where each bottom code comes in the bottom prior's order (top code by top code, 2×2 under each)."""
    i, j = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return ((i // 2) * (w // 2) + j // 2) * 4 + (i % 2) * 2 + j % 2


def test_bottom_prior_sequence_puts_each_top_code_before_the_bottom_codes_under_it():
    prior = tiny_prior()
    top = torch.tensor([[[0, 1], [2, 3]]])
    bottom = torch.arange(16).view(1, 4, 4) % 4
    sequence = prior.sequence(bottom, top)[0]
    assert sequence[:4].tolist() == [4, 5, 6, 7]  # the top map first, shifted past the Kb = 4 bottom tokens
    assert sequence[4:].view(4, 5)[:, 0].tolist() == [4, 5, 6, 7]  # then each top code again ...
    assert sequence[4:].view(4, 5)[0, 1:].tolist() == [bottom[0, 0, 0], bottom[0, 0, 1], bottom[0, 1, 0], bottom[0, 1, 1]]
    assert sequence[4:].view(4, 5)[3, 1:].tolist() == bottom[0, 2:, 2:].flatten().tolist()  # ... with its 2×2 block


def test_bottom_prior_is_causal_in_the_bottom_codes():
    prior = tiny_prior().eval()
    top, bottom = torch.randint(0, 16, (1, 2, 2)), torch.randint(0, 4, (1, 4, 4))
    rank = sequence_rank(4, 4)
    logits = prior(bottom, top)  # (1, Kb, 4, 4)
    for i, j in ((0, 0), (1, 1), (2, 1), (3, 3)):
        changed = bottom.clone()
        changed[0, i, j] = (changed[0, i, j] + 1) % 4
        moved = (prior(changed, top) - logits).abs().amax(1)[0] > 1e-6  # (4, 4)
        assert not moved[rank <= rank[i, j]].any()  # a code and those before it never see it
        if rank[i, j] < 15:
            assert moved[rank > rank[i, j]].any()


def test_bottom_prior_uses_the_top_codes():
    prior = tiny_prior().eval()
    top, bottom = torch.randint(0, 16, (1, 2, 2)), torch.randint(0, 4, (1, 4, 4))
    other_top = top.clone()
    other_top[0, 1, 1] = (other_top[0, 1, 1] + 1) % 16  # the last top code: the first bottom code sees it in the prefix
    assert not torch.allclose(prior(bottom, other_top)[..., 0, 0], prior(bottom, top)[..., 0, 0])


def test_bottom_prior_nll_and_greedy_sampling():
    prior = tiny_prior().eval()
    top, bottom = torch.randint(0, 16, (3, 2, 2)), torch.randint(0, 4, (3, 4, 4))
    torch.testing.assert_close(prior.nll(bottom, top).mean(), F.cross_entropy(prior(bottom, top), bottom))
    greedy = prior.sample(top, top_k=1)
    assert greedy.shape == (3, 4, 4) and greedy.dtype == torch.long and greedy.max() < 4
    assert torch.equal(prior(greedy, top).argmax(1), greedy)  # each code is the argmax given those before it
    with pytest.raises(ValueError, match=r"expected top \(B, 2, 2\)"):
        prior(bottom, top[:, :1])
    with pytest.raises(ValueError, match="must lie in"):
        prior(bottom + 4, top)  # bottom codes are in [0, Kb)
    with pytest.raises(ValueError, match="block_size must be 6"):
        BottomPrior(GPTConfig(vocab_size=20, block_size=20), (2, 2), (16, 4))
    with pytest.raises(ValueError, match="vocab_size must be Kt \\+ Kb = 20"):
        BottomPrior(GPTConfig(vocab_size=16, block_size=24), (2, 2), (16, 4))


def test_the_top_prior_sees_every_earlier_code_and_a_small_pixelcnn_does_not():
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=16, block_size=64, n_layer=1, n_head=2, n_embd=16))
    tokens = torch.randint(16, (1, 64))
    for t in range(1, 64):
        seen = position_dependence(gpt, tokens, t) > 0  # (64,)
        assert seen[:t].all() and not seen[t:].any(), t
    assert all(p.grad is None for p in gpt.parameters())  # measuring leaves no gradients behind
    with pytest.raises(ValueError, match="1 <= t < L"):
        position_dependence(gpt, tokens, 64)
    cnn = PixelCNN(PixelCNNConfig(vocab_size=16, n_layers=6, hidden=8))  # 3×3 layers grow the view one step each
    seen = dependence(cnn.logits_from_embeddings, torch.randn(1, 8, 8, 8), (7, 7)).flatten() > 0
    assert int((~seen[:63]).sum()) == 15  # blind to 15 of the 63 codes before the last one


def test_equal_bits_baseline():
    config = VQVAE2Config.for_profile("quick")
    k = equal_bits_codebook_size(config)
    assert code_bits((16, 16), k) == (code_bits((16, 16), config.bottom_codebook_size)
                                      + code_bits((8, 8), config.codebook_size))
    assert equal_bits_codebook_size(VQVAE2Config(codebook_size=4096, bottom_codebook_size=4)) == 32
    with pytest.raises(ValueError, match="power of 16"):
        equal_bits_codebook_size(VQVAE2Config(codebook_size=512))
    with pytest.raises(ValueError, match="bottom_codebook_size must be >= 2"):
        VQVAE2Config(bottom_codebook_size=1)


def test_the_bottom_codebook_has_its_own_size():
    model = VQVAE2(VQVAE2Config(hidden=16, res_hidden=8, res_blocks=1, codebook_size=16, bottom_codebook_size=4,
                                code_dim=4))
    top, bottom = model.encode(torch.rand(2, 3, 16, 16))
    assert model.quantizer_bottom.codebook_size == 4 and bottom.max() < 4
    with pytest.raises(ValueError, match="must lie in"):
        model.decode((top, bottom + 4))


def test_recipes_train_once_then_load():
    model, history = train_photo_vqvae2("smoke", steps=3)
    assert history.steps == 3 and math.isfinite(history.last("psnr")) and 0 < history.last("ssim") < 1
    again, _ = train_photo_vqvae2("smoke", steps=3)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())
    baseline, _ = train_photo_vqvae("smoke", steps=3)
    assert baseline.config.codebook_size == equal_bits_codebook_size(model.config)
    with pytest.raises(TypeError, match="unknown overrides"):
        train_photo_vqvae2("smoke", colour=True)
    top, bottom = model.encode(torch.rand(6, 3, 64, 64))
    top_prior, bottom_prior, histories = train_photo_priors(model, top, bottom, "smoke", val=(top, bottom))
    assert histories["bottom"].last("bits_per_dim") > 0 and histories["top"].last("bits_per_dim") > 0
    images, sampled_top, sampled_bottom = sample_two_levels(model, top_prior, bottom_prior, 2)
    assert images.shape == (2, 3, 64, 64) and 0 <= images.min() and images.max() <= 1
    assert sampled_top.shape == (2, 8, 8) and sampled_bottom.shape == (2, 16, 16)
    torch.testing.assert_close(images, model.decode((sampled_top, sampled_bottom)).clamp(0, 1))
    codes = baseline.encode(torch.rand(6, 3, 64, 64))
    prior, prior_history = train_baseline_prior(baseline, codes, "smoke", val=codes)
    assert prior.config.n_layer == top_prior.config.n_layer and prior.config.n_embd == top_prior.config.n_embd
    assert prior_history.steps == histories["bottom"].steps  # the same size class and budget
    assert sample_one_level(baseline, prior, (16, 16), 3).shape == (3, 3, 64, 64)


def test_chapter_4_trains_every_model_per_seed_on_its_own_crop_size():
    from vqlib.recipes.ch04_vqvae2 import image_size

    assert (image_size("smoke"), image_size("quick"), image_size("full")) == (32, 32, 128)
    model, history = train_photo_vqvae2("smoke", steps=3)
    other, _ = train_photo_vqvae2("smoke", steps=3, seed=1)
    assert history.steps == 3 and not torch.equal(model.decoder.net[0].weight, other.decoder.net[0].weight)
    top, bottom = model.encode(torch.rand(6, 3, 32, 32))
    first = train_photo_priors(model, top, bottom, "smoke")
    again = train_photo_priors(model, top, bottom, "smoke", seed=0)
    second = train_photo_priors(model, top, bottom, "smoke", seed=1)
    for a, b, c in zip(first[:2], again[:2], second[:2]):  # the top prior, then the bottom prior
        assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())  # seed 0 is the default
        assert not all(torch.equal(v, c.state_dict()[k]) for k, v in a.state_dict().items())
    baseline, _ = train_photo_vqvae("smoke", steps=3)
    codes = baseline.encode(torch.rand(6, 3, 32, 32))
    one, _ = train_baseline_prior(baseline, codes, "smoke")
    two, _ = train_baseline_prior(baseline, codes, "smoke", seed=1)
    assert not torch.equal(one.tok_emb.weight, two.tok_emb.weight)


def test_spectrum_features_see_blur_and_noise():
    from vqlib.recipes.ch04_vqvae2 import spectrum_features

    x = F.interpolate(torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0)), size=32, mode="bilinear")
    blurred, noisy = F.avg_pool2d(x, 3, stride=1, padding=1), (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    f, fb, fn = spectrum_features(x), spectrum_features(blurred), spectrum_features(noisy)
    assert f.shape == (4, 4) and (fb[:, -1] < f[:, -1]).all() and (fn[:, -1] > f[:, -1]).all()


def test_per_image_scores_average_to_the_batch_scores():
    from vqlib.core.metrics import psnr, ssim
    from vqlib.recipes.ch04_vqvae2 import per_image_scores

    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 16, 16, generator=g)
    x_hat = (x + 0.1 * torch.randn(6, 3, 16, 16, generator=g)).clamp(0, 1)
    x_hat[0] = x[0]  # a perfect reconstruction scores SSIM 1
    scores = per_image_scores(x, x_hat)
    assert scores["psnr"].shape == scores["ssim"].shape == (6,)
    torch.testing.assert_close(scores["psnr"].mean(), psnr(x, x_hat))
    torch.testing.assert_close(scores["ssim"].mean(), ssim(x, x_hat))
    assert scores["ssim"][0] == pytest.approx(1.0) and (scores["ssim"][1:] < 1).all()
