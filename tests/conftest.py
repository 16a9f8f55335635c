"""Shared test setup: no network, a private cache directory, a non-interactive plot backend, the CPU
unless a test takes the ``device`` fixture (CPU and CUDA), and the full dry run's table."""

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


@pytest.fixture(autouse=True)
def _cpu_unless_device(request, monkeypatch):
    """A test without the ``device`` fixture is a CPU test: on a GPU machine it sees no CUDA, so that the
    library's defaults (``vqlib.default_device()``, ``fit``'s device) pick the CPU there as they do in CI.
    ``VQLIB_TESTS_SEE_CUDA=1`` lets every test see the GPU (to audit the CPU tests on CUDA)."""
    if "device" not in request.fixturenames and os.environ.get("VQLIB_TESTS_SEE_CUDA", "") in ("", "0"):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def pytest_collection_modifyitems(items):
    """Tests that take ``device`` are marked ``device``: ``pytest -m device`` runs just them."""
    for item in items:
        if "device" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.device)


@pytest.fixture(params=["cpu", "cuda"])
def device(request) -> torch.device:
    """A test that takes ``device`` runs on the CPU and on CUDA; without a GPU the CUDA case is skipped
    (``make gpu-check`` runs them on one)."""
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    return torch.device(request.param)


def pytest_terminal_summary(terminalreporter):
    """The table of tests/test_full_dry_run.py (recorded with record_property, so it survives pytest-xdist)."""
    rows = [value for report in terminalreporter.stats.get("passed", [])
            for key, value in getattr(report, "user_properties", []) if key == "full_dry_run"]
    if not rows:
        return
    write = terminalreporter.write_line
    terminalreporter.write_sep("-", "full dry run (CPU, batch 2): parameters, peak RSS, estimated GPU memory")
    write(f"{'recipe':38s} {'trained':>11s} {'frozen':>9s} {'peak RSS':>9s} {'act./ex.':>10s} {'batch':>5s} "
          f"{'GPU est.':>10s}")
    for r in sorted(rows, key=lambda r: r["recipe"]):
        write(f"{r['recipe']:38s} {r['trained']:11,d} {r['frozen']:9,d} {r['peak_rss_mib']:6.0f} MiB "
              f"{r['activations_mib_per_example']:6.1f} MiB {r['batch']:5d} {r['gpu_estimate_gib']:6.2f} GiB"
              f"{' *' if r['attention_dropout'] else ''}")
    write("peak RSS: psutil RSS sampled every 2 ms during the two steps, above the RSS before them (after "
          "malloc_trim).")
    write("act./ex.: peak of the tensors autograd saved for the backward pass during the two steps, per example.")
    write("GPU est.: 16 B per trained parameter (weight, gradient, 2 AdamW moments, float32) + 4 B per frozen "
          "parameter and buffer element + act./ex. x the full batch; without CUDA context, workspaces, allocator "
          "overhead and bfloat16 savings.")
    write("*: attention with dropout; on the CPU it saves (T, T) attention matrices that CUDA's fused kernels "
          "do not, so the estimate is high (make gpu-check measures the real peak).")
