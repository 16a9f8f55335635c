"""Compute profiles: how big the data, the models and the runs are.

Every chapter reads one profile and sizes itself from it (BOOK_PLAN.md):

- ``smoke``: tests on any CPU; seconds per chapter, every code path runs, numbers mean nothing.
- ``quick``: the default without a GPU and the profile the published book is built with;
  about three minutes per chapter on a 2-core CPU, results good enough to teach from.
- ``full``: the default with CUDA; full datasets and paper-scale runs on one GPU.

The profile comes from the ``VQLIB_PROFILE`` environment variable when it is set, otherwise
from the hardware. It is read once per process: a chapter cannot silently change size halfway.
"""

from __future__ import annotations

import functools
import os
import platform
import random
import sys
import time
from typing import TypeVar

import numpy as np
import torch

PROFILES = ("smoke", "quick", "full")
T = TypeVar("T")


def default_device() -> torch.device:
    """The best device here: CUDA, then Apple's MPS, then the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def check_profile(name: str) -> str:
    """The known profile ``name`` spells, in any case ("Smoke" -> "smoke"), else a ValueError naming the choices."""
    canonical = name.strip().lower() if isinstance(name, str) else name
    if canonical not in PROFILES:
        raise ValueError(f"unknown profile {name!r}: expected one of {', '.join(PROFILES)} "
                         "(set VQLIB_PROFILE to one of them, or unset it to choose from the hardware)")
    return canonical


@functools.cache
def current_profile() -> str:
    """The profile of this process: ``$VQLIB_PROFILE`` if set, else ``full`` on CUDA, else ``quick``."""
    name = os.environ.get("VQLIB_PROFILE", "")
    if name.strip():
        return check_profile(name)
    return "full" if default_device().type == "cuda" else "quick"


def pick(smoke: T, quick: T, full: T, profile: str | None = None) -> T:
    """The value for ``profile`` (default: the current one), e.g. ``steps = pick(20, 3000, 50_000)``."""
    return {"smoke": smoke, "quick": quick, "full": full}[check_profile(profile or current_profile())]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (all devices) so a run repeats."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def stamp(seed: int | None = None, started: float | None = None) -> str:
    """One line saying what produced a chapter's outputs: profile, device, versions, seed, wall time.

    Pass ``started=time.time()`` recorded at the top of the chapter to include its wall time.
    """
    from vqlib import __version__

    device = default_device()
    name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu"
    parts = [f"profile={current_profile()}", f"device={device.type} ({name}, {torch.get_num_threads()} threads)",
             f"python={sys.version.split()[0]}", f"torch={torch.__version__}", f"vqlib={__version__}"]
    if seed is not None:
        parts.append(f"seed={seed}")
    if started is not None:
        parts.append(f"wall time={time.time() - started:.0f} s")
    return " · ".join(parts)
