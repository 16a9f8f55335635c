"""Real photographs and textures for chapters 4 and 5, offline first, split by region.

Dimension key: N examples, S image side (height = width), C = 3 colour channels.

- ``photos(split, size, profile, labelled=False)``: a TensorDataset of ``x`` (N, 3, S, S) float32 in
  [0, 1], and with ``labelled=True`` also ``labels`` (N,) long: the index of the image a crop was cut
  from (``IMAGES``; in ``full`` the Flowers-102 class). ``split`` is "train", "val" or "test".
  In ``smoke`` and ``quick`` they are crops of the colour photographs bundled with scikit-image and
  scikit-learn and of three of its textures (brick, grass, gravel). **Every image is split by
  region**: it is cut into square blocks (``GRID`` along its short side), and every eighth block is a
  validation block, another every eighth a test block (``block_split``). A crop lies inside one block,
  so no pixel of a test crop was ever seen in training, while test crops come from the same pictures,
  the same kinds of scene and texture, as the training crops: test measures how a model does on
  unseen parts of the distribution it learned, and validation (carved out the same way) is where
  choices are made. Each image is resized to three scales (a block ``BLOCK_SCALES`` times S), crops
  are drawn at random positions inside the blocks of the split, one image after another (so every
  image is equally represented), and half of the training crops are mirrored, all from a fixed seed:
  the same call gives the same crops. In ``full`` they are the 8,189 photographs of Oxford
  Flowers-102 (Nilsback and Zisserman 2008), downloaded once (checksummed and cached,
  ``vqlib.core.download``), resized and centre-cropped to S × S, every tenth image (by file name)
  held out for testing and the image before it for validation; their labels are the 102 flower
  classes of ``imagelabels.mat``. Offline, a warning says so and the bundled crops are used.
- ``num_labels(profile)``: how many labels ``photos(..., labelled=True)`` uses.
- ``read_jpeg_tar(path, size)``: every JPEG in a (gzipped) tar archive, resized and centre-cropped.

Left out: the official Flowers-102 splits (the book holds out every tenth image instead).
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
# scikit-image and scikit-learn colour photographs (grey, synthetic and text images are left out; of the
# stereo pair only the left view, since the right one shows the same scene) and three grey textures
PHOTOS = ("astronaut", "rocket", "motorcycle_left", "hubble_deep_field", "immunohistochemistry", "retina",
          "china", "chelsea", "coffee", "flower")
TEXTURES = ("brick", "grass", "gravel")
IMAGES = PHOTOS + TEXTURES  # label i of a bundled crop is IMAGES[i]
GRID = 4  # blocks along an image's short side
HELD_OUT = {"val": 2, "test": 5}  # block k (raster order) is held out for this split when k % 8 equals it
BLOCK_SCALES = (1.25, 1.5, 1.75)  # block side of each resized copy, in multiples of the crop side
FLOWERS_URL = "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/102flowers.tgz"
FLOWERS_MD5 = "52808999861908f626f3c1f4e79d11fa"  # as published with torchvision's Flowers102
FLOWERS_LABELS_URL = "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/imagelabels.mat"
FLOWERS_LABELS_MD5 = "e0620be6f572b9609742df49c70aed4d"
FLOWERS_CLASSES = 102
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
    """One bundled image by name -> (H, W, 3) uint8 (decoded once per process; a grey texture gets 3 equal channels)."""
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        return load_sample_image(f"{name}.jpg")
    import skimage.data

    if name.startswith("motorcycle_"):
        left, right, _ = skimage.data.stereo_motorcycle()
        return left if name.endswith("left") else right
    image = getattr(skimage.data, name)()
    return np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image[..., :3]


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


def block_split(row: int, col: int, cols: int) -> str:
    """The split that block (row, col) of an image with ``cols`` block columns belongs to."""
    k = row * cols + col
    return next((split for split, slot in HELD_OUT.items() if k % 8 == slot), "train")


def split_blocks(image: np.ndarray, split: str, block: int) -> list[np.ndarray]:
    """The blocks of ``split`` of an image resized so that a block is ``block`` pixels: [(block, block, 3) uint8].

    The grid is ``GRID`` blocks along the short side; on the long side, the blocks that fit, centred.
    The same blocks belong to the same split at every scale.
    """
    h, w = image.shape[:2]
    scaled = np.asarray(resize_short_side(Image.fromarray(image), GRID * block))  # (H', W', 3)
    rows, cols = scaled.shape[0] // block, scaled.shape[1] // block
    top, left = (scaled.shape[0] - rows * block) // 2, (scaled.shape[1] - cols * block) // 2
    return [scaled[top + r * block: top + (r + 1) * block, left + c * block: left + (c + 1) * block]
            for r in range(rows) for c in range(cols) if block_split(r, c, cols) == split]


def region_crops(images: list[np.ndarray], split: str, n: int, size: int, seed: int,
                 augment: bool) -> tuple[np.ndarray, np.ndarray]:
    """n crops (n, S, S, 3) uint8 from the ``split`` blocks of ``images``, and the index of each one's image (n,).

    Crop i comes from image i mod len(images) (so every image is equally represented), from one of
    its blocks at one of the ``BLOCK_SCALES``, at a random position inside that block.
    ``augment``: mirror half of the crops, at random.
    """
    blocks = [[b for scale in BLOCK_SCALES for b in split_blocks(im, split, round(scale * size))] for im in images]
    rng = np.random.default_rng(seed)
    crops, labels = np.empty((n, size, size, 3), dtype=np.uint8), np.arange(n) % len(images)
    for i, label in enumerate(labels):
        block = blocks[label][rng.integers(len(blocks[label]))]
        top, left = rng.integers(block.shape[0] - size + 1), rng.integers(block.shape[1] - size + 1)
        crop = block[top:top + size, left:left + size]  # (S, S, 3)
        crops[i] = crop[:, ::-1] if augment and rng.random() < 0.5 else crop
    return crops, labels


def to_dataset(images: np.ndarray, labels: np.ndarray | None = None) -> TensorDataset:
    """(N, S, S, 3) uint8 [and (N,) labels] -> TensorDataset of x (N, 3, S, S) float32 in [0, 1] [and labels long]."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(255).contiguous()
    return TensorDataset(x) if labels is None else TensorDataset(x, torch.as_tensor(labels, dtype=torch.long))


