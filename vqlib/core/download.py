"""Downloads with a checksum, a cache and atomic writes.

``fetch(url, md5)`` returns the path of a verified local copy: it is downloaded once into the
cache directory (``$VQLIB_CACHE``, default ``~/.cache/vqlib``), written to a temporary file,
checked, and only then renamed into place, so an interrupted or corrupt download never leaves a
file that looks complete. A cached file whose checksum no longer matches is fetched again.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from vqlib.core.cache import cache_dir


class DownloadError(RuntimeError):
    """A file could not be fetched or failed its checksum."""


def file_md5(path: str | Path) -> str:
    digest = hashlib.md5()  # noqa: S324 - a published checksum, not security
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(url: str, md5: str, folder: str = "data", timeout: float = 30.0) -> Path:
    """A verified local copy of ``url`` under ``cache_dir()/folder``; raises DownloadError."""
    target = cache_dir() / folder / url.rsplit("/", 1)[-1]
    if target.is_file() and file_md5(target) == md5:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.name + ".", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            for block in iter(lambda: response.read(1 << 20), b""):
                out.write(block)
        got = file_md5(tmp)
        if got != md5:
            raise DownloadError(f"{url} arrived corrupt or changed: md5 {got}, expected {md5}")
        os.replace(tmp, target)
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        raise DownloadError(f"could not download {url}: {err}") from err
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target
