"""vqlib.judges.codec: H.264 round trips through PyAV, rate arithmetic, code bits; writing videos to files."""

import math

import numpy as np
import pytest
import torch

from vqlib.book import plot
from vqlib.judges.codec import (bits_per_pixel, bpp_at_psnr, entropy_code_bits, h264_roundtrip, header_bits,
                                match_psnr, rate_distortion, uniform_code_bits, video_psnr)

av = pytest.importorskip("av")


def eight_bit(x: torch.Tensor) -> torch.Tensor:
    return (x * 255).round() / 255


def smooth_clips(n=2, t=4, c=1, h=16, w=16) -> torch.Tensor:
    """Blurry moving gradients: compressible, so that qp changes the bits."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    frames = [(0.5 + 0.4 * torch.sin(6 * xx + 4 * yy + 0.5 * j + i)).expand(c, h, w) for i in range(n) for j in range(t)]
    return eight_bit(torch.stack(frames).view(n, t, c, h, w))


@pytest.mark.parametrize("c", [1, 3])
def test_h264_round_trip_shapes_and_bits(c):
    x = smooth_clips(2, 4, c, 16, 12)
    result = h264_roundtrip(x, qp=20)
    assert result.x_hat.shape == x.shape and result.x_hat.dtype == torch.float32
    assert 0 <= result.x_hat.min() and result.x_hat.max() <= 1
    assert result.bits > 0 and result.bits % 8 == 0
    assert video_psnr(x, result.x_hat) > 30


def test_qp_zero_is_lossless_for_gray_8_bit_clips():
    x = eight_bit(torch.rand(2, 4, 1, 8, 8))
    assert torch.equal(h264_roundtrip(x, qp=0).x_hat, x)


def test_coarser_quantiser_spends_fewer_bits_for_lower_psnr():
    x = smooth_clips(2, 4, 1, 16, 16)
    fine, coarse = rate_distortion(x, [10, 45])
    assert coarse["bpp"] < fine["bpp"] and coarse["psnr"] < fine["psnr"]
    bits = h264_roundtrip(x, 45).bits
    assert coarse["bpp"] == pytest.approx(bits / 2 / (4 * 16 * 16))


def test_rate_arithmetic_by_hand():
    assert bits_per_pixel(2048, 8, 32, 32) == pytest.approx(0.25)
    assert uniform_code_bits((4, 8, 8), 256) == 4 * 8 * 8 * 8
    points = [{"bpp": 0.1, "psnr": 20.0}, {"bpp": 0.4, "psnr": 30.0}]
    assert bpp_at_psnr(points, 25.0) == pytest.approx(0.2)  # log-linear: the geometric mean
    with pytest.raises(ValueError, match="outside the measured range"):
        bpp_at_psnr(points, 31.0)


def test_entropy_code_bits_by_hand():
    train = torch.tensor([[0, 0, 0, 1]])  # add-one counts over K=4: 4, 2, 1, 1 of 8
    test = torch.tensor([[0, 1], [2, 3]])
    expected = -(math.log2(4 / 8) + math.log2(2 / 8) + 2 * math.log2(1 / 8)) / 2
    assert entropy_code_bits(train, test, 4) == pytest.approx(expected)
    assert entropy_code_bits(train, test, 4) < uniform_code_bits((2,), 4) + 1  # near 2 · log2 4 here
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        entropy_code_bits(train, test + 2, 4)


def test_video_psnr_by_hand():
    x = torch.zeros(1, 2, 1, 4, 4)
    x_hat = torch.full_like(x, 0.1)
    assert video_psnr(x, x_hat) == pytest.approx(20.0, abs=1e-4)


@pytest.mark.parametrize("x, words", [
    (torch.rand(2, 4, 1, 9, 8), "even frame sizes"),
    (torch.rand(2, 4, 2, 8, 8), "C=2"),
    (torch.rand(4, 1, 8, 8), "(N, T, C, H, W)"),
    (torch.full((1, 2, 1, 8, 8), float("nan")), "NaN"),
])
def test_bad_clips(x, words):
    with pytest.raises(ValueError) as info:
        h264_roundtrip(x, 20)
    assert words in str(info.value)


def test_bad_qp():
    with pytest.raises(ValueError, match="qp"):
        h264_roundtrip(torch.rand(1, 2, 1, 8, 8), 60)


@pytest.mark.parametrize("suffix, c", [(".gif", 1), (".gif", 3), (".mp4", 1), (".mp4", 3)])
def test_write_video(tmp_path, suffix, c):
    frames = torch.rand(5, c, 7, 9)  # odd sizes: the MP4 writer pads to even
    path = tmp_path / f"clip{suffix}"
    plot.write_video(frames, path, fps=5, scale=2)
    assert path.stat().st_size > 0
    if suffix == ".gif":
        from PIL import Image

        with Image.open(path) as image:
            assert image.n_frames == 5 and image.size == (18, 14)
    else:
        with av.open(str(path)) as container:
            decoded = list(container.decode(video=0))
        assert len(decoded) == 5 and (decoded[0].width, decoded[0].height) == (18, 14)
    with pytest.raises(ValueError, match=".gif or .mp4"):
        plot.write_video(frames, tmp_path / "clip.avi")


def test_write_video_round_trips_a_gif_exactly(tmp_path):
    frames = eight_bit(torch.rand(3, 1, 6, 6))
    plot.write_video(frames, tmp_path / "c.gif")
    from PIL import Image, ImageSequence

    with Image.open(tmp_path / "c.gif") as image:
        got = np.stack([np.asarray(f.convert("L")) for f in ImageSequence.Iterator(image)])
    assert np.array_equal(got, (frames[:, 0] * 255).round().byte().numpy())


def test_match_psnr_finds_the_coarsest_quantiser_that_reaches_the_target():
    x = smooth_clips(2, 4, 1, 16, 16)
    points = {p["qp"]: p for p in rate_distortion(x, range(0, 52))}  # brute force: every qp
    target = points[30]["psnr"] - 0.01
    found = match_psnr(x, target)
    assert found["psnr"] >= target
    assert found["qp"] == max(q for q, p in points.items() if p["psnr"] >= target)
    assert found["bpp"] == pytest.approx(points[found["qp"]]["bpp"])
    assert match_psnr(x, 0.0)["qp"] == 51  # even the coarsest setting is good enough


def test_header_bits_are_the_fixed_cost_of_a_stream():
    fixed = header_bits(1, 16, 16)
    assert 0 < fixed < h264_roundtrip(smooth_clips(1, 4, 1, 16, 16), 20).bits
    two = h264_roundtrip(torch.zeros(2, 1, 1, 16, 16), 51).bits  # a second clip costs far less than the first
    assert two - fixed < fixed / 2