@functools.cache
def bundled_crops(split: str, size: int, n: int, seed: int = 0) -> TensorDataset:
    """n crops of the ``split`` regions of the bundled images: x (n, 3, S, S) float32 in [0, 1], labels (n,)."""
    crops, labels = region_crops([bundled_photo(name) for name in IMAGES], check_split(split), n,
                                 check_size(size), seed=seed + SPLITS.index(split), augment=split == "train")
    return to_dataset(crops, labels)


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


def flower_labels() -> np.ndarray:
    """The class (0 to 101) of each Flowers-102 image, in file-name order, from ``imagelabels.mat``."""
    from scipy.io import loadmat

    path = fetch(FLOWERS_LABELS_URL, FLOWERS_LABELS_MD5, folder="flowers102")
    try:
        labels = np.asarray(loadmat(path)["labels"]).reshape(-1).astype(np.int64) - 1
    except (KeyError, ValueError, OSError) as err:
        raise ValueError(f"{path} is not Flowers-102's imagelabels.mat (a MATLAB file with a 'labels' row "
                         f"of classes 1 to {FLOWERS_CLASSES}): {err}; delete it to download it again") from err
    if labels.min(initial=0) < 0 or labels.max(initial=0) >= FLOWERS_CLASSES:
        raise ValueError(f"{path}: labels must be 1 to {FLOWERS_CLASSES}, got {labels.min() + 1} to {labels.max() + 1}")
    return labels


def downloaded_flowers(split: str, size: int, labelled: bool = False) -> TensorDataset:
    """Oxford Flowers-102 at size × size; decoding 8,189 JPEGs takes a minute, so the pixels are cached."""
    def decode() -> dict[str, np.ndarray]:
        return {"images": read_jpeg_tar(fetch(FLOWERS_URL, FLOWERS_MD5, folder="flowers102"), size)[1]}

    arrays = cached_arrays(cache_dir() / "data" / f"flowers102-{size}.npz", decode, "the Flowers-102 download")
    images = arrays["images"]  # (N, S, S, 3) uint8
    slot = np.arange(len(images)) % FLOWERS_TEST_EVERY
    held = {"test": FLOWERS_TEST_EVERY - 1, "val": FLOWERS_TEST_EVERY - 2}
    keep = slot == held[split] if split in held else ~np.isin(slot, list(held.values()))
    if not labelled:
        return to_dataset(images[keep])
    labels = flower_labels()
    if len(labels) != len(images):
        raise ValueError(f"imagelabels.mat has {len(labels)} labels for {len(images)} Flowers-102 images: "
                         "delete both downloads in the cache's flowers102 folder to fetch them again")
    return to_dataset(images[keep], labels[keep])


def uses_flowers(profile: str | None = None) -> bool:
    return check_profile(profile or current_profile()) == "full"


def num_labels(profile: str | None = None) -> int:
    """How many labels ``photos(..., labelled=True)`` uses: the flower classes in ``full``, the bundled images otherwise.

    (Offline in ``full``, the fallback crops use fewer labels than this.)
    """
    return FLOWERS_CLASSES if uses_flowers(profile) else len(IMAGES)


def photos(split: str = "train", size: int | None = None, profile: str | None = None,
           labelled: bool = False) -> TensorDataset:
    """Real photographs: TensorDataset of x (N, 3, S, S) float32 in [0, 1] [, labels (N,)] (see the module docstring).

    ``size`` S (a multiple of 8) defaults to 64 in smoke and quick, 128 in full.
    """
    check_split(split)
    profile = check_profile(profile or current_profile())
    size = check_size(size if size is not None else pick(64, 64, 128, profile=profile))
    n = {"train": pick(64, 2048, 4096, profile=profile), "val": pick(16, 256, 512, profile=profile),
         "test": pick(16, 256, 512, profile=profile)}[split]
    if profile == "full":
        try:
            return downloaded_flowers(split, size, labelled)
        except DownloadError as err:
            warnings.warn(f"{err}; using crops of the bundled photographs instead of Flowers-102", stacklevel=2)
    data = bundled_crops(split, size, n)
    return data if labelled else TensorDataset(data.tensors[0])
