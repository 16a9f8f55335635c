"""Gated PixelCNN: causality, no blind spot, masks, sampling, conditioning, bad input.

What every prior shares (normalisation, save/load, overfitting, bits/dim) is tested in test_priors.py.
"""

import pytest
import torch

from vqlib.priors.base import prior_loss
from vqlib.priors.pixelcnn import MaskedConv2d, PixelCNN, PixelCNNConfig, dependence

K, H, W = 6, 5, 5


def model(**kwargs) -> PixelCNN:
    torch.manual_seed(0)
    config = dict(vocab_size=K, n_layers=4, hidden=8, kernel_size=3) | kwargs
    return PixelCNN(PixelCNNConfig(**config)).eval()


def raster(p: int) -> tuple[int, int]:
    return divmod(p, W)


def test_shapes_and_dtypes():
    pix = model(num_classes=3)
    tokens = torch.randint(0, K, (2, H, W + 2))
    cond = torch.tensor([0, 2])
    logits = pix(tokens, cond)
    assert logits.shape == (2, K, H, W + 2) and logits.dtype == torch.float32
    assert pix.nll(tokens, cond).shape == (2,)
    samples = pix.sample(3, (4, 6), cond=torch.tensor([1, 1, 2]))
    assert samples.shape == (3, 4, 6) and samples.dtype == torch.long
    assert samples.min() >= 0 and samples.max() < K


def test_logits_at_p_never_change_when_pixels_at_or_after_p_change():
    pix = model()
    torch.manual_seed(1)
    tokens = torch.randint(0, K, (1, H, W))
    logits = pix(tokens)
    for p in range(H * W):
        i, j = raster(p)
        changed = tokens.clone().flatten()
        changed[p:] = (changed[p:] + torch.randint(1, K, (H * W - p,))) % K  # every later pixel differs
        new = pix(changed.view(1, H, W))
        torch.testing.assert_close(new[..., i, j], logits[..., i, j], atol=1e-7, rtol=0)
        if p > 0:  # ...but the pixels before p do matter
            before = tokens.clone().flatten()
            before[:p] = (before[:p] + 1) % K
            assert (pix(before.view(1, H, W))[..., i, j] - logits[..., i, j]).abs().max() > 1e-4


def test_no_blind_spot_every_earlier_pixel_matters_and_no_later_one_does():
    pix = model(n_layers=5)  # 5 layers of kernel 3 reach 5 rows up and 5 columns either side
    torch.manual_seed(2)
    x = torch.randn(1, 8, H, W)
    for p in range(H * W):
        grad = dependence(pix.logits_from_embeddings, x, raster(p)).flatten()  # (H*W,)
        assert (grad[:p] > 1e-6 * grad.max()).all(), f"blind spot before pixel {raster(p)}"
        assert (grad[p:] == 0).all(), f"pixel {raster(p)} sees itself or the future"
    # the region a stack of masked 3x3 convolutions misses: up and to the right
    assert dependence(pix.logits_from_embeddings, x, (3, 0))[1, 4] > 0


def test_masked_taps_get_exactly_zero_gradient_and_the_others_do_not():
    pix = model(num_classes=2).train()
    tokens = torch.randint(0, K, (4, H, W))
    prior_loss(pix, (tokens, torch.tensor([0, 1, 1, 0])))["loss"].backward()
    convs = [m for m in pix.modules() if isinstance(m, MaskedConv2d)]
    assert len(convs) == 2 * 4
    for conv in convs:
        masked = conv.mask.expand_as(conv.weight) == 0
        assert masked.any() and (conv.weight.grad[masked] == 0).all()
        assert (conv.weight.grad[~masked] != 0).float().mean() > 0.9




def test_greedy_sample_is_the_argmax_of_its_own_logits():
    pix = model()
    samples = pix.sample(4, (H, W), top_k=1)
    assert torch.equal(pix(samples).argmax(1), samples)




def test_class_label_changes_every_logit():
    pix = model(num_classes=3)
    with torch.no_grad():
        pix.class_embed.weight.normal_()
    tokens = torch.randint(0, K, (1, H, W)).expand(2, H, W)
    logits = pix(tokens, torch.tensor([0, 1]))
    assert ((logits[0] - logits[1]).abs().amax(0) > 1e-4).all()






def test_bad_input_gets_a_message_that_says_what_was_expected():
    pix, conditional = model(), model(num_classes=3)
    tokens = torch.randint(0, K, (2, H, W))
    with pytest.raises(TypeError, match="torch.long"):
        pix(tokens.float())
    with pytest.raises(ValueError, match=r"\[0, 6\)"):
        pix(tokens + K)
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        pix(tokens.flatten(1))
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        pix(tokens[:0])
    with pytest.raises(ValueError, match="unconditional"):
        pix(tokens, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="class-conditional"):
        conditional(tokens)
    with pytest.raises(ValueError, match="class-conditional"):
        conditional.sample(2, (H, W))
    with pytest.raises(ValueError, match="temperature"):
        pix.sample(2, (H, W), temperature=0)
    with pytest.raises(ValueError, match="top_k"):
        pix.sample(2, (H, W), top_k=0)
    with pytest.raises(ValueError, match="n must be"):
        pix.sample(0, (H, W))
    with pytest.raises(ValueError, match="odd"):
        PixelCNNConfig(vocab_size=K, kernel_size=4)
