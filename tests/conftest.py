"""Shared test setup: no network, a private cache directory, a non-interactive plot backend."""

import os

import matplotlib
import pytest
import torch

matplotlib.use("Agg")
# one thread per test process: `make test` runs two processes on two cores, and small models run
# several times slower when their threads wait for a core
torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Every test session caches checkpoints and downloads in its own temporary directory."""
    old = os.environ.get("VQLIB_CACHE")
    os.environ["VQLIB_CACHE"] = str(tmp_path_factory.mktemp("vqlib-cache"))
    yield
    if old is None:
        os.environ.pop("VQLIB_CACHE", None)
    else:
        os.environ["VQLIB_CACHE"] = old


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    yield
