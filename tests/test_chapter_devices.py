"""Chapters keep data and models on one device: executed under the device sentinel.

With ``VQLIB_DEVICE_SENTINEL=1`` (``vqlib.core.device``) whatever goes through ``to_device`` (``fit``
moves every model it trains that way) becomes float64, so a tensor that a chapter forgot to move stays
float32 and PyTorch raises a dtype mismatch where a GPU would raise a device mismatch. This finds on
a CPU-only machine the cells that would fail on CUDA.

Every chapter is listed. The sentinel cannot see integer tensors (codes, labels): those moves, such as
Chapter 7's masked-code losses and Chapter 9's greedy-continuation exercise, were checked by reading.
"""

import os
from pathlib import Path

import jupytext
import nbformat
import pytest
from pytest_notebook.nb_regression import NBRegressionFixture

ROOT = Path(__file__).resolve().parents[1]
CHECKED = ["01_vae", "02_vqvae", "03_priors", "04_vqvae2", "05_vqgan", "06_codebooks", "07_maskgit",
           "08_video_tokenizers", "09_video_generation"]


@pytest.mark.chapter
@pytest.mark.parametrize("name", CHECKED)
def test_chapter_keeps_data_on_the_models_device(name, tmp_path):
    chapter = next((ROOT / "chapters").glob(f"{name}.md"))
    notebook = tmp_path / f"{name}.ipynb"
    nbformat.write(jupytext.read(chapter), notebook)
    # a private cache: checkpoints written under the sentinel hold float64 weights
    env = {**os.environ, "VQLIB_PROFILE": "smoke", "VQLIB_BUILD": "1", "MPLBACKEND": "Agg",
           "VQLIB_DEVICE_SENTINEL": "1", "VQLIB_CACHE": str(tmp_path / "cache")}
    fixture = NBRegressionFixture(
        exec_timeout=600, exec_cwd=str(chapter.parent), exec_env=env,
        diff_ignore=("/cells/*/outputs", "/cells/*/execution_count", "/cells/*/metadata", "/metadata"))
    result = fixture.check(str(notebook), raise_errors=True)
    errors = [o for c in result.nb_final.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
