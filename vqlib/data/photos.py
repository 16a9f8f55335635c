"""Real photographs for chapter 4, offline first.

Dimension key: N examples, S image side (height = width), C = 3 colour channels.

- ``photos(split, size)``: a TensorDataset of ``x`` (N, 3, S, S) float32 in [0, 1].
  ``split`` is "train", "val" or "test". In ``smoke`` and ``quick`` they are crops of the colour
  photographs bundled with scikit-image and scikit-learn. Training, validation and test crops come
  from *different* photographs (the validation photograph is carved from the training ones), so
  validation and test measure how a model does on pictures it has never seen; choices are made on
  validation, and the test crops are scored once, for a chapter's final numbers. Every photo is first resized to a
  few scales (short side 1.5 to 4 times S), then crops are drawn at random scales and positions,
  and half of the training crops are mirrored, all from a fixed seed: the same call gives the
  same crops. In ``full`` they are the 8,189 photographs of Oxford Flowers-102 (Nilsback and Zisserman
  2008), downloaded once (checksummed and cached, ``vqlib.core.download``), resized and centre-cropped
  to S × S, every tenth image (by file name) held out for testing and the image before it for
  validation; offline, a warning says so and the bundled crops are used.
- ``read_jpeg_tar(path, size)``: every JPEG in a (gzipped) tar archive, resized and centre-cropped.

Left out: the official Flowers-102 splits (they need the labels file and scipy).
"""

from __future__ import annotations

import functools
import io
import tarfile
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import TensorDataset

from vqlib.core.cache import cache_dir, cached_arrays
from vqlib.core.download import DownloadError, fetch
from vqlib.core.profile import check_profile, current_profile, pick

SPLITS = ("train", "val", "test")
# scikit-image and scikit-learn photographs (grey, synthetic and text images are left out)
TRAIN_PHOTOS = ("astronaut", "rocket", "motorcycle_left", "motorcycle_right", "hubble_deep_field",
                "immunohistochemistry", "retina")
VAL_PHOTOS = ("china",)  # carved from the training photographs: choices are made on it
TEST_PHOTOS = ("chelsea", "coffee", "flower")  # never seen in training or validation
SPLIT_PHOTOS = {"train": TRAIN_PHOTOS, "val": VAL_PHOTOS, "test": TEST_PHOTOS}
SCALES = (1.5, 2.0, 3.0, 4.0)  # short side of each resized copy, in multiples of the crop size
FLOWERS_URL = "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/102flowers.tgz"
FLOWERS_MD5 = "52808999861908f626f3c1f4e79d11fa"  # as published with torchvision's Flowers102
FLOWERS_TEST_EVERY = 10  # every tenth image (sorted by name) is a test image


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: expected 'train', 'val' or 'test'")
    return split


def check_size(size: int) -> int:
    if int(size) != size or size < 8 or size % 8:
        raise ValueError(f"size must be a multiple of 8 (the VQ-VAE-2 downsamples by 8), at least 8, got {size!r}")
    return int(size)


@functools.cache
def bundled_photo(name: str) -> np.ndarray:
    """One bundled colour photograph by name -> (H, W, 3) uint8 (decoded once per process)."""
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        return load_sample_image(f"{name}.jpg")
    import skimage.data

    if name.startswith("motorcycle_"):
        left, right, _ = skimage.data.stereo_motorcycle()
        return left if name.endswith("left") else right
    return getattr(skimage.data, name)()[..., :3]


def resize_short_side(image: Image.Image, side: int) -> Image.Image:
    """Resize (antialiased) so that the shorter side is ``side`` pixels, keeping the aspect ratio."""
    scale = side / min(image.size)
    return image.resize((max(side, round(image.width * scale)), max(side, round(image.height * scale))),
                        Image.Resampling.LANCZOS)


def center_crop(image: Image.Image, size: int) -> np.ndarray:
    """Resize the short side to ``size``, then cut the central size × size square -> (S, S, 3) uint8."""
    image = resize_short_side(image.convert("RGB"), size)
    left, top = (image.width - size) // 2, (image.height - size) // 2
    return np.asarray(image.crop((left, top, left + size, top + size)))


