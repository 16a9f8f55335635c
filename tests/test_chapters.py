"""Every chapter executes end to end in the `smoke` profile (through pytest-notebook)."""

import os
from pathlib import Path

import jupytext
import nbformat
import pytest
from pytest_notebook.nb_regression import NBRegressionFixture

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "chapters").glob("[0-9][0-9]_*.md"))


@pytest.mark.chapter
@pytest.mark.parametrize("chapter", CHAPTERS, ids=[c.stem for c in CHAPTERS])
def test_chapter_runs_in_smoke_profile(chapter, tmp_path):
    notebook = tmp_path / f"{chapter.stem}.ipynb"
    nbformat.write(jupytext.read(chapter), notebook)
    env = {**os.environ, "VQLIB_PROFILE": "smoke", "VQLIB_BUILD": "1", "MPLBACKEND": "Agg"}
    fixture = NBRegressionFixture(
        exec_timeout=600, exec_cwd=str(chapter.parent), exec_env=env,
        # outputs are produced, not compared: the test is that every cell runs without error
        diff_ignore=("/cells/*/outputs", "/cells/*/execution_count", "/cells/*/metadata", "/metadata"))
    result = fixture.check(str(notebook), raise_errors=True)
    errors = [o for c in result.nb_final.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
