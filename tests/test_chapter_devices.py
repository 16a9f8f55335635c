"""Chapters keep data and models on one device: executed under the device sentinel.

With ``VQLIB_DEVICE_SENTINEL=1`` (``vqlib.core.device``) whatever goes through ``to_device`` (``fit``
moves every model it trains that way) becomes float64, so a tensor that a chapter forgot to move stays
float32 and PyTorch raises a dtype mismatch where a GPU would raise a device mismatch. This finds on
a CPU-only machine the cells that would fail on CUDA.

Every chapter is listed. The sentinel cannot see integer tensors (codes, labels): those moves, such as
Chapter 7's masked-code losses and Chapter 9's greedy-continuation exercise, were checked by reading.
"""

import pytest
from helpers import ROOT, execute_chapter

CHECKED = ["01_vae", "02_vqvae", "03_priors", "04_vqvae2", "05_vqgan", "06_codebooks", "07_maskgit",
           "08_video_tokenizers", "09_video_generation", "10_stories"]


@pytest.mark.chapter
@pytest.mark.parametrize("name", CHECKED)
def test_chapter_keeps_data_on_the_models_device(name, tmp_path):
    chapter = next((ROOT / "chapters").glob(f"{name}.md"))
    # a private cache: checkpoints written under the sentinel hold float64 weights
    assert execute_chapter(chapter, tmp_path, VQLIB_DEVICE_SENTINEL="1", VQLIB_CACHE=str(tmp_path / "cache")) == []