def random_crops(images: list[np.ndarray], n: int, size: int, seed: int, augment: bool) -> np.ndarray:
    """n crops (n, S, S, 3) uint8 at random scales (``SCALES``) and positions.

    ``augment``: mirror half of the crops, at random.
    """
    pyramid = [np.asarray(resize_short_side(Image.fromarray(im), min(round(s * size), min(im.shape[:2]))))
               for im in images for s in SCALES]
    rng = np.random.default_rng(seed)
    crops = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        level = pyramid[rng.integers(len(pyramid))]
        top, left = rng.integers(level.shape[0] - size + 1), rng.integers(level.shape[1] - size + 1)
        crop = level[top:top + size, left:left + size]  # (S, S, 3)
        crops[i] = crop[:, ::-1] if augment and rng.random() < 0.5 else crop
    return crops


def to_dataset(images: np.ndarray) -> TensorDataset:
    """(N, S, S, 3) uint8 -> TensorDataset of x (N, 3, S, S) float32 in [0, 1]."""
    return TensorDataset(torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255).contiguous())  # (N, 3, S, S)


@functools.cache
def bundled_crops(split: str, size: int, n: int, seed: int = 0) -> TensorDataset:
    """n crops of the bundled training, validation or test photographs: x (n, 3, S, S) float32 in [0, 1]."""
    names = SPLIT_PHOTOS[check_split(split)]
    return to_dataset(random_crops([bundled_photo(name) for name in names], n, check_size(size),
                                   seed=seed + SPLITS.index(split), augment=split == "train"))


def read_jpeg_tar(path: str | Path, size: int) -> tuple[list[str], np.ndarray]:
    """Names and pixels of every ``.jpg`` in a tar archive (gzipped or not), sorted by name:
    (names, (N, S, S, 3) uint8), each photo resized and centre-cropped to size × size."""
    names, images = [], []
    with tarfile.open(path) as archive:
        members = sorted((m for m in archive if m.isfile() and m.name.lower().endswith((".jpg", ".jpeg"))),
                         key=lambda m: m.name)
        if not members:
            raise ValueError(f"{path} holds no JPEG files")
        for member in members:
            with Image.open(io.BytesIO(archive.extractfile(member).read())) as image:
                images.append(center_crop(image, size))
            names.append(member.name)
    return names, np.stack(images)


def downloaded_flowers(split: str, size: int) -> TensorDataset:
    """Oxford Flowers-102 at size × size; decoding 8,189 JPEGs takes a minute, so the pixels are cached."""
    def decode() -> dict[str, np.ndarray]:
        return {"images": read_jpeg_tar(fetch(FLOWERS_URL, FLOWERS_MD5, folder="flowers102"), size)[1]}

    arrays = cached_arrays(cache_dir() / "data" / f"flowers102-{size}.npz", decode, "the Flowers-102 download")
    images = arrays["images"]  # (N, S, S, 3) uint8
    slot = np.arange(len(images)) % FLOWERS_TEST_EVERY
    held = {"test": FLOWERS_TEST_EVERY - 1, "val": FLOWERS_TEST_EVERY - 2}
    keep = slot == held[split] if split in held else ~np.isin(slot, list(held.values()))
    return to_dataset(images[keep])


def photos(split: str = "train", size: int | None = None, profile: str | None = None) -> TensorDataset:
    """Real photographs: TensorDataset of x (N, 3, S, S) float32 in [0, 1] (see the module docstring).

    ``size`` S (a multiple of 8) defaults to 64 in smoke and quick, 128 in full.
    """
    check_split(split)
    profile = check_profile(profile or current_profile())
    size = check_size(size if size is not None else pick(64, 64, 128, profile=profile))
    n = {"train": pick(64, 2048, 4096, profile=profile), "val": pick(16, 256, 512, profile=profile),
         "test": pick(16, 256, 512, profile=profile)}[split]
    if profile == "full":
        try:
            return downloaded_flowers(split, size)
        except DownloadError as err:
            warnings.warn(f"{err}; using crops of the bundled photographs instead of Flowers-102", stacklevel=2)
    return bundled_crops(split, size, n)
