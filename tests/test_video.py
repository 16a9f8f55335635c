"""vqlib.tokenizers.video: shapes, errors, gradients, state, an overfit run, the training recipe; video plots."""

import dataclasses
import math

import pytest
import torch

from vqlib.book import plot
from vqlib.recipes.ch08_video_tokenizers import (TIME_MIXING, equal_bits_configs, evaluate_video_vqvae,
                                                 psnr_per_frame, reconstruct_with_indices, time_mixing_configs,
                                                 time_mixing_train_config, train_time_mixing_tokenizer,
                                                 train_video_vqvae)
from vqlib.tokenizers.base import TokenizerOutput
from vqlib.tokenizers.video import (ATTENTION_ACROSS_FRAMES, FrameLocalAttention, FrameVQVAE, TemporalAttention,
                                    VideoVQVAE, VideoVQVAEConfig)
from vqlib.tokenizers.vqvae import vqvae_loss

TINY = dict(frames=4, size=8, channels=1, hidden=8, res_hidden=4, res_blocks=1, codebook_size=16, code_dim=4,
            space_downsample=2, heads=2)


def config(**overrides) -> VideoVQVAEConfig:
    return VideoVQVAEConfig(**{**TINY, **overrides})


def tiny(temporal: str = "conv3d", **overrides) -> torch.nn.Module:
    if temporal == "frame":
        return FrameVQVAE(config(time_downsample=1, **overrides))
    return VideoVQVAE(config(temporal=temporal, **overrides))


def clips(b: int = 2, t: int = 4, c: int = 1, s: int = 8) -> torch.Tensor:
    return torch.rand(b, t, c, s, s)


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


KINDS = ["conv3d", "attention", "frame"]


@pytest.mark.parametrize("kind", ["conv3d", *ATTENTION_ACROSS_FRAMES])
@pytest.mark.parametrize("ft, fs, t, s, c", [(1, 2, 4, 8, 1), (2, 2, 4, 8, 3), (2, 4, 8, 16, 1), (4, 2, 8, 8, 1),
                                            (2, 8, 4, 16, 1)])
