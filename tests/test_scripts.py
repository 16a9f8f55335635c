"""scripts/: train.py names real recipes and lists them; run_chapter.py, book_numbers.py and checkpoint_report.py read what a build glued and cached."""

import importlib
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import train as train_script  # noqa: E402


def test_every_recipe_is_a_function_of_the_library():
    for name, target in train_script.RECIPES.items():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), name


def test_list_prints_the_recipes():
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"), "--list"],
                         capture_output=True, text=True, check=True).stdout
    assert all(name in out for name in train_script.RECIPES)


def test_unknown_recipe_is_refused():
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"), "imagenet-gan"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "invalid choice: 'imagenet-gan'" in result.stderr


def test_glued_values_are_read_from_an_executed_notebook():
    import nbformat
    from run_chapter import GLUE_MIME, glued

    cell = nbformat.v4.new_code_cell("glue('psnr', 24.0)")
    cell.outputs = [nbformat.v4.new_output("display_data", data={GLUE_MIME: "24.0", "text/plain": "24.0"},
                                           metadata={"scrapbook": {"name": "psnr"}}),
                    nbformat.v4.new_output("stream", text="not glued\n")]
    assert glued(nbformat.v4.new_notebook(cells=[cell])) == {"psnr": "24.0"}


def test_two_builds_differ_exactly_where_a_number_differs():
    from book_numbers import differences

    a = {"01_vae": {"psnr": "24.0", "kl": "3.1"}, "02_vqvae": {"bits": "441"}}
    assert differences(a, a) == []
    b = {"01_vae": {"psnr": "24.1", "kl": "3.1"}}
    assert differences(a, b) == ["01_vae:psnr: '24.0' != '24.1'", "02_vqvae:bits: '441' != None"]


def test_checkpoint_report_flags_a_run_the_clock_stopped(tmp_path):
    import torch
    from helpers import Tiny, mse
    from torch.utils.data import TensorDataset

    from vqlib.training.loop import TrainConfig, fit

    data = TensorDataset(torch.randn(32, 3), torch.randn(32, 1))
    (tmp_path / "checkpoints").mkdir()
    fit(Tiny(), mse, data, TrainConfig(steps=5, batch_size=8), checkpoint=tmp_path / "checkpoints" / "done.pt",
        progress=False)
    report = [sys.executable, str(ROOT / "scripts" / "checkpoint_report.py"), str(tmp_path)]
    finished = subprocess.run(report, capture_output=True, text=True)
    assert finished.returncode == 0 and "1 checkpoints, 0 not finished" in finished.stdout
    fit(Tiny(), mse, data, TrainConfig(steps=10**6, batch_size=8, max_seconds=0.05),
        checkpoint=tmp_path / "checkpoints" / "clocked.pt", progress=False)
    clocked = subprocess.run(report, capture_output=True, text=True)
    assert clocked.returncode == 1 and "NOT clocked.pt" in clocked.stdout and "stopped by time" in clocked.stdout
