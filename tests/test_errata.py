"""vqlib.book.errata keeps the seeds' code as printed: these tests pin down the mistakes the book measures."""

import pytest
import torch
import torch.nn.functional as F

from vqlib.book import errata
from vqlib.quantizers.vector import VectorQuantizer


def test_seed000_encoder_gets_no_gradient():
    model = errata.VQVAEVideoGenerator(num_embeddings=8, embedding_dim=4, hidden_dim=16, frame_size=8)
    frames = torch.rand(2, 3, 8, 8)
    x_hat, indices = model(frames)
    assert x_hat.shape == frames.shape and indices.shape == (2,)
    F.mse_loss(x_hat, frames).backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert all(p.grad is None for p in model.vq_layer.parameters())
    assert model.embedding.weight.grad is not None  # the decoder side does learn


def test_seed000_loss_raises_name_error_and_other_frame_sizes_fail():
    model = errata.VQVAEVideoGenerator(num_embeddings=8, embedding_dim=4, hidden_dim=16, frame_size=8)
    frames = torch.rand(2, 3, 8, 8)
    with pytest.raises(NameError, match="z_flat"):
        model.loss(frames, *model(frames))
    with pytest.raises(RuntimeError):
        model(torch.rand(2, 3, 16, 16))  # the flattened 2×2 map does not fit the Linear layer


def test_seed004_returns_24x24_for_28x28_and_works_when_padded():
    model = errata.VQVAE(in_channels=1, hidden_channels=8, embedding_dim=4, num_embeddings=16, commitment_cost=0.25)
    assert model(torch.rand(2, 1, 28, 28))[0].shape == (2, 1, 24, 24)
    assert model(torch.rand(2, 1, 32, 32))[0].shape == (2, 1, 32, 32)


def test_seed004_quantizer_finds_the_same_codes_as_vqlib():
    seed = errata.VectorQuantizer(16, 4, 0.25)
    book = VectorQuantizer(16, 4)
    with torch.no_grad():
        book.codebook.copy_(seed.embedding.weight)
    z_e = torch.randn(2, 4, 5, 5)
    _, loss, indices = seed(z_e)
    assert indices.shape == (50, 1)  # (N, 1), not a (B, H, W) map
    out = book(z_e)
    assert torch.equal(indices.view(2, 5, 5), out.indices)
    torch.testing.assert_close(loss, out.loss)  # its losses are right


def _latent_transformer():
    torch.manual_seed(0)
    return errata.LatentTransformer(text_dim=8, latent_dim=16, num_embeddings=32, num_heads=2, num_layers=1).eval()


def test_seed004_latent_transformer_has_no_causal_mask():
    model = _latent_transformer()
    x = torch.randn(64, 1, 16)  # (T, B, D): the layout its encoder reads
    changed = x.clone()
    changed[40:] += 1.0  # change only the later positions
    with torch.no_grad():
        before, after = model.transformer(x), model.transformer(changed)
    assert not torch.allclose(before[:40], after[:40])  # earlier outputs move: the future leaks


def test_seed004_latent_transformer_never_reads_codes():
    model = _latent_transformer()
    text = torch.randn(2, 8)
    with torch.no_grad():
        first, second = model(text), model(text)
    assert first.shape == (2, 63, 32)  # 63 logits, not 64
    torch.testing.assert_close(first, second)  # a function of the text alone: no code goes in


def test_seed004_sampler_makes_one_pass_and_its_reshape_fails():
    model = _latent_transformer()
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    with pytest.raises(RuntimeError, match="shape"):
        errata.sample_latent_indices(model, torch.randn(1, 8))  # 63 codes cannot be an 8×8 grid
    assert len(calls) == 1  # every position drawn from that single pass
    grids = errata.sample_latent_indices(model, torch.randn(64, 8))
    assert grids.shape == (63, 8, 8)  # 64 images in, 63 grids out: codes dealt across images
