import pytest
import torch

from vqlib.losses.discriminator import PatchGAN, PatchGANConfig, discriminator_loss, generator_loss, receptive_field


def test_receptive_field_is_pix2pix_70_for_three_layers():
    assert receptive_field(3) == 70
    assert receptive_field(1) == 16 and receptive_field(2) == 34


def test_receptive_field_matches_the_gradient_support():
    """A logit depends on exactly receptive_field(n) × receptive_field(n) input pixels."""
    for n in (1, 2):
        torch.manual_seed(0)
        disc = PatchGAN(PatchGANConfig(width=4, n_layers=n)).eval()
        x = torch.randn(1, 3, 64, 64, requires_grad=True)
        logits = disc(x)
        logits[0, 0, logits.shape[2] // 2, logits.shape[3] // 2].backward()
        rows = x.grad.abs().sum(dim=(0, 1, 3)).nonzero()
        cols = x.grad.abs().sum(dim=(0, 1, 2)).nonzero()
        assert int(rows.max() - rows.min() + 1) == receptive_field(n)
        assert int(cols.max() - cols.min() + 1) == receptive_field(n)


def test_output_shape_one_logit_per_patch():
    disc = PatchGAN(PatchGANConfig(width=8, n_layers=3))
    assert disc(torch.rand(2, 3, 256, 256)).shape == (2, 1, 30, 30)  # the paper's 30×30 map of 70×70 patches
    disc2 = PatchGAN(PatchGANConfig(width=8, n_layers=2))
    assert disc2(torch.rand(5, 3, 32, 32)).shape == (5, 1, 6, 6)


def test_hinge_losses_against_hand_computed_values():
    real = torch.tensor([2.0, 0.5, -1.0, 0.0])
    fake = torch.tensor([-2.0, 0.5, 1.0, -0.25])
    # relu(1 - real) = [0, 0.5, 2, 1] -> mean 0.875; relu(1 + fake) = [0, 1.5, 2, 0.75] -> mean 1.0625
    torch.testing.assert_close(discriminator_loss(real, fake), torch.tensor(0.5 * (0.875 + 1.0625)))
    torch.testing.assert_close(generator_loss(fake), torch.tensor(-(-2.0 + 0.5 + 1.0 - 0.25) / 4))


def test_discriminator_loss_is_zero_beyond_the_margin():
    assert discriminator_loss(torch.full((3,), 1.5), torch.full((3,), -1.5)) == 0


def test_bad_inputs_are_refused_with_a_clear_message():
    disc = PatchGAN(PatchGANConfig(width=4, n_layers=2))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        disc(torch.rand(2, 1, 32, 32))
    with pytest.raises(ValueError, match="at least 12"):
        disc(torch.rand(2, 3, 8, 8))
    with pytest.raises(TypeError, match="floating-point"):
        disc(torch.zeros(2, 3, 32, 32, dtype=torch.long))
    with pytest.raises(TypeError, match="logits"):
        generator_loss(torch.zeros(0))
    with pytest.raises(ValueError, match="n_layers"):
        PatchGANConfig(n_layers=0)


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    disc = PatchGAN(PatchGANConfig(width=4, n_layers=2))
    x = torch.rand(2, 3, 32, 32)
    disc(x)  # a training-mode pass moves the BatchNorm statistics
    disc.eval()
    torch.save(disc.state_dict(), tmp_path / "d.pt")
    other = PatchGAN(PatchGANConfig(width=4, n_layers=2))
    other.load_state_dict(torch.load(tmp_path / "d.pt"))
    torch.testing.assert_close(other.eval()(x), disc(x))
