"""Steps, never the clock: no recipe of any profile stops on a wall-clock budget, so a chapter's
numbers do not depend on how busy the machine was (vqlib.training.loop: a run stopped by a user's
``max_seconds`` is unfinished and is resumed, never reused)."""

import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest

import vqlib.recipes
from vqlib.training.loop import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
PROFILES = ("smoke", "quick", "full")


def recipe_config_functions():
    """Every public recipe function annotated to return a TrainConfig and taking a profile."""
    for info in pkgutil.iter_modules(vqlib.recipes.__path__):
        module = importlib.import_module(f"vqlib.recipes.{info.name}")
        for name, fn in inspect.getmembers(module, inspect.isfunction):
            if fn.__module__ == module.__name__ and not name.startswith("_") \
                    and "profile" in inspect.signature(fn).parameters \
                    and inspect.signature(fn).return_annotation in (TrainConfig, "TrainConfig"):
                yield f"{info.name}.{name}", fn


def test_the_recipes_are_found():
    names = {name for name, _ in recipe_config_functions()}
    assert {"ch01_vae.vae_train_config", "ch02_vqvae.vqvae_train_config", "ch04_vqvae2.photo_train_config",
            "ch05_vqgan.vqgan_train_config", "ch08_video_tokenizers.video_train_config"} <= names


@pytest.mark.parametrize("profile", PROFILES)
def test_no_recipe_config_sets_a_wall_clock_stop(profile):
    for name, fn in recipe_config_functions():
        config = fn(profile=profile)
        assert config.max_seconds is None, f"{name}({profile!r}) stops after {config.max_seconds} s"


def test_no_recipe_chapter_or_script_mentions_a_wall_clock_stop():
    sources = [*ROOT.glob("vqlib/recipes/*.py"), *ROOT.glob("chapters/*.md"), *ROOT.glob("scripts/*.py"),
               *ROOT.glob("book/*.md")]
    assert len(sources) > 10
    offenders = [f"{path.relative_to(ROOT)}:{i}" for path in sources
                 for i, line in enumerate(path.read_text().splitlines(), 1)
                 if re.search(r"\bmax_seconds\s*=", line) and "max_seconds=None" not in line.replace(" ", "")]
    assert not offenders, f"wall-clock stops in {offenders}: give the recipe a step budget instead"
