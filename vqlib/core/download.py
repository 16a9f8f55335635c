"""Downloads with a checksum, a cache and atomic writes.

``fetch(url, checksum)`` returns the path of a verified local copy: it is downloaded once into the
cache directory (``$VQLIB_CACHE``, default ``~/.cache/vqlib``), written to a temporary file,
checked, and only then renamed into place, so an interrupted or corrupt download never leaves a
file that looks complete. A cached file whose checksum no longer matches is fetched again.
Every network failure (refused, timed out, reset, a body cut off mid-way) and a cache that cannot
be written are a ``DownloadError`` that names the URL and what to do, so a caller can fall back to
offline data. The checksum is the one its publisher (or a maintained loader of the data set)
published: an MD5 (32 hex digits) or a SHA-1 (40 hex digits), told apart by length.
"""

from __future__ import annotations

import hashlib
import http.client
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, BinaryIO

from vqlib.core.cache import atomic_writer, cache_dir

# Everything a connection can raise while it opens or reads: refused, reset, timed out, a bad status
# line, a body cut off mid-way (http.client.IncompleteRead) and any other socket error.
NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, OSError)


HASHES = {32: "md5", 40: "sha1"}  # hex digits of a published checksum -> its algorithm (not for security)


class DownloadError(RuntimeError):
    """A file could not be fetched or failed its checksum."""


def new_digest(checksum: str) -> Any:
    """An empty hash of the algorithm that made ``checksum`` (MD5: 32 hex digits, SHA-1: 40)."""
    if not isinstance(checksum, str) or len(checksum) not in HASHES or not all(
            c in "0123456789abcdef" for c in checksum):
        raise ValueError(f"a checksum is an MD5 (32 lower-case hex digits) or a SHA-1 (40), got {checksum!r}")
    return hashlib.new(HASHES[len(checksum)], usedforsecurity=False)


def file_checksum(path: str | Path, checksum: str) -> str:
    """The hex digest of the file at ``path`` by the algorithm of ``checksum``."""
    digest = new_digest(checksum)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _failed(url: str, target: Path, err: BaseException) -> DownloadError:
    return DownloadError(f"could not download {url} ({type(err).__name__}: {err}); check the network "
                         f"connection and try again, or put the file at {target} yourself")


def _download(url: str, out: BinaryIO, target: Path, timeout: float, checksum: str) -> str:
    """Copy ``url`` into ``out``; return the digest of what arrived, by the algorithm of ``checksum``.
    Network errors become DownloadError."""
    digest = new_digest(checksum)
    try:
        response = urllib.request.urlopen(url, timeout=timeout)
    except NETWORK_ERRORS as err:
        raise _failed(url, target, err) from err
    with response:
        while True:
            try:
                block = response.read(1 << 20)
            except NETWORK_ERRORS as err:
                raise _failed(url, target, err) from err
            if not block:
                return digest.hexdigest()
            digest.update(block)
            out.write(block)  # an OSError here is the disk's, and atomic_writer says so


def fetch(url: str, checksum: str, folder: str = "data", timeout: float = 30.0) -> Path:
    """A verified local copy of ``url`` under ``cache_dir()/folder``; raises DownloadError.

    ``checksum``: the published MD5 or SHA-1 of the file (hex)."""
    target = cache_dir() / folder / url.rsplit("/", 1)[-1]
    if target.is_file() and file_checksum(target, checksum) == checksum:
        return target
    try:
        with atomic_writer(target) as out:
            got = _download(url, out, target, timeout, checksum)
            if got != checksum:
                raise DownloadError(f"{url} arrived corrupt or changed: {HASHES[len(checksum)]} {got}, "
                                    f"expected {checksum}")
    except OSError as err:  # the cache could not be written (full, read-only): err names the file
        raise DownloadError(f"could not save the download of {url}: {err}") from err
    return target
