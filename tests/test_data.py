import gzip
import hashlib
import struct

import numpy as np
import pytest
import torch

from vqlib.core import download
from vqlib.core.download import DownloadError, fetch
from vqlib.data import mnist as data


def write_idx(path, array: np.ndarray, compress: bool = True) -> bytes:
    """Write ``array`` (uint8) in the IDX format MNIST uses; return the bytes written."""
    raw = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    blob = gzip.compress(raw) if compress else raw
    path.write_bytes(blob)
    return blob


def md5(blob: bytes) -> str:
    return hashlib.md5(blob).hexdigest()


def test_bundled_mnist_split_is_stratified_disjoint_and_fixed():
    train, val, test = (data.mnist(split, profile="quick") for split in ("train", "val", "test"))
    x, y = train.tensors
    assert x.shape == (3500, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.long
    assert 0.0 <= x.min() and x.max() == 1.0
    assert torch.equal(test.tensors[1].bincount(), torch.full((10,), 100))
    assert torch.equal(val.tensors[1].bincount(), torch.full((10,), 50))
    assert torch.equal(y.bincount(), torch.full((10,), 350))
    rows = [{tuple(r) for r in d.tensors[0].flatten(1)[:, ::7].tolist()} for d in (train, val, test)]
    assert not rows[0] & rows[1] and not rows[0] & rows[2] and not rows[1] & rows[2]  # no digit in two splits
    data._bundled_mnist.cache_clear()
    assert torch.equal(data.mnist("test", profile="quick").tensors[0], test.tensors[0])
    assert torch.equal(data.mnist("val", profile="smoke").tensors[0], val.tensors[0])


def test_unknown_split_and_profile():
    with pytest.raises(ValueError, match="expected 'train', 'val' or 'test'"):
        data.mnist("validation")
    with pytest.raises(ValueError, match="unknown profile"):
        data.mnist("train", profile="big")


def test_read_idx_round_trip(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", a)
    write_idx(tmp_path / "a.idx", a, compress=False)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "a.gz"), a)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "a.idx"), a)


def test_read_idx_rejects_truncated_and_foreign_files(tmp_path):
    blob = write_idx(tmp_path / "a.idx", np.zeros((5, 28, 28), np.uint8), compress=False)
    (tmp_path / "short.idx").write_bytes(blob[:-10])
    with pytest.raises(ValueError, match="truncated"):
        data.read_idx(tmp_path / "short.idx")
    (tmp_path / "png.idx").write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(ValueError, match="not an IDX file"):
        data.read_idx(tmp_path / "png.idx")


@pytest.fixture
def mnist_mirror(tmp_path, monkeypatch):
    """A local 'server' (file:// URLs) holding tiny MNIST files in the real format."""
    rng = np.random.default_rng(0)
    server = tmp_path / "server"
    server.mkdir()
    checksums = {}
    for prefix, n in (("train", 6), ("t10k", 4)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        for kind, array, dims in (("images", images, 3), ("labels", labels, 1)):
            name = f"{prefix}-{kind}-idx{dims}-ubyte.gz"
            checksums[name] = md5(write_idx(server / name, array))
    monkeypatch.setattr(data, "MNIST_URL", server.as_uri() + "/")
    monkeypatch.setattr(data, "MNIST_FILES", checksums)
    return server


def test_full_profile_downloads_parses_and_caches(mnist_mirror):
    test = data.mnist("test", profile="full")
    x, y = test.tensors
    assert x.shape == (4, 1, 28, 28) and y.shape == (4,)
    raw = data.read_idx(mnist_mirror / "t10k-images-idx3-ubyte.gz")
    torch.testing.assert_close(x[:, 0] * 255, torch.from_numpy(raw.copy()).float())
    train, val = data.mnist("train", profile="full"), data.mnist("val", profile="full")
    assert len(train) + len(val) == 6 and len(val) >= 1  # validation digits carved from the training file
    raw = torch.from_numpy(data.read_idx(mnist_mirror / "train-images-idx3-ubyte.gz").copy()).float()
    together = torch.cat([train.tensors[0], val.tensors[0]])[:, 0] * 255
    assert sorted(map(tuple, together.flatten(1).tolist())) == sorted(map(tuple, raw.flatten(1).tolist()))
    for f in mnist_mirror.iterdir():
        f.unlink()  # the server is gone: the cache must answer
    assert data.mnist("test", profile="full").tensors[0].shape == (4, 1, 28, 28)


def test_full_profile_offline_falls_back_to_bundled_digits(monkeypatch):
    monkeypatch.setattr(data, "MNIST_URL", "http://127.0.0.1:9/")  # nothing listens on port 9
    with pytest.warns(UserWarning, match="bundled digits"):
        test = data.mnist("test", profile="full")
    assert len(test) == 1000


def test_corrupt_download_is_refused_and_leaves_nothing(tmp_path):
    src = tmp_path / "file.bin"
    src.write_bytes(b"hello")
    with pytest.raises(DownloadError, match="corrupt or changed"):
        fetch(src.as_uri(), md5(b"other"), folder="t")
    assert not list((download.cache_dir() / "t").iterdir())
    good = fetch(src.as_uri(), md5(b"hello"), folder="t")
    assert good.read_bytes() == b"hello"
    good.write_bytes(b"hellO")  # damaged in the cache: fetched again
    assert fetch(src.as_uri(), md5(b"hello"), folder="t").read_bytes() == b"hello"


def test_unreachable_url_is_a_download_error():
    with pytest.raises(DownloadError, match="could not download"):
        fetch("http://127.0.0.1:9/x.gz", "0" * 32, folder="t")


def test_binarize_is_seeded_and_keeps_the_grey_level_on_average():
    x = torch.full((200, 1, 28, 28), 0.3)
    x[:, :, :, :14] = 0.9
    b = data.binarize(x, seed=0)
    assert set(b.unique().tolist()) <= {0.0, 1.0} and b.shape == x.shape
    assert torch.equal(b, data.binarize(x, seed=0)) and not torch.equal(b, data.binarize(x, seed=1))
    assert abs(b[..., 14:].mean().item() - 0.3) < 0.01 and abs(b[..., :14].mean().item() - 0.9) < 0.01
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        data.binarize(x * 2)
