"""The cache: where downloads and trained models are kept, and how files get there.

``cache_dir`` is ``$VQLIB_CACHE``, else ``~/.cache/vqlib``. ``atomic_save`` writes a file so that a
reader never sees half of it: a temporary file in the same directory, then a rename.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def cache_dir() -> Path:
    """Where vqlib caches downloads and checkpoints: ``$VQLIB_CACHE``, else ``~/.cache/vqlib``."""
    root = Path(os.environ.get("VQLIB_CACHE") or Path.home() / ".cache" / "vqlib").expanduser()
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"VQLIB_CACHE must name a directory, but {root} is a file")
    root.mkdir(parents=True, exist_ok=True)
    return root


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same directory, then rename: never a half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
