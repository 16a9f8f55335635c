"""Pieces several test files share: a tiny trainable model, and executing a chapter in `smoke`."""

import os
from dataclasses import dataclass
from pathlib import Path

import jupytext
import nbformat
from pytest_notebook.nb_regression import NBRegressionFixture
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "chapters").glob("[0-9][0-9]_*.md"))


@dataclass(frozen=True)
class TinyConfig:
    width: int = 8


class Tiny(nn.Module):
    def __init__(self, config: TinyConfig = TinyConfig()):
        super().__init__()
        self.config = config
        self.net = nn.Sequential(nn.Linear(3, config.width), nn.Tanh(), nn.Linear(config.width, 1))

    def forward(self, x):
        return self.net(x)


def mse(model, batch):
    x, y = batch
    return {"loss": (model(x) - y).pow(2).mean()}


def execute_chapter(chapter: Path, workdir: Path, **env: str) -> list[dict]:
    """Execute ``chapter`` in the smoke profile (plus ``env``) and return the error outputs of its cells
    and anything they wrote to stderr (the book build treats stderr as an error: ``_config.yml``).

    Outputs are produced, not compared: the test is that every cell runs without error or stderr.
    """
    notebook = workdir / f"{chapter.stem}.ipynb"
    nbformat.write(jupytext.read(chapter), notebook)
    fixture = NBRegressionFixture(
        exec_timeout=600, exec_cwd=str(chapter.parent),
        exec_env={**os.environ, "VQLIB_PROFILE": "smoke", "VQLIB_BUILD": "1", "MPLBACKEND": "Agg", **env},
        diff_ignore=("/cells/*/outputs", "/cells/*/execution_count", "/cells/*/metadata", "/metadata"))
    result = fixture.check(str(notebook), raise_errors=True)
    return [o for c in result.nb_final.cells for o in c.get("outputs", [])
            if o.get("output_type") == "error" or (o.get("output_type") == "stream" and o.get("name") == "stderr")]
