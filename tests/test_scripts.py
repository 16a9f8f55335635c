"""scripts/train.py names real recipes, and lists them."""

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
