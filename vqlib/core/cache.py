"""The cache: where downloads, derived data and trained models are kept, and how files get there.

``cache_dir`` is ``$VQLIB_CACHE``, else ``~/.cache/vqlib``. Every file is written the same way
(``atomic_writer``): into a temporary file in the same directory, then renamed, so a reader never
sees half a file. Files get the permissions the umask allows (a cache can be shared by a group);
a write error names the file and what to do; temporary files left by a killed writer are removed
by the next writer in that directory.

``cached_arrays`` keeps arrays that vqlib derives from other data (a parsed dataset) in an ``.npz``
file with a SHA-256 checksum: a damaged or foreign file is deleted and rebuilt, with a warning, and
a cache directory that cannot be written only costs the time to rebuild the arrays in memory.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import re
import secrets
import socket
import time
import warnings
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

import numpy as np
import torch

STALE_SECONDS = 24 * 3600  # a temporary file untouched this long is a dead writer's, whoever wrote it
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"
# <target name>.<host>.<pid>.<token>.tmp: the writer's host and process, so others can tell it is dead
_TEMP = re.compile(r"^(?P<target>.+)\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp$")
_SPACE = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG)  # disk full, quota, size limit
_READ_ONLY = (errno.EACCES, errno.EPERM, errno.EROFS)
_warned: set[str] = set()


def cache_dir() -> Path:
    """Where vqlib caches downloads and checkpoints: ``$VQLIB_CACHE``, else ``~/.cache/vqlib``."""
    root = Path(os.environ.get("VQLIB_CACHE") or Path.home() / ".cache" / "vqlib").expanduser()
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"VQLIB_CACHE must name a directory, but {root} is a file")
    with contextlib.suppress(OSError):  # a read-only place: reading works, a writer says what went wrong
        root.mkdir(parents=True, exist_ok=True)
    return root


def warn_once(message: str) -> None:
    """A UserWarning, at most once per process for the same message."""
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, stacklevel=3)


def write_error(err: OSError, path: Path) -> OSError:
    """``err`` (from writing ``path``) as an OSError that names the file and says what to do."""
    if err.errno in _SPACE:
        hint = "free space on that disk, or set VQLIB_CACHE to a directory on a disk with room"
    elif err.errno in _READ_ONLY:
        hint = "the directory is not writable: set VQLIB_CACHE to a directory you can write"
    else:
        hint = "check the disk and the directory, or set VQLIB_CACHE to another directory"
    reason = (err.strerror or str(err)).lower()
    return OSError(err.errno, f"{reason} while writing {path}: {hint}")


def _writer_is_dead(host: str, pid: int, age: float) -> bool:
    if age > STALE_SECONDS:
        return True
    if host != _HOST or os.name == "nt":  # another machine (or Windows, where os.kill kills): only the age tells
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # it exists but belongs to another user
        return False
    return False


def remove_stale_temps(directory: Path) -> None:
    """Remove the temporary files of writers that died in ``directory``: those of a process of this
    host that no longer runs, and any untouched for STALE_SECONDS (a writer on another host)."""
    with contextlib.suppress(OSError):
        for entry in os.scandir(directory):
            match = _TEMP.match(entry.name)
            if match is None:
                continue
            with contextlib.suppress(OSError):
                age = time.time() - entry.stat().st_mtime
                if _writer_is_dead(match["host"], int(match["pid"]), age):
                    os.unlink(entry.path)


@contextlib.contextmanager
def atomic_writer(path: str | Path) -> Iterator[BinaryIO]:
    """A binary file to write ``path`` through: a temporary file in the same directory, renamed to
    ``path`` when the block ends without error and removed when it does not. An OSError from the
    file system (disk full, read-only directory) names ``path`` and says what to do."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path.parent)
        while True:
            tmp = path.parent / f"{path.name}.{_HOST}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
            try:  # mode 0o666: the umask decides who may read the file, as for any other file
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
                break
            except FileExistsError:
                continue
    except OSError as err:
        raise write_error(err, path) from err
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:  # the block only writes: its OSErrors are write errors
        raise write_error(err, path) from err
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)  # gone after the rename; otherwise never leave it behind


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` through ``atomic_writer``: never a half file, a write error names ``path``.

    The object is serialised in memory first, so an object that cannot be saved fails before any
    file exists and a full disk shows up as "no space left on device", not as a torch internal."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_writer(path) as f:
        f.write(buffer.getbuffer())


# ----------------------------------------------------------------------------- derived arrays

CHECKSUM_KEY = "__sha256__"


def arrays_digest(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 of named arrays: names, dtypes, shapes and bytes."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


class CacheFileError(ValueError):
    """A cache file is damaged, foreign or written without a checksum."""


def read_checked_npz(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` written by ``cached_arrays``; a CacheFileError names the file when it
    cannot be read or its checksum does not match."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {name: f[name] for name in f.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as err:
        raise CacheFileError(f"the cache file {path} is damaged ({err})") from err
    stored = arrays.pop(CHECKSUM_KEY, None)
    if stored is None:
        raise CacheFileError(f"the cache file {path} has no checksum (written by an older vqlib, or not by vqlib)")
    if str(stored) != arrays_digest(arrays):
        raise CacheFileError(f"the cache file {path} failed its checksum (damaged or changed after it was written)")
    return arrays


def cached_arrays(path: str | Path, build: Callable[[], dict[str, np.ndarray]], source: str) -> dict[str, np.ndarray]:
    """Named arrays that vqlib derives from ``source``: read from the checksummed ``.npz`` at ``path``,
    else computed by ``build()`` and written there (best effort: a cache that cannot be written
    warns once and the arrays live in memory). A damaged file is deleted and rebuilt, with a warning."""
    path = Path(path)
    if path.is_file():
        try:
            return read_checked_npz(path)
        except CacheFileError as err:
            with contextlib.suppress(OSError):
                path.unlink()
            warnings.warn(f"{err}; it holds arrays vqlib derives from {source}, so it was deleted and is "
                          "being rebuilt", stacklevel=3)
    arrays = build()
    try:
        with atomic_writer(path) as f:
            np.savez(f, **arrays, **{CHECKSUM_KEY: np.array(arrays_digest(arrays))})
    except OSError as err:
        warn_once(f"could not cache {source} ({err}); working from memory, rebuilt in every process")
    return arrays
