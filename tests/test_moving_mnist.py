"""Moving MNIST: geometry, determinism, split hygiene, headings and captions; the published file's parser."""

import numpy as np
import pytest
import torch

from vqlib.core.download import DownloadError
from vqlib.data import mnist as data
from vqlib.data.mnist import DIRECTIONS, caption, moving_mnist, read_moving_mnist_npy, skimage_clip


@pytest.fixture(scope="module")
def clips():
    return moving_mnist("test", n=12, frames=10, size=40, digit_size=20, num_digits=2, seed=3, profile="smoke")


def test_shapes_dtypes_and_range(clips):
    assert clips.videos.shape == (12, 10, 1, 40, 40) and clips.videos.dtype == torch.float32
    assert clips.labels.shape == clips.directions.shape == (12, 2)
    assert clips.positions.shape == (12, 10, 2, 2) and len(clips) == len(clips.captions) == 12
    assert 0 <= clips.videos.min() and clips.videos.max() <= 1 and clips.videos.amax(dim=(2, 3, 4)).min() > 0.5


def test_deterministic_by_seed_and_split(clips):
    again = moving_mnist("test", n=12, frames=10, size=40, digit_size=20, seed=3, profile="smoke")
    assert torch.equal(again.videos, clips.videos) and again.captions == clips.captions
    other = moving_mnist("test", n=12, frames=10, size=40, digit_size=20, seed=4, profile="smoke")
    assert not torch.equal(other.videos, clips.videos)
    train = moving_mnist("train", n=12, frames=10, size=40, digit_size=20, seed=3, profile="smoke")
    assert not torch.equal(train.videos, clips.videos)


def test_digits_stay_inside_and_move_at_constant_speed(clips):
    room = 40 - 20
    assert clips.positions.min() >= 0 and clips.positions.max() <= room
    steps = clips.positions.diff(dim=1).norm(dim=-1)  # (N, T-1, M): bounces shorten a step, never lengthen it
    assert steps.max() <= 0.1 * room + 1e-4 and steps.median() == pytest.approx(0.1 * room, rel=1e-4)


def test_each_frame_is_the_max_of_its_digits_at_their_positions():
    clip = moving_mnist("train", n=1, frames=3, size=32, digit_size=28, num_digits=1, seed=0, profile="smoke")
    digits = data.mnist("train", profile="smoke").tensors[0]
    r, c = np.rint(clip.positions[0, 0, 0].numpy()).astype(int)
    patch = clip.videos[0, 0, 0, r:r + 28, c:c + 28]
    assert patch.sum() == pytest.approx(clip.videos[0, 0].sum().item())  # nothing outside the digit's box
    assert (digits[:, 0] - patch).abs().flatten(1).amax(1).min() == 0  # it is a real training digit


def test_test_clips_use_only_test_digits():
    clip = moving_mnist("test", n=4, frames=1, size=28, digit_size=28, num_digits=1, profile="smoke")
    test, train = (data.mnist(s, profile="smoke").tensors[0][:, 0] for s in ("test", "train"))
    for frame in clip.videos[:, 0, 0]:
        assert (test - frame).abs().flatten(1).amax(1).min() == 0
        assert (train - frame).abs().flatten(1).amax(1).min() > 0


def test_initial_heading_matches_the_named_direction():
    clips = moving_mnist("train", n=200, frames=2, size=64, num_digits=1, seed=1, profile="smoke")
    start = clips.positions[:, 0, 0]
    room = 64 - 28
    free = ((start > 0.1 * room) & (start < 0.9 * room)).all(dim=1)  # no bounce on the first step
    step = clips.positions[free, 1, 0] - start[free]  # (n, 2) (row, col)
    axis_is_row = step[:, 0].abs() > step[:, 1].abs()
    named = clips.directions[free, 0]
    expected = torch.where(axis_is_row, torch.where(step[:, 0] < 0, 2, 3), torch.where(step[:, 1] < 0, 0, 1))
    assert free.sum() > 100 and torch.equal(named, expected)
    assert set(clips.directions.flatten().tolist()) == set(range(len(DIRECTIONS)))


def test_captions():
    assert caption([3, 7], [0, 3]) == "a 3 moves left while a 7 moves down"
    assert caption([8], [2]) == "an 8 moves up"
    clips = moving_mnist("train", n=3, frames=2, profile="smoke")
    for text, labels, dirs in zip(clips.captions, clips.labels.tolist(), clips.directions.tolist()):
        assert text == caption(labels, dirs)
    with pytest.raises(ValueError, match="one direction per digit"):
        caption([1, 2], [0])
    with pytest.raises(ValueError, match="directions 0..3"):
        caption([1], [4])


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="expected 'train', 'val' or 'test'"):
        moving_mnist("valid", n=2, profile="smoke")
    with pytest.raises(ValueError, match="digit_size"):
        moving_mnist(n=2, size=20, digit_size=28, profile="smoke")
    with pytest.raises(ValueError, match="speed"):
        moving_mnist(n=2, speed=0, profile="smoke")
    with pytest.raises(ValueError, match="≥ 1"):
        moving_mnist(n=0, profile="smoke")


def test_published_file_parser(tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, size=(20, 3, 64, 64), dtype=np.uint8)  # (T, N, 64, 64)
    np.save(tmp_path / "mnist_test_seq.npy", frames)
    videos = read_moving_mnist_npy(tmp_path / "mnist_test_seq.npy")
    assert videos.shape == (3, 20, 1, 64, 64) and videos.dtype == torch.float32
    assert torch.equal(videos[1, 5, 0], torch.from_numpy(frames[5, 1]).float() / 255)
    np.save(tmp_path / "wrong.npy", frames.astype(np.float32))
    with pytest.raises(ValueError, match="expected uint8"):
        read_moving_mnist_npy(tmp_path / "wrong.npy")


def test_published_set_goes_through_the_checked_download(monkeypatch):
    seen = {}

    def offline(url, md5, folder):
        seen.update(url=url, md5=md5)
        raise DownloadError("offline")

    monkeypatch.setattr(data, "fetch", offline)
    with pytest.raises(DownloadError):
        data.published_moving_mnist()
    assert seen == {"url": data.MOVING_MNIST_URL, "md5": "be083ec986bfe91a449d63653c411eb2"}


def test_skimage_clip():
    clip = skimage_clip()
    assert clip.shape == (24, 3, 25, 14) and clip.dtype == torch.float32
    assert 0 <= clip.min() and clip.max() <= 1 and clip.diff(dim=0).abs().sum() > 0  # it moves