def test_video_shapes_and_dtypes(kind, ft, fs, t, s, c):
    model = tiny(kind, frames=t, size=s, channels=c, time_downsample=ft, space_downsample=fs)
    x = clips(3, t, c, s)
    out = model(x)
    assert isinstance(out, TokenizerOutput)
    latent = (t // ft, s // fs, s // fs)
    assert model.latent_shape == latent
    assert out.x_hat.shape == x.shape and out.x_hat.dtype == torch.float32
    assert out.indices.shape == (3, *latent) and out.indices.dtype == torch.long
    assert out.z_e.shape == out.z_q.shape == (3, 4, *latent)
    assert out.loss.shape == () and torch.isfinite(out.loss)
    assert model.encode(x).shape == (3, *latent)
    assert model.decode(out.indices).shape == x.shape


@pytest.mark.parametrize("fs, c", [(2, 1), (4, 3)])
def test_frame_baseline_shapes(fs, c):
    model = tiny("frame", space_downsample=fs, channels=c, size=16)
    x = clips(2, 4, c, 16)
    out = model(x)
    assert isinstance(out, TokenizerOutput)
    assert model.latent_shape == (4, 16 // fs, 16 // fs)
    assert out.x_hat.shape == x.shape and out.indices.shape == (2, *model.latent_shape)
    assert out.z_e.shape == (2, 4, *model.latent_shape)
    assert model.encode(x).shape == out.indices.shape and model.decode(out.indices).shape == x.shape


def test_conv3d_model_takes_other_clip_lengths():  # fully convolutional: T and S may differ from the config
    model = tiny("conv3d", time_downsample=2)
    assert model(clips(1, 8, 1, 16)).indices.shape == (1, 4, 8, 8)


@pytest.mark.parametrize("kind, mixes", [("conv3d", True), ("attention", True), ("frame", False)])
def test_only_temporal_models_mix_frames(kind, mixes):
    # Changing the last frame changes the first frame's reconstruction only if the model mixes time.
    model = tiny(kind, time_downsample=1) if kind != "frame" else tiny(kind)
    model(clips())
    model.eval()
    x = clips(1, 4)
    y = x.clone()
    y[:, -1] = torch.rand_like(y[:, -1])
    with torch.no_grad():
        z_first, z_first_changed = model(x).z_e[:, :, 0], model(y).z_e[:, :, 0]
    assert (not torch.allclose(z_first, z_first_changed)) == mixes


def test_temporal_attention_matches_torch_multihead_attention():
    torch.manual_seed(0)
    block = TemporalAttention(channels=8, heads=2, max_frames=5)
    reference = torch.nn.MultiheadAttention(8, 2, batch_first=True)
    with torch.no_grad():
        reference.in_proj_weight.copy_(block.qkv.weight)
        reference.in_proj_bias.copy_(block.qkv.bias)
        reference.out_proj.weight.copy_(block.out.weight)
        reference.out_proj.bias.copy_(block.out.bias)
    x = torch.randn(2, 8, 5, 3, 4)  # (B, F, T, h, w)
    seq = x.permute(0, 3, 4, 2, 1).reshape(-1, 5, 8)  # every position's sequence of frames
    q = block.norm(seq) + block.pos
    expected = seq + reference(q, q, q, need_weights=False)[0]
    got = block(x).permute(0, 3, 4, 2, 1).reshape(-1, 5, 8)
    torch.testing.assert_close(got, expected)


def test_frame_local_attention_by_hand():
    # Each frame attends only to itself: x + W_o·(W_v·(LN(x) + pos_t) + b_v) + b_o, frame by frame.
    torch.manual_seed(0)
    block = FrameLocalAttention(channels=8, heads=2, max_frames=5)
    x = torch.randn(2, 8, 5, 3, 4)  # (B, F, T, h, w)
    seq = x.permute(0, 3, 4, 2, 1)  # (B, h, w, T, F)
    w_v, b_v = block.qkv.weight[16:], block.qkv.bias[16:]  # the value third of the q, k, v projection
    v = (block.norm(seq) + block.pos) @ w_v.T + b_v
    expected = seq + v @ block.out.weight.T + block.out.bias
    torch.testing.assert_close(block(x), expected.permute(0, 4, 3, 1, 2))
    full = TemporalAttention(channels=8, heads=2, max_frames=5)
    assert [n for n, _ in full.named_parameters()] == [n for n, _ in block.named_parameters()]
    full.load_state_dict(block.state_dict())  # the same weights, now reading across frames
    assert not torch.allclose(full(x), block(x))


@pytest.mark.parametrize("temporal", list(ATTENTION_ACROSS_FRAMES))
def test_time_is_mixed_exactly_where_the_config_says(temporal):
    # Changing the last frame changes what the first frame's code (encoder) or reconstruction
    # (decoder, from the codes' vectors) depends on only in the parts that attend across frames.
    torch.manual_seed(0)
    model = tiny(temporal, time_downsample=1).eval()
    x = clips(1, 4)
    y = x.clone()
    y[:, -1] = torch.rand_like(y[:, -1])
    z = torch.randn(1, 4, 4, 4, 4)  # (B, D, T, h, w) code vectors
    z2 = z.clone()
    z2[:, :, -1] = torch.randn_like(z2[:, :, -1])
    with torch.no_grad():
        encoder_mixes = not torch.allclose(model(x).z_e[:, :, 0], model(y).z_e[:, :, 0])
        decoder_mixes = not torch.allclose(model.decoder(z)[:, 0], model.decoder(z2)[:, 0])
    assert (encoder_mixes, decoder_mixes) == ("encoder" in ATTENTION_ACROSS_FRAMES[temporal],
                                              "decoder" in ATTENTION_ACROSS_FRAMES[temporal])


def test_the_ablation_arms_have_the_same_parameters_and_round_trip(tmp_path):
    models = {t: tiny(t, time_downsample=1) for t in ATTENTION_ACROSS_FRAMES}
    shapes = {t: [(n, p.shape) for n, p in m.named_parameters()] for t, m in models.items()}
    assert all(s == shapes["attention"] for s in shapes.values())  # same names, same shapes
    x = clips(2, 4)
    for temporal, model in models.items():  # a save/load round trip gives the same output
        model.eval()
        torch.save(model.state_dict(), tmp_path / f"{temporal}.pt")
        again = tiny(temporal, time_downsample=1).eval()
        again.load_state_dict(torch.load(tmp_path / f"{temporal}.pt", weights_only=True))
        assert torch.equal(again(x).x_hat, model(x).x_hat) and torch.equal(again.encode(x), model.encode(x))


def moving_squares(n: int = 4, t: int = 4, s: int = 8) -> torch.Tensor:
    """A 3×3 bright square moving one pixel per frame from a different start in each clip."""
    x = torch.zeros(n, t, 1, s, s)
    for i in range(n):
        for j in range(t):
            r, c = i % (s - 3 - t) + j, (2 * i) % (s - 3) + 0
            x[i, j, 0, r:r + 3, c:c + 3] = 1.0
    return x


@pytest.mark.parametrize("kind", ["conv3d", "frame"])
def test_overfit_one_batch(kind):
    # 150 Adam steps on four tiny moving-square clips cut the training loss at least 4-fold (~10-fold seen).
    torch.manual_seed(0)
    x = moving_squares(4, 4, 12)
    model = tiny(kind, size=12, hidden=16, res_hidden=8, codebook_size=32)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(150):
        loss = vqvae_loss(model, (x,))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 4, (losses[0], losses[-1])


# ----------------------------------------------------------------------------- bad input and config

@pytest.mark.parametrize("x, error, words", [
    (torch.rand(2, 4, 1, 8), ValueError, "(B, T, 1, H, W)"),
    (torch.rand(4, 1, 8, 8), ValueError, "(B, T, 1, H, W)"),
    (torch.rand(2, 4, 3, 8, 8), ValueError, "(B, T, 1, H, W)"),
    (torch.rand(2, 1, 4, 8, 8), ValueError, "frames before channels"),
    (torch.rand(2, 3, 1, 8, 8), ValueError, "multiple of the temporal downsampling factor 2"),
    (torch.rand(2, 4, 1, 8, 9), ValueError, "spatial downsampling factor 2"),
    (torch.rand(2, 4, 1, 9, 8), ValueError, "10×8"),
    (torch.rand(0, 4, 1, 8, 8), ValueError, "empty"),
    (torch.full((2, 4, 1, 8, 8), float("nan")), ValueError, "NaN"),
    (torch.rand(2, 4, 1, 8, 8) * 255, ValueError, "divide 8-bit frames by 255"),
    (torch.randint(0, 255, (2, 4, 1, 8, 8)), TypeError, "floating-point"),
])
def test_bad_videos(x, error, words):
    with pytest.raises(error) as info:
        tiny("conv3d", time_downsample=2)(x)
    assert words in str(info.value)


def test_bad_videos_are_refused_by_encode_and_by_the_baseline_too():
    with pytest.raises(ValueError, match="multiple of the temporal"):
        tiny("conv3d", time_downsample=2).encode(clips(2, 3))
    with pytest.raises(ValueError, match=r"\(B, T, 1, H, W\)"):
        tiny("frame")(torch.rand(2, 4, 8, 8))
    with pytest.raises(ValueError, match="at most frames=4"):
        tiny("attention")(clips(1, 8))


def test_bad_code_grid():
    with pytest.raises(ValueError, match=r"\(B, t, h, w\)"):
        tiny().decode(torch.zeros(2, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        tiny().decode(torch.full((1, 2, 4, 4), 16, dtype=torch.long))


def test_frame_baseline_needs_one_code_map_per_frame():
    with pytest.raises(ValueError, match="time_downsample=1"):
        FrameVQVAE(config(time_downsample=2))


@pytest.mark.parametrize("field, value", [("time_downsample", 3), ("space_downsample", 1), ("space_downsample", 6),
                                          ("frames", 6), ("size", 9), ("size", (8, 9)), ("size", (8, 8, 8)), ("temporal", "lstm"), ("heads", 3),
                                          ("codebook_size", 0), ("res_blocks", -1)])
def test_bad_config(field, value):
    overrides = {"time_downsample": 4} if field == "frames" else {}
    if field == "heads":
        overrides["temporal"] = "attention"
    with pytest.raises(ValueError, match=field):
        config(**{**overrides, field: value})


def test_config_is_frozen_sized_by_profile_and_counts_bits():
    cfg = VideoVQVAEConfig.for_profile("smoke", frames=8, size=32, channels=1, time_downsample=2)
    assert (cfg.frames, cfg.size) == (8, 32)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.frames = 4
    assert VideoVQVAEConfig.for_profile("smoke").hidden < VideoVQVAEConfig.for_profile("quick").hidden
    # by hand: 8/2 × 32/4 × 32/4 = 256 positions of log2(16) = 4 bits
    assert cfg.latent_shape == (4, 8, 8) and cfg.bits == 256 * 4


@pytest.mark.parametrize("profile", ["smoke", "quick", "full"])
def test_equal_bits_configs_spend_the_same_bits(profile):
    configs = equal_bits_configs(profile)
    bits = {k: math.prod(c.latent_shape) * math.log2(c.codebook_size) for k, c in configs.items()}
    assert len(set(bits.values())) == 1, bits
    assert configs["frame"].time_downsample == 1 and configs["attention"].temporal == "attention"


@pytest.mark.parametrize("profile", ["smoke", "quick", "full"])
def test_time_mixing_configs_differ_only_in_where_time_is_mixed(profile):
    arms = time_mixing_configs(profile)
    frame = equal_bits_configs(profile)["frame"]
    assert list(arms) == ["none", "encoder", "decoder", "both"] == list(TIME_MIXING)
    assert {c.temporal for c in arms.values()} == set(ATTENTION_ACROSS_FRAMES)
    for where, c in arms.items():  # the frame-by-frame codes, so the bits of the chapter's three
        assert (c.latent_shape, c.codebook_size, c.bits) == (frame.latent_shape, frame.codebook_size, frame.bits)
        assert dataclasses.replace(c, temporal="attention") == arms["both"]
        parts = ATTENTION_ACROSS_FRAMES[c.temporal]
        assert parts == {"none": (), "encoder": ("encoder",), "decoder": ("decoder",),
                         "both": ("encoder", "decoder")}[where]
    budget = time_mixing_train_config(profile)
    assert budget.steps >= 1 and budget.max_seconds is None


def test_train_time_mixing_tokenizer_refuses_an_unknown_arm():
    with pytest.raises(ValueError, match="'encoder', 'decoder'"):
        train_time_mixing_tokenizer("middle", profile="smoke")


# ----------------------------------------------------------------------------- metrics and training

def test_psnr_per_frame_by_hand():
    x = torch.zeros(2, 3, 1, 4, 4)
    x_hat = x.clone()
    x_hat[0, 1] = 0.1  # mse 0.01 -> 20 dB
    x_hat[1, 2] = 1.5  # clipped to 1: mse 1 -> 0 dB
    p = psnr_per_frame(x, x_hat)
    assert p.shape == (2, 3)
    assert p[0, 1].item() == pytest.approx(20.0, abs=1e-4) and p[1, 2].item() == pytest.approx(0.0, abs=1e-6)
    assert p[0, 0].item() == pytest.approx(120.0)  # exact frames: the mse floor of 1e-12


def test_train_video_vqvae_trains_once_then_loads_and_evaluates():
    x = moving_squares(8, 4, 8)
    cfg = config()
    model, history = train_video_vqvae(x, cfg, "test-video", eval_videos=x[:4], profile="smoke", progress=False,
                                       steps=3)
    assert not model.training and history.steps == 3
    assert set(history.eval[-1]) >= {"psnr", "usage", "perplexity"}
    again, history2 = train_video_vqvae(x, cfg, "test-video", eval_videos=x[:4], profile="smoke", progress=False,
                                        steps=3)
    assert history2.seconds == history.seconds  # loaded, not retrained
    assert torch.equal(model(x).x_hat, again(x).x_hat)
    _, other = train_video_vqvae(x.flip(0), cfg, "test-video", profile="smoke", progress=False, steps=3)
    assert other.seconds != history.seconds  # another training set is another checkpoint
    scores = evaluate_video_vqvae(model, x)
    x_hat, indices = reconstruct_with_indices(model, x, batch_size=3)  # in batches of 3, one forward pass each
    assert torch.equal(indices, torch.cat([model.encode(x[i:i + 3]) for i in range(0, len(x), 3)]))
    assert not model.training and x_hat.shape == x.shape
    assert scores["psnr"] == pytest.approx(psnr_per_frame(x, x_hat).mean().item(), rel=1e-5)
    frame_model, _ = train_video_vqvae(x, config(time_downsample=1), "test-video-frame", profile="smoke",
                                       progress=False, frame_wise=True, steps=2)
    assert isinstance(frame_model, FrameVQVAE)


def test_animate_videos_plays_side_by_side(monkeypatch):
    monkeypatch.setenv("VQLIB_BUILD", "1")
    html = plot.animate_videos([torch.rand(3, 1, 8, 8), torch.rand(3, 3, 8, 8)], ["a", "b"]).data
    assert "<script" in html and "animation" in html.lower()
    with pytest.raises(ValueError, match="same number of frames"):
        plot.animate_videos([torch.rand(3, 1, 8, 8), torch.rand(2, 1, 8, 8)])
    with pytest.raises(ValueError, match="1 labels for 2 clips"):
        plot.animate_videos([torch.rand(3, 1, 8, 8)] * 2, ["a"])


@pytest.mark.parametrize("kind", KINDS)
def test_rectangular_frames(kind):
    model = tiny(kind, size=(8, 4)) if kind == "frame" else tiny(kind, size=(8, 4), time_downsample=2)
    x = torch.rand(2, 4, 1, 8, 4)
    out = model(x)
    assert model.latent_shape == out.indices.shape[1:] and model.decode(model.encode(x)).shape == x.shape
