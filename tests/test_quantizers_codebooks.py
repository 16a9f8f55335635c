"""vqlib.quantizers.factory and vqlib.recipes.ch06_codebooks: every quantizer kind inside the Chapter 2 VQ-VAE,
evaluated and cached."""

import math

import pytest
import torch
import torch.nn.functional as F

from vqlib.data.mnist import mnist
from vqlib.quantizers.factory import KINDS, make_quantizer
from vqlib.quantizers.vector import codes_per_position, joint_indices
from vqlib.recipes.ch06_codebooks import COMPARED, comparison_model, train_mnist_codebook
from vqlib.tokenizers.vqvae import VQVAE, VQVAEConfig, evaluate_vqvae

OPTIONS = {"vq": dict(codebook_size=8), "ema": dict(codebook_size=8), "l2": dict(codebook_size=8, low_dim=3),
           "rotation": dict(inner="ema", codebook_size=8), "residual": dict(num_stages=2, codebook_size=4),
           "fsq": dict(levels=(3, 3)), "lfq": dict(bits=3)}


def tiny(kind: str) -> VQVAE:
    config = VQVAEConfig(in_channels=1, hidden=8, res_hidden=4, res_blocks=1, code_dim=4)
    return VQVAE(config, quantizer=make_quantizer(kind, config.code_dim, **OPTIONS[kind]))


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_trains_inside_the_vqvae_and_decodes_its_indices(kind):
    model = tiny(kind)
    x = torch.rand(2, 1, 8, 8)
    out = model(x)
    assert out.x_hat.shape == x.shape
    (F.mse_loss(out.x_hat, x) + out.loss).backward()
    assert model.encoder.net[0].weight.grad.abs().sum() > 0
    model.eval()
    torch.testing.assert_close(model.decode(model.encode(x)), model(x).x_hat)


def test_joint_indices_of_residual_stages_are_mixed_radix_numbers():
    q = make_quantizer("residual", 4, num_stages=3, codebook_size=5)
    indices = torch.randint(0, 5, (2, 3, 4, 4))
    joint = joint_indices(q, indices)
    assert joint.shape == (2, 4, 4) and codes_per_position(q) == 125
    assert torch.equal(joint, indices[:, 0] + 5 * indices[:, 1] + 25 * indices[:, 2])
    assert len(torch.unique(joint_indices(q, torch.cartesian_prod(*[torch.arange(5)] * 3).T[None, :, :, None]))) == 125


def test_evaluate_vqvae_counts_joint_codes_and_bits():
    model = tiny("residual").eval()
    x = mnist("test", profile="smoke").tensors[0][:20]
    data = torch.utils.data.TensorDataset(x)
    scores = evaluate_vqvae(model, data, batch_size=7)
    with torch.no_grad():
        joint = joint_indices(model.quantizer, model(x).indices)
    assert scores["usage"] == pytest.approx(joint.unique().numel() / 16)
    assert scores["bits"] == pytest.approx(7 * 7 * math.log2(16))  # 28/4 = 7: 2 stages of 4 codes = 4 bits each


def test_decode_checks_the_stage_axis():
    with pytest.raises(ValueError, match="S=2"):
        tiny("residual").decode(torch.zeros(2, 2, 2, dtype=torch.long))


def test_bad_kinds():
    with pytest.raises(ValueError, match="unknown quantizer kind"):
        make_quantizer("pq", 4)
    with pytest.raises(ValueError, match="inner"):
        make_quantizer("rotation", 4, inner="fsq", levels=(3,))
    with pytest.raises(TypeError, match="unknown overrides"):
        train_mnist_codebook("fsq", dict(levels=(3, 3)), profile="smoke", nonsense=1)


def test_train_mnist_codebook_trains_once_then_loads_from_the_cache():
    model, history = train_mnist_codebook("fsq", dict(levels=(3, 3)), profile="smoke", steps=4)
    assert not model.training and history.steps == 4
    assert set(history.eval[-1]) >= {"psnr", "usage", "perplexity", "bits"}
    again, history2 = train_mnist_codebook("fsq", dict(levels=(3, 3)), profile="smoke", steps=4)
    assert history2.seconds == history.seconds  # loaded, not retrained
    x = mnist("test", profile="smoke").tensors[0][:4]
    assert torch.equal(model(x).x_hat, again(x).x_hat)


def test_the_compared_quantizers_all_spend_about_8_bits_per_position():
    for name, (kind, options) in COMPARED.items():
        q = make_quantizer(kind, 16, **options)
        assert 7.9 < math.log2(codes_per_position(q)) <= 8, name
    assert comparison_model("quick")["code_dim"] == 16


def test_the_sweep_quantizers_have_about_K_codes_and_share_the_tables_runs_at_256():
    from vqlib.recipes.ch06_codebooks import sized_quantizers, sweep_sizes

    assert set(sweep_sizes("quick")) <= set(sweep_sizes("full")) == {2 ** e for e in range(4, 13)}
    for k in sweep_sizes("full"):
        for name, (kind, options) in sized_quantizers(k).items():
            size = codes_per_position(make_quantizer(kind, 16, **options))
            assert abs(math.log2(size / k)) < 0.2, (name, k, size)  # 2 × 6 codes: 36 for K = 32
    assert all(entry in COMPARED.values() for entry in sized_quantizers(256).values())  # the table's runs
    with pytest.raises(ValueError, match="power of 2 from 16 to 4096"):
        sized_quantizers(100)


def test_train_sweep_prior_models_the_codes_of_a_single_index_quantizer():
    from vqlib.recipes.ch06_codebooks import train_sweep_prior

    model, _ = train_mnist_codebook("ema", dict(codebook_size=16), profile="smoke", steps=4)
    prior, history = train_sweep_prior(model, profile="smoke", progress=False)
    assert (prior.config.vocab_size, prior.config.block_size) == (16, 49)
    assert "bits_per_dim" in history.eval[-1]
    with pytest.raises(ValueError, match="one index per position"):
        train_sweep_prior(tiny("residual"), profile="smoke")
