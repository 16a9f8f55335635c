"""Downloads with a checksum, a cache and atomic writes.

``fetch(url, md5)`` returns the path of a verified local copy: it is downloaded once into the
cache directory (``$VQLIB_CACHE``, default ``~/.cache/vqlib``), written to a temporary file,
checked, and only then renamed into place, so an interrupted or corrupt download never leaves a
file that looks complete. A cached file whose checksum no longer matches is fetched again.
Every network failure (refused, timed out, reset, a body cut off mid-way) and a cache that cannot
be written are a ``DownloadError`` that names the URL and what to do, so a caller can fall back to
offline data.
"""

from __future__ import annotations

import hashlib
import http.client
import urllib.error
import urllib.request
from pathlib import Path
from typing import BinaryIO

from vqlib.core.cache import atomic_writer, cache_dir

# Everything a connection can raise while it opens or reads: refused, reset, timed out, a bad status
# line, a body cut off mid-way (http.client.IncompleteRead) and any other socket error.
NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, OSError)


class DownloadError(RuntimeError):
    """A file could not be fetched or failed its checksum."""


def file_md5(path: str | Path) -> str:
    digest = hashlib.md5()  # noqa: S324 - a published checksum, not security
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _failed(url: str, target: Path, err: BaseException) -> DownloadError:
    return DownloadError(f"could not download {url} ({type(err).__name__}: {err}); check the network "
                         f"connection and try again, or put the file at {target} yourself")


def _download(url: str, out: BinaryIO, target: Path, timeout: float) -> str:
    """Copy ``url`` into ``out``; return the MD5 of what arrived. Network errors become DownloadError."""
    digest = hashlib.md5()  # noqa: S324 - a published checksum, not security
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


def fetch(url: str, md5: str, folder: str = "data", timeout: float = 30.0) -> Path:
    """A verified local copy of ``url`` under ``cache_dir()/folder``; raises DownloadError."""
    target = cache_dir() / folder / url.rsplit("/", 1)[-1]
    if target.is_file() and file_md5(target) == md5:
        return target
    try:
        with atomic_writer(target) as out:
            got = _download(url, out, target, timeout)
            if got != md5:
                raise DownloadError(f"{url} arrived corrupt or changed: md5 {got}, expected {md5}")
    except OSError as err:  # the cache could not be written (full, read-only): err names the file
        raise DownloadError(f"could not save the download of {url}: {err}") from err
    return target
