"""vqlib.tokenizers.superres and its chapter 9 recipe: shapes, the bicubic base, gradients, state,
an overfit run, the cached recipe, bad input."""

import dataclasses

import pytest
import torch

from vqlib.core.pixels import enlarge, shrink
from vqlib.recipes.ch09_video_generation import decode_with_codes, super_resolve, train_super_resolution
from vqlib.tokenizers.superres import SuperResConfig, VideoSuperRes, superres_loss
from vqlib.tokenizers.video import VideoVQVAE, VideoVQVAEConfig
from vqlib.training.loop import TrainConfig

B, T, S, D = 2, 4, 8, 4  # clips, frames, low-resolution side, code dim
CONFIG = SuperResConfig(code_dim=D, time_downsample=2, space_downsample=4, hidden=8, layers=3)


def inputs(b: int = B) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.rand(b, T, 1, S, S), torch.randn(b, D, T // 2, S // 4, S // 4)


def test_shapes_and_a_zero_correction_gives_bicubic():
    torch.manual_seed(0)
    model = VideoSuperRes(CONFIG)
    x_low, z_q = inputs()
    out = model(x_low, z_q)
    assert out.shape == (B, T, 1, 2 * S, 2 * S) and out.dtype == torch.float32
    last = model.body[-1]
    torch.nn.init.zeros_(last.weight), torch.nn.init.zeros_(last.bias)
    torch.testing.assert_close(model(x_low, z_q), enlarge(x_low, 2))
    three = VideoSuperRes(dataclasses.replace(CONFIG, scale=3))
    assert three(x_low, z_q).shape == (B, T, 1, 3 * S, 3 * S)


def test_each_frame_reads_the_codes_of_its_own_latent_frame():
    torch.manual_seed(0)
    model = VideoSuperRes(CONFIG).eval()
    x_low, z_q = inputs()
    changed = z_q.clone()
    changed[:, :, 1] += 1.0  # latent frame 1 covers frames 2 and 3
    diff = (model(x_low, changed) - model(x_low, z_q)).abs().flatten(2).amax(2)  # (B, T)
    assert (diff[:, :2] == 0).all() and (diff[:, 2:] > 0).all()


def test_finite_loss_gradients_reach_pixels_and_codes_and_eval_changes_no_buffer():
    torch.manual_seed(0)
    model = VideoSuperRes(CONFIG)
    x_low, z_q = inputs()
    terms = superres_loss(model, (x_low, z_q, torch.rand(B, T, 1, 2 * S, 2 * S)))
    assert torch.isfinite(terms["loss"]) and terms["bicubic_mse"] > 0
    terms["loss"].backward()
    assert model.pixels.weight.grad.abs().sum() > 0 and model.codes.weight.grad.abs().sum() > 0


def test_overfits_one_batch_well_below_bicubic():
    torch.manual_seed(0)
    model = VideoSuperRes(CONFIG)
    x_low, z_q = inputs()
    x_high = torch.rand(B, T, 1, 2 * S, 2 * S)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = superres_loss(model, (x_low, z_q, x_high))
    for _ in range(300):
        optimiser.zero_grad()
        loss = superres_loss(model, (x_low, z_q, x_high))["loss"]
        loss.backward()
        optimiser.step()
    assert loss.item() < 0.5 * first["bicubic_mse"].item(), (loss.item(), first["bicubic_mse"].item())


def test_recipe_trains_once_then_loads_and_super_resolves_codes():
    torch.manual_seed(0)
    tokenizer = VideoVQVAE(VideoVQVAEConfig(frames=T, size=S, channels=1, hidden=8, res_hidden=4, res_blocks=1,
                                            codebook_size=16, code_dim=D, space_downsample=4)).eval()
    videos_high = torch.rand(6, T, 1, 2 * S, 2 * S)
    train = TrainConfig(steps=20, batch_size=4, lr=1e-2, log_every=10)
    model = VideoSuperRes(CONFIG)
    history = train_super_resolution(model, tokenizer, videos_high, train, "test-superres", progress=False)
    again = VideoSuperRes(CONFIG)
    history2 = train_super_resolution(again, tokenizer, videos_high, train, "test-superres", progress=False)
    assert history2.steps == history.steps == 20
    x_low, z_q = decode_with_codes(tokenizer, tokenizer.encode(shrink(videos_high, 2)))
    assert x_low.shape == (6, T, 1, S, S) and z_q.shape == (6, D, T // 2, S // 4, S // 4)
    out = super_resolve(again, x_low, z_q, batch_size=4)
    assert out.shape == videos_high.shape and out.min() >= 0 and out.max() <= 1
    torch.testing.assert_close(out, model.eval()(x_low, z_q).clamp(0, 1))


def test_bad_input_gets_clear_errors():
    model = VideoSuperRes(CONFIG)
    x_low, z_q = inputs()
    with pytest.raises(ValueError, match=r"x_low must be float clips"):
        model(x_low[:, :, :, :, :].squeeze(2), z_q)
    with pytest.raises(ValueError, match=r"x_low must be float clips"):
        model(x_low[:0], z_q[:0])
    with pytest.raises(ValueError, match="z_q must be the code vectors"):
        model(x_low, z_q[:, :, :1])
    with pytest.raises(ValueError, match="tokenizer's strides"):
        model(torch.rand(B, 3, 1, S, S), z_q)
    with pytest.raises(TypeError, match="float64"):
        model(x_low.double(), z_q.double())
    with pytest.raises(ValueError, match="scale >= 2"):
        SuperResConfig(code_dim=D, time_downsample=2, space_downsample=4, scale=1)
