"""Every chapter ends with its reproducibility stamp (BOOK_PLAN.md: "Every chapter prints which
profile, device and library versions produced its outputs"): its last code cell prints
``vqlib.stamp(seed=..., started=...)``, with ``started = time.time()`` set in its first code cell
so that the wall time covers the whole chapter."""

import ast
from pathlib import Path

import jupytext
import pytest
from IPython.core.inputtransformer2 import TransformerManager

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "chapters").glob("[0-9][0-9]_*.md"))


def _parse(source: str) -> ast.Module:
    return ast.parse(TransformerManager().transform_cell(source))  # %magics become Python


def _name(node: ast.AST) -> str:
    """`stamp` for `stamp`, `vqlib.stamp` and `vqlib.core.profile.stamp`."""
    return node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", "")


def _assigns_time(tree: ast.AST, variable: str) -> bool:
    return any(isinstance(n, ast.Assign) and any(getattr(t, "id", None) == variable for t in n.targets)
               and isinstance(n.value, ast.Call) and _name(n.value.func) == "time" for n in ast.walk(tree))


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[c.stem for c in CHAPTERS])
def test_chapter_ends_by_printing_its_stamp(chapter):
    code = [c.source for c in jupytext.read(chapter).cells if c.cell_type == "code"]
    assert code, f"{chapter.name} has no code cells"
    last = _parse(code[-1])
    printed = [arg for n in ast.walk(last) if isinstance(n, ast.Call) and _name(n.func) == "print" for arg in n.args]
    stamps = [a for a in printed if isinstance(a, ast.Call) and _name(a.func) == "stamp"]
    assert stamps, f"the last code cell of {chapter.name} does not print(vqlib.stamp(seed=SEED, started=started))"
    keywords = {k.arg: k.value for k in stamps[0].keywords}
    assert {"seed", "started"} <= set(keywords), \
        f"{chapter.name}: vqlib.stamp(...) needs seed= and started=, got {sorted(k for k in keywords if k)}"
    started = keywords["started"]
    assert isinstance(started, ast.Name) and _assigns_time(_parse(code[0]), started.id), \
        f"{chapter.name}: the first code cell should set {ast.unparse(started)} = time.time()"
