"""The book re-executes a chapter when a vqlib file it imports changes (book/_ext/vqlib_depcache.py)."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "book" / "_ext"))

import vqlib_depcache as dc  # noqa: E402

CHAPTER = """# A chapter

```{code-cell} ipython3
:tags: [hide-input]
import torch
from vqlib.b import thing
```

```{code-cell} ipython3
%matplotlib inline
```
"""


def make_package(root: Path) -> None:
    pkg = root / "vqlib"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from vqlib.core import x\n")
    (pkg / "core.py").write_text("x = 1\n")
    (pkg / "b.py").write_text("from vqlib import c\nthing = 2\n")
    (pkg / "c.py").write_text("y = 3\n")
    (pkg / "unrelated.py").write_text("z = 4\n")


def test_dependencies_are_followed_transitively(tmp_path):
    make_package(tmp_path)
    files = {p.name for p in dc.dependency_files(tmp_path, CHAPTER)}
    assert files == {"__init__.py", "core.py", "b.py", "c.py"}


def test_hash_changes_only_with_the_files_a_chapter_imports(tmp_path):
    make_package(tmp_path)
    chapter = tmp_path / "ch.md"
    chapter.write_text(CHAPTER)
    before = dc.dependency_hash(tmp_path, chapter)
    (tmp_path / "vqlib" / "unrelated.py").write_text("z = 5\n")
    assert dc.dependency_hash(tmp_path, chapter) == before
    (tmp_path / "vqlib" / "c.py").write_text("y = 4\n")
    assert dc.dependency_hash(tmp_path, chapter) != before


def test_real_chapters_depend_on_the_library():
    for chapter in sorted((ROOT / "chapters").glob("*.md")):
        files = dc.dependency_files(ROOT, chapter.read_text())
        assert ROOT / "vqlib" / "__init__.py" in files, chapter.name


def test_hash_changes_with_the_profile(tmp_path):
    make_package(tmp_path)
    chapter = tmp_path / "ch.md"
    chapter.write_text(CHAPTER)
    assert dc.dependency_hash(tmp_path, chapter, "smoke") != dc.dependency_hash(tmp_path, chapter, "quick")
