"""Tests of vqlib.tokenizers.vae (and its recipes, vqlib.recipes.ch01_vae): shapes, the reparameterisation trick, the KL, the bounds, overfitting, bad input."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch.distributions import Bernoulli, Normal, kl_divergence

from vqlib.tokenizers.vae import (VAE, Autoencoder, VAEConfig, active_units, bernoulli_log_likelihood, gaussian_kl,
                                  importance_log_likelihood, kl_per_dim, negative_elbo, reconstruction_loss,
                                  reparameterize)
from vqlib.recipes.ch01_vae import _initialised, train_mnist_vae

TINY = VAEConfig(latent_dim=3, hidden=(16,))


def images(b: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 1, 28, 28, generator=torch.Generator().manual_seed(seed))  # (B, 1, 28, 28)


@pytest.fixture
def vae() -> VAE:
    torch.manual_seed(0)
    return VAE(TINY)


# ----------------------------------------------------------------------------- shapes


def test_vae_shapes_and_dtypes(vae: VAE) -> None:
    out = vae(images(5))
    assert out.logits.shape == (5, 1, 28, 28) and out.logits.dtype == torch.float32
    for t in (out.mu, out.logvar, out.z):
        assert t.shape == (5, 3) and t.dtype == torch.float32
    assert 0 <= out.x_hat.min() and out.x_hat.max() <= 1
    assert vae.decode(torch.zeros(2, 3)).shape == (2, 1, 28, 28)
    mu, logvar = vae.encode(images(2))
    assert mu.shape == logvar.shape == (2, 3)
    samples = vae.sample(6, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (6, 1, 28, 28) and 0 <= samples.min() and samples.max() <= 1


def test_autoencoder_shapes() -> None:
    out = Autoencoder(TINY)(images(2))
    assert out.logits.shape == (2, 1, 28, 28) and out.z.shape == (2, 3)


def test_other_image_sizes_and_channels() -> None:
    config = VAEConfig(latent_dim=2, hidden=(8, 4), in_channels=3, image_size=8)
    out = VAE(config)(torch.rand(2, 3, 8, 8))
    assert out.logits.shape == (2, 3, 8, 8)


def test_config_is_frozen_sized_by_profile_and_checked() -> None:
    assert VAEConfig.for_profile("smoke").hidden != VAEConfig.for_profile("quick").hidden
    assert VAEConfig.for_profile("quick", latent_dim=2).latent_dim == 2
    with pytest.raises(AttributeError):
        TINY.latent_dim = 5  # type: ignore[misc]
    with pytest.raises(ValueError, match="latent_dim"):
        VAEConfig(latent_dim=0)
    with pytest.raises(ValueError, match="hidden"):
        VAEConfig(hidden=())


# ----------------------------------------------------------------------------- the objective


def test_loss_is_finite_and_adds_up(vae: VAE) -> None:
    x = images(8)
    torch.manual_seed(1)
    terms = negative_elbo(vae, x, beta=2.5)
    assert all(torch.isfinite(t) for t in terms)
    assert terms.reconstruction > 0 and terms.kl >= 0
    torch.testing.assert_close(terms.loss, terms.reconstruction + 2.5 * terms.kl)


def test_bernoulli_log_likelihood_matches_torch_for_binary_images() -> None:
    logits = torch.randn(3, 1, 28, 28)
    x = (torch.rand(3, 1, 28, 28) > 0.5).float()
    expected = Bernoulli(logits=logits).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(bernoulli_log_likelihood(logits, x), expected)


def test_grey_targets_give_the_expected_log_likelihood_of_a_binarisation() -> None:
    g = torch.Generator().manual_seed(0)
    logits, x = torch.randn(1, 1, 4, 4, generator=g), torch.rand(1, 1, 4, 4, generator=g)
    b = torch.bernoulli(x.expand(100_000, 1, 4, 4), generator=g)  # (S, 1, 4, 4) random binarisations
    monte_carlo = Bernoulli(logits=logits).log_prob(b).flatten(1).sum(1)  # (S,)
    stderr = monte_carlo.std() / math.sqrt(len(monte_carlo))
    assert abs(bernoulli_log_likelihood(logits, x).item() - monte_carlo.mean().item()) < 4 * stderr


# ----------------------------------------------------------------------------- reparameterisation


def test_reparameterize_passes_gradients_to_mu_and_logvar() -> None:
    mu = torch.tensor([[0.5, -1.0]], requires_grad=True)
    logvar = torch.tensor([[0.2, -0.4]], requires_grad=True)
    z = reparameterize(mu, logvar, generator=torch.Generator().manual_seed(3))
    z.sum().backward()
    eps = torch.randn(1, 2, generator=torch.Generator().manual_seed(3))  # the same noise
    torch.testing.assert_close(mu.grad, torch.ones(1, 2))  # dz/dmu = 1
    torch.testing.assert_close(logvar.grad, 0.5 * torch.exp(0.5 * logvar.detach()) * eps)  # dz/dlogvar = sigma eps / 2


def test_reparameterize_has_the_right_mean_and_variance() -> None:
    n = 200_000
    mu = torch.tensor([1.5, -2.0, 0.0]).expand(n, 3)
    var = torch.tensor([0.25, 4.0, 1.0])
    z = reparameterize(mu, var.log().expand(n, 3), generator=torch.Generator().manual_seed(0))  # (n, 3)
    # 5 standard errors: fails if the sigma is sqrt'ed twice, the exp forgets the 0.5, or mu is dropped
    assert ((z.mean(0) - mu[0]).abs() < 5 * (var / n).sqrt()).all(), z.mean(0)
    assert ((z.var(0) - var).abs() < 5 * var * math.sqrt(2 / n)).all(), z.var(0)


# ----------------------------------------------------------------------------- the KL


def test_kl_is_zero_at_the_prior_and_positive_elsewhere() -> None:
    torch.testing.assert_close(gaussian_kl(torch.zeros(2, 5), torch.zeros(2, 5)), torch.zeros(2))
    assert (gaussian_kl(torch.randn(4, 5), torch.randn(4, 5)) > 0).all()


def test_kl_equals_a_hand_computed_value() -> None:
    # 0.5 (1 + 2 - 1 - ln 2) + 0.5 (4 + 1 - 1 - 0) = 3 - ln(2)/2
    mu, logvar = torch.tensor([[1.0, 2.0]]), torch.tensor([[math.log(2.0), 0.0]])
    torch.testing.assert_close(gaussian_kl(mu, logvar), torch.tensor([3 - math.log(2) / 2]))
    torch.testing.assert_close(kl_per_dim(mu, logvar), torch.tensor([[1 - math.log(2) / 2, 2.0]]))


def test_kl_matches_torch_distributions() -> None:
    mu, logvar = torch.randn(6, 4), torch.randn(6, 4)
    reference = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(1)
    torch.testing.assert_close(gaussian_kl(mu, logvar), reference)


def test_kl_matches_a_monte_carlo_estimate() -> None:
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(3, 4, generator=g), 0.5 * torch.randn(3, 4, generator=g)
    q = Normal(mu, (0.5 * logvar).exp())
    z = q.sample((100_000,))  # (S, 3, 4)
    log_ratio = (q.log_prob(z) - Normal(0.0, 1.0).log_prob(z)).sum(-1)  # (S, 3)
    stderr = log_ratio.std(0) / math.sqrt(len(z))
    assert ((log_ratio.mean(0) - gaussian_kl(mu, logvar)).abs() < 5 * stderr).all()


# ----------------------------------------------------------------------------- bounds and diagnostics


def test_importance_weighted_bound_approaches_the_exact_log_likelihood() -> None:
    # With one latent and four pixels, log p(x) = log ∫ p(x|z) N(z; 0, 1) dz is a 1-D integral.
    torch.manual_seed(0)
    model = VAE(VAEConfig(latent_dim=1, hidden=(8,), image_size=2)).eval()
    x = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]], [[[0.3, 0.9], [0.5, 0.1]]]])  # (2, 1, 2, 2)
    grid = torch.linspace(-8, 8, 20_001).unsqueeze(1)  # (G, 1)
    with torch.no_grad():
        logits = model.decode(grid)  # (G, 1, 2, 2)
        log_joint = torch.stack([bernoulli_log_likelihood(logits, xi.expand_as(logits)) for xi in x])  # (2, G)
        log_joint = log_joint + Normal(0.0, 1.0).log_prob(grid.squeeze(1))
        exact = torch.logsumexp(log_joint, dim=1) + math.log(grid[1, 0] - grid[0, 0])  # (2,)
        iwae = importance_log_likelihood(model, x, samples=20_000, generator=torch.Generator().manual_seed(0))
        torch.manual_seed(0)
        reconstruction, kl = negative_elbo(model, x.repeat(500, 1, 1, 1))[1:]
    torch.testing.assert_close(iwae, exact, atol=0.02, rtol=0)
    elbo_mean = -(reconstruction + kl)  # averaged over both images and 500 noise draws
    assert elbo_mean < exact.mean() + 0.01  # the ELBO is a lower bound


def test_importance_weighted_bound_with_one_sample_is_the_single_sample_elbo(vae: VAE) -> None:
    x = images(3)
    iwae = importance_log_likelihood(vae, x, samples=1, generator=torch.Generator().manual_seed(5))
    mu, logvar = vae.encode(x)
    z = mu + torch.exp(0.5 * logvar) * torch.randn(1, *mu.shape, generator=torch.Generator().manual_seed(5))[0]
    # log p(x|z) + log p(z) - log q(z|x) at the same sample, written with torch.distributions
    log_w = (bernoulli_log_likelihood(vae.decode(z), x) + Normal(0.0, 1.0).log_prob(z).sum(1)
             - Normal(mu, (0.5 * logvar).exp()).log_prob(z).sum(1))
    torch.testing.assert_close(iwae, log_w.detach())


def test_vae_scores_are_per_image_and_average_to_evaluate_vae(vae: VAE) -> None:
    from vqlib.core.metrics import psnr
    from vqlib.tokenizers.vae import evaluate_vae, vae_scores

    x = images(7, seed=3)
    per_image = vae_scores(vae, x, batch_size=3, seed=2)  # chunks of 3, 3 and 1: all seven come back
    assert set(per_image) == {"neg_elbo", "reconstruction", "kl", "psnr"}
    assert all(v.shape == (7,) for v in per_image.values())
    torch.testing.assert_close(per_image["neg_elbo"], per_image["reconstruction"] + per_image["kl"])
    with torch.no_grad():
        mu, logvar = vae.encode(x)
        torch.testing.assert_close(per_image["kl"], gaussian_kl(mu, logvar))  # the closed form, per image
        torch.testing.assert_close(per_image["psnr"], psnr(x, torch.sigmoid(vae.decoder(mu)), reduction="none"))
    means = evaluate_vae(vae, x, batch_size=3, seed=2)
    for name, values in per_image.items():
        assert means[name] == pytest.approx(values.double().mean().item(), rel=1e-6)
    assert evaluate_vae(vae, x, batch_size=3, seed=4)["reconstruction"] != means["reconstruction"]  # seeded z


def test_active_units_finds_the_unused_latent() -> None:
    mu = torch.randn(500, 3)
    mu[:, 1] = 0.3  # the same posterior mean for every input: carries no information
    assert active_units(mu).tolist() == [True, False, True]
    with pytest.raises(ValueError, match="N >= 2"):
        active_units(torch.randn(1, 3))


# ----------------------------------------------------------------------------- persistence and training


def test_save_load_round_trip_gives_the_same_output(vae: VAE) -> None:
    buffer = io.BytesIO()
    torch.save(vae.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(123)
    loaded = VAE(TINY)  # different initial weights
    loaded.load_state_dict(torch.load(buffer))
    x = images(3)
    torch.manual_seed(7)
    a = vae(x)
    torch.manual_seed(7)
    b = loaded(x)
    for t, u in zip(a, b):
        torch.testing.assert_close(t, u)


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    from vqlib.data.mnist import mnist

    return mnist("train", "smoke").tensors[0][:32]  # (32, 1, 28, 28) real digits


@pytest.mark.parametrize("model_class", [VAE, Autoencoder])
def test_overfits_one_batch(model_class, digits: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = model_class(VAEConfig(latent_dim=4, hidden=(32,)))
    loss_fn = (lambda m, x: negative_elbo(m, x).loss) if model_class is VAE else reconstruction_loss
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = loss_fn(model, digits).item()
    for _ in range(150):
        loss = loss_fn(model, digits)
        opt.zero_grad()
        loss.backward()
        opt.step()
    # about 550 nats at the start (784 ln 2 plus change); 150 steps reach about 105 (VAE) and 80 (AE)
    assert loss.item() < first / 3, (first, loss.item())


def test_recipe_trains_once_then_loads_from_the_cache(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("VQLIB_CACHE", str(tmp_path))
    model, history = train_mnist_vae(profile="smoke", latent_dim=2, progress=False)
    assert not model.training and history.steps > 0
    assert {"neg_elbo", "reconstruction", "kl", "psnr"} <= set(history.eval[-1])
    assert len(list((tmp_path / "checkpoints").glob("mnist-vae-smoke-*.pt"))) == 1
    again, history_again = train_mnist_vae(profile="smoke", latent_dim=2, progress=False)
    assert history_again.seconds == history.seconds  # loaded, not retrained
    z = torch.randn(2, 2)
    torch.testing.assert_close(again.decode(z), model.decode(z))
    other_beta, _ = train_mnist_vae(profile="smoke", latent_dim=2, beta=4.0, progress=False)
    assert len(list((tmp_path / "checkpoints").glob("mnist-vae-smoke-*.pt"))) == 2  # beta is part of the key


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("x, message", [
    (torch.rand(2, 28, 28), r"shape \(B, 1, 28, 28\).*unsqueeze"),
    (torch.rand(2, 3, 28, 28), r"shape \(B, 1, 28, 28\), got \(2, 3, 28, 28\)"),
    (torch.rand(2, 1, 32, 32), r"got \(2, 1, 32, 32\)"),
    ((torch.rand(2, 1, 28, 28) * 255).to(torch.uint8), r"float images .* got dtype torch.uint8"),
    (torch.rand(0, 1, 28, 28), "non-empty batch"),
    (torch.full((2, 1, 28, 28), float("nan")), "NaN"),
    (torch.rand(2, 1, 28, 28) * 255, r"values in \[0, 1\]"),
])
def test_bad_images_get_clear_errors(vae: VAE, x: torch.Tensor, message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        vae(x)
    with pytest.raises((ValueError, TypeError), match=message):
        negative_elbo(vae, x)


def test_bad_latents_and_sample_sizes_get_clear_errors(vae: VAE) -> None:
    with pytest.raises(ValueError, match=r"\(B, 3\)"):
        vae.decode(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="finite"):
        vae.decode(torch.full((2, 3), float("inf")))
    with pytest.raises(ValueError, match="n must be >= 1"):
        vae.sample(0)
    with pytest.raises(TypeError, match="torch.Tensor"):
        vae(images(2).numpy())


def test_recipe_models_start_from_the_same_weights_and_leave_the_global_rng_alone() -> None:
    torch.manual_seed(1)
    a = _initialised(VAE, TINY, seed=0)
    torch.manual_seed(2)
    state = torch.get_rng_state()
    b = _initialised(VAE, TINY, seed=0)
    assert torch.equal(torch.get_rng_state(), state)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
