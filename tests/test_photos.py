import hashlib
import io
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from vqlib.data import photos


def test_bundled_crops_have_the_right_shape_range_and_repeat():
    train, test = photos.photos("train", profile="smoke"), photos.photos("test", profile="quick")
    x, x_test = train.tensors[0], test.tensors[0]
    assert x.shape == (64, 3, 64, 64) and x_test.shape == (256, 3, 64, 64) and x.dtype == torch.float32
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.std() > 0.05
    photos.bundled_crops.cache_clear()
    assert torch.equal(photos.photos("train", profile="smoke").tensors[0], x)  # deterministic, not cached
    assert photos.photos("train", size=32, profile="smoke").tensors[0].shape == (64, 3, 32, 32)


def test_train_val_and_test_crops_come_from_disjoint_regions(monkeypatch):
    grid = photos.GRID
    side = 40 * grid  # a square fake image: grid × grid blocks of 40 pixels, each its own grey level
    levels = 10 + 15 * np.arange(grid * grid)  # block k = row · grid + col has grey level 10 + 15 k
    image = np.kron(levels.reshape(grid, grid), np.ones((side // grid, side // grid))).astype(np.uint8)
    monkeypatch.setattr(photos, "bundled_photo", lambda name: np.repeat(image[..., None], 3, axis=2))
    photos.bundled_crops.cache_clear()
    try:
        blocks = {}
        for split in photos.SPLITS:
            x = photos.photos(split, profile="quick").tensors[0]
            centre = (x[:, 0, 32, 32] * 255).round().long()  # at least S/2 from the block's edges: its own level
            assert set(centre.tolist()) <= set(levels.tolist()), split
            blocks[split] = {(k // grid, k % grid) for k in ((centre - 10) // 15).tolist()}
            assert all(photos.block_split(r, c, grid) == split for r, c in blocks[split]), split
        assert not blocks["train"] & blocks["val"] and not blocks["train"] & blocks["test"]
        assert not blocks["val"] & blocks["test"] and blocks["val"] and blocks["test"]
    finally:
        photos.bundled_crops.cache_clear()


def test_bad_split_and_size():
    with pytest.raises(ValueError, match="expected 'train', 'val' or 'test'"):
        photos.photos("valid")
    with pytest.raises(ValueError, match="multiple of 8"):
        photos.photos("train", size=60)


def jpeg_tar(path, sizes) -> bytes:
    """A gzipped tar of JPEGs image_00001.jpg, ... of the given (width, height), plus a text file."""
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz") as archive:
        for i, (w, h) in enumerate(sizes, start=1):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format="JPEG")
            info = tarfile.TarInfo(f"jpg/image_{i:05d}.jpg")
            info.size = len(buf.getvalue())
            archive.addfile(info, io.BytesIO(buf.getvalue()))
        info = tarfile.TarInfo("jpg/README.txt")
        archive.addfile(info, io.BytesIO(b""))
    return path.read_bytes()


def test_read_jpeg_tar_resizes_and_crops(tmp_path):
    jpeg_tar(tmp_path / "a.tgz", [(40, 30), (30, 50), (16, 16)])
    names, images = photos.read_jpeg_tar(tmp_path / "a.tgz", 16)
    assert names == ["jpg/image_00001.jpg", "jpg/image_00002.jpg", "jpg/image_00003.jpg"]
    assert images.shape == (3, 16, 16, 3) and images.dtype == np.uint8
    with Image.open(io.BytesIO(tarfile.open(tmp_path / "a.tgz").extractfile("jpg/image_00003.jpg").read())) as im:
        np.testing.assert_array_equal(images[2], np.asarray(im.convert("RGB")))  # already 16 × 16: unchanged
    with tarfile.open(tmp_path / "empty.tar", "w"):
        pass
    with pytest.raises(ValueError, match="no JPEG"):
        photos.read_jpeg_tar(tmp_path / "empty.tar", 16)


def test_full_profile_downloads_parses_splits_and_caches(tmp_path, monkeypatch):
    server = tmp_path / "server"
    server.mkdir()
    blob = jpeg_tar(server / "102flowers.tgz", [(24 + i, 20) for i in range(20)])
    monkeypatch.setattr(photos, "FLOWERS_URL", (server / "102flowers.tgz").as_uri())
    monkeypatch.setattr(photos, "FLOWERS_MD5", hashlib.md5(blob).hexdigest())
    train, val, test = (photos.photos(split, size=16, profile="full") for split in ("train", "val", "test"))
    assert train.tensors[0].shape == (16, 3, 16, 16) and test.tensors[0].shape == (2, 3, 16, 16)
    assert val.tensors[0].shape == (2, 3, 16, 16)
    _, images = photos.read_jpeg_tar(server / "102flowers.tgz", 16)
    torch.testing.assert_close(test.tensors[0][0], torch.from_numpy(images[9]).permute(2, 0, 1).float() / 255)
    torch.testing.assert_close(val.tensors[0][0], torch.from_numpy(images[8]).permute(2, 0, 1).float() / 255)
    (server / "102flowers.tgz").unlink()  # the server is gone: the cache must answer
    assert len(photos.photos("test", size=16, profile="full")) == 2


def test_full_profile_offline_falls_back_to_bundled_crops(monkeypatch):
    monkeypatch.setattr(photos, "FLOWERS_URL", "http://127.0.0.1:9/102flowers.tgz")  # nothing listens there
    with pytest.warns(UserWarning, match="bundled photographs"):
        test = photos.photos("test", size=24, profile="full")
    assert test.tensors[0].shape == (512, 3, 24, 24)
