"""Every chapter executes end to end in the `smoke` profile (through pytest-notebook), writing nothing to stderr."""

import pytest
from helpers import CHAPTERS, execute_chapter


@pytest.mark.chapter
@pytest.mark.parametrize("chapter", CHAPTERS, ids=[c.stem for c in CHAPTERS])
def test_chapter_runs_in_smoke_profile(chapter, tmp_path):
    assert execute_chapter(chapter, tmp_path) == []
