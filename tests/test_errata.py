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
