"""The classroom build (book/classroom.py): student notebooks hide solutions and stop at the first
stub, teacher notebooks run with their checks passing; both start with the reader's setup cell."""

import ast
import os
import re
import sys
from pathlib import Path

import jupytext
import nbformat
import pytest
from markdown_it import MarkdownIt
from mdit_py_plugins.colon_fence import colon_fence_plugin
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "book"))
import classroom  # noqa: E402
from vqlib_notebooks import reader_notebook, setup_cell  # noqa: E402  (book/_ext, put on the path by classroom)

CHAPTERS = sorted((ROOT / "chapters").glob("[0-9][0-9]_*.md"))

# A small chapter in the book's conventions. Every line of a solution contains SECRET.
SYNTHETIC = '''---
jupytext:
  text_representation:
    extension: .md
    format_name: myst
kernelspec:
  display_name: Python 3
  language: python
  name: python3
---

# A synthetic chapter

```{code-cell} ipython3
import time

import torch

import vqlib
from vqlib.book.exercises import check, check_function

SEED = 0
started = time.time()
print("the chapter ran up to here")
```

Some math: $$ a^2 + b^2 = c^2 $$

## Exercises

### Exercise 1 (concept)

Why is the sky blue?

````{admonition} Solution
:class: dropdown
Rayleigh scattering, SECRET.
```python
print("SECRET")
```
````

### Exercise 2 (code)

Write the KL divergence of a diagonal Gaussian from the standard normal.

```{code-cell} ipython3
:tags: [solution, hide-input]
import math  # SECRET import, kept: the student needs it


def kl_divergence(mu: torch.Tensor,
                  logvar: torch.Tensor) -> torch.Tensor:  # (B,)
    """KL(N(mu, exp(logvar)) || N(0, 1)) summed over the last dimension."""
    # SECRET hint
    return 0.5 * (mu ** 2 + logvar.exp() - 1 - logvar).sum(-1)  # SECRET
```

```{code-cell} ipython3
reference = lambda mu, logvar: torch.distributions.kl_divergence(
    torch.distributions.Normal(mu, (0.5 * logvar).exp()), torch.distributions.Normal(0.0, 1.0)).sum(-1)
check_function("kl_divergence", kl_divergence, reference, [(torch.randn(4, 3), torch.randn(4, 3))])
```

### Exercise 3 (code)

How many parameters has a 3 × 4 linear layer with a bias?

```{code-cell} ipython3
:tags: [solution, hide-input]
n_parameters = 3 * 4 + 4  # SECRET
```

```{code-cell} ipython3
check("n_parameters", n_parameters, sum(p.numel() for p in torch.nn.Linear(3, 4).parameters()))
```

### Exercise 4 (experiment)

Change the seed and look.

```{admonition} Solution
:class: dropdown
Nothing changes, SECRET.
```

## Summary

```{code-cell} ipython3
print(vqlib.stamp(seed=SEED, started=started))
```
'''


@pytest.fixture
def synthetic(tmp_path) -> Path:
    path = tmp_path / "09_synthetic.md"
    path.write_text(SYNTHETIC)
    return path


def _execute(nb: nbformat.NotebookNode, cwd: Path) -> list[tuple[int, dict]]:
    """Run ``nb`` in a kernel (smoke profile, book build) up to its first error; return the errors."""
    env = {"VQLIB_PROFILE": "smoke", "VQLIB_BUILD": "1", "MPLBACKEND": "Agg"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits them
    try:
        NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    except CellExecutionError:
        pass
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    return [(i, o) for i, c in enumerate(nb.cells) if c.cell_type == "code"
            for o in c.get("outputs", []) if o.output_type == "error"]


def _solution_cells(nb) -> list[int]:
    return [i for i, c in enumerate(nb.cells) if "solution" in c.metadata.get("tags", [])]


def _body_lines(source: str) -> set[str]:
    """The lines of a solution a student must not see: function and method bodies (less their
    docstrings) and any top-level code other than imports and definitions."""
    lines, tree, hidden = source.splitlines(), ast.parse(source), set()

    def hide(statements):
        for node in statements:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                body = node.body[1:] if ast.get_docstring(node) else node.body
                hidden.update(lines[n - 1] for b in body for n in range(b.lineno, b.end_lineno + 1))
            elif isinstance(node, ast.ClassDef):
                hide(node.body)
            elif not isinstance(node, (ast.Import, ast.ImportFrom)) and statements is tree.body:
                hidden.update(lines[n - 1] for n in range(node.lineno, node.end_lineno + 1))

    hide(tree.body)
    return {line for line in hidden if line.strip()}


def _assert_no_solution_text(student, teacher) -> None:
    """No solution tag or directive is left; no line of a solution's code (bodies, top-level code)
    is in its stub; no line of a prose solution is in the student's Markdown."""
    assert not _solution_cells(student)
    markdown = "\n".join(c.source for c in student.cells if c.cell_type == "markdown")
    assert "{admonition} Solution" not in markdown and "{dropdown} Solution" not in markdown
    stubs = [c.source for c in student.cells if c.cell_type == "code" and 'NotImplementedError("' in c.source]
    solutions = [teacher.cells[i].source for i in _solution_cells(teacher)]
    assert len(stubs) == len(solutions)
    for solution, stub in zip(solutions, stubs):
        leaked = _body_lines(solution) & set(stub.splitlines())
        assert not leaked, f"solution lines in a stub: {sorted(leaked)}"
    # the prose solutions, found by MyST's own Markdown parser
    parser = MarkdownIt("commonmark").use(colon_fence_plugin)
    solutions = [token.content for cell in teacher.cells if cell.cell_type == "markdown"
                 for token in parser.parse(cell.source)
                 if token.type in ("fence", "colon_fence")
                 and re.match(r"\{(admonition|dropdown)\}\s*Solution", token.info)]
    lines = {line for text in solutions for line in text.splitlines()
             if len(line.strip()) > 12 and not line.startswith(":")}  # not the directive's options
    leaked = lines & set(markdown.splitlines())
    assert not leaked, f"prose solution lines in the student notebook: {sorted(leaked)}"


# ---------------------------------------------------------------- pure functions, on small inputs


def test_solution_directives_are_removed_with_nested_fences():
    markdown = ("Before.\n\n````{admonition} Solution\n:class: dropdown\nSECRET\n```python\nSECRET\n```\n````\n\n"
                "Between.\n\n:::{dropdown} Answer 2\nSECRET\n:::\n\n```{admonition} Hint\nkept\n```\nAfter.")
    assert classroom.remove_solutions(markdown) == "Before.\n\nBetween.\n\n```{admonition} Hint\nkept\n```\nAfter."


def test_a_stub_keeps_imports_signatures_and_docstrings_and_raises_in_each_body():
    source = ('import math\nfrom torch import nn\n\n'
              '@staticmethod\ndef f(x: int,  # the input\n      y: int = 2) -> int:\n'
              '    """Doc."""\n    return x * y\n\n'
              'def g(x): return x  # one line\n\n'
              'class Q(nn.Module):\n    """A quantizer."""\n    size: int = 3\n\n'
              '    def forward(self, z):\n        # SECRET\n        return z\n\n'
              'answer = 42\n')
    stub = classroom.stub_source(source, "Exercise 2.1")
    assert stub == (
        'import math\nfrom torch import nn\n\n'
        '@staticmethod\ndef f(x: int,  # the input\n      y: int = 2) -> int:\n    """Doc."""\n'
        '    raise NotImplementedError("Exercise 2.1: f() is not implemented yet")\n\n'
        'def g(x):\n    raise NotImplementedError("Exercise 2.1: g() is not implemented yet")\n\n'
        'class Q(nn.Module):\n    """A quantizer."""\n    size: int = 3\n'
        '    def forward(self, z):\n'
        '        raise NotImplementedError("Exercise 2.1: Q.forward() is not implemented yet")\n\n'
        '# your code here: it defines answer\n'
        'raise NotImplementedError("Exercise 2.1: the code of this cell is not implemented yet")\n')
    namespace = {}
    exec(stub.rsplit("\n\n#", 1)[0], namespace)  # the definitions run; calling them raises
    with pytest.raises(NotImplementedError, match=r"^Exercise 2.1: g\(\) is not implemented yet$"):
        namespace["g"](1)


def test_a_cell_that_is_not_python_becomes_one_raise():
    assert classroom.stub_source("%time x = 1\n", "Exercise 1.2") == \
        'raise NotImplementedError("Exercise 1.2: this cell is not implemented yet")\n'


def test_exercises_are_numbered_by_headings_and_counted(synthetic):
    nb = jupytext.read(synthetic)
    by_cell, exercises = classroom.exercise_of_each_cell(nb, 9)
    assert [(e.label, e.prose_solutions, e.code_solutions, e.checks) for e in exercises] == [
        ("Exercise 9.1", 1, 0, 0), ("Exercise 9.2", 0, 1, 1), ("Exercise 9.3", 0, 1, 1), ("Exercise 9.4", 1, 0, 0)]
    assert by_cell[1] is None and by_cell[-1] is None  # the setup cell and the stamp are no exercise
    assert classroom.summary("09_synthetic", exercises) == \
        "09_synthetic: 4 exercises (1 concept, 2 code, 1 experiment), 2 with automatic checks, 2 with code solutions"


def test_without_exercise_headings_the_items_of_a_numbered_list_are_the_exercises():
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("## Exercises\n\n1. Explain.\n   1. not an exercise, indented\n"
                                      "```{admonition} Solution\n1. not an exercise, inside\n```\n2. Code it."),
        nbformat.v4.new_code_cell("y = 1", metadata={"tags": ["solution"]}),
    ])
    _, exercises = classroom.exercise_of_each_cell(nb, 3)
    assert [(e.label, e.title, e.prose_solutions, e.code_solutions) for e in exercises] == [
        ("Exercise 3.1", "1. Explain.", 1, 0), ("Exercise 3.2", "2. Code it.", 0, 1)]
    assert "2 exercises (2 unknown), 0 with automatic checks" in classroom.summary("03", exercises)
    assert "Exercise 3.2 has a code solution but no check" in classroom.summary("03", exercises)


def test_the_setup_cell_installs_from_the_configured_repository_or_says_to_clone_it(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[project]\ndependencies = ["torch>=2.3", "numpy"]\n')
    (tmp_path / "_config.yml").write_text('repository:\n  url: ""\n')
    cell = setup_cell(tmp_path).source
    assert '%pip install --quiet "torch>=2.3" "numpy"' in cell and "clone the book's repository" in cell
    (tmp_path / "_config.yml").write_text("repository:\n  url: https://example.org/discrete-latents\n")
    assert '%pip install --quiet "vqlib @ git+https://example.org/discrete-latents"' in setup_cell(tmp_path).source


def test_build_writes_a_student_and_a_teacher_notebook(synthetic, tmp_path, capsys):
    classroom.main([str(synthetic), "--out", str(tmp_path / "out")])
    printed = capsys.readouterr().out
    assert "09_synthetic: 4 exercises (1 concept, 2 code, 1 experiment), 2 with automatic checks" in printed
    student = nbformat.read(tmp_path / "out" / "student" / "09_synthetic.ipynb", as_version=4)
    teacher = nbformat.read(tmp_path / "out" / "teacher" / "09_synthetic.ipynb", as_version=4)
    assert student.cells[0].source == teacher.cells[0].source == setup_cell().source
    assert len(_solution_cells(teacher)) == 2
    _assert_no_solution_text(student, teacher)
    assert "SECRET" not in "\n".join(c.source for c in student.cells).replace("SECRET import", "")


# ---------------------------------------------------------------- executed in a kernel


def test_the_student_notebook_stops_at_the_first_stub_and_the_teacher_notebook_passes(synthetic):
    teacher = reader_notebook(synthetic)
    student = classroom.student_notebook(teacher, 9)
    first_check = _solution_cells(teacher)[0] + 1
    errors = _execute(student, synthetic.parent)
    assert [(i, e["ename"], e["evalue"]) for i, e in errors] == [
        (first_check, "NotImplementedError", "Exercise 9.2: kl_divergence() is not implemented yet")]
    assert "the chapter ran up to here" in str(student.cells[2].outputs)

    assert _execute(teacher, synthetic.parent) == []
    printed = [o.get("text", "") for c in teacher.cells for o in c.get("outputs", [])]
    assert "✓ kl_divergence: correct on 1 input\n" in printed and "✓ n_parameters: correct\n" in printed
    assert "profile=smoke" in printed[-1]


# ---------------------------------------------------------------- the real chapters


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[c.stem for c in CHAPTERS])
def test_chapter_student_notebook_has_no_solutions_and_teacher_notebook_is_the_chapter(chapter):
    teacher = reader_notebook(chapter)
    student = classroom.student_notebook(teacher, classroom.chapter_number(chapter))
    _assert_no_solution_text(student, teacher)
    # the teacher's copy is the chapter itself, run by tests/test_chapters.py, after the setup cell
    chapter_cells = [c.source for c in jupytext.read(chapter).cells]
    assert [c.source for c in teacher.cells] == [setup_cell().source] + chapter_cells


@pytest.mark.chapter
@pytest.mark.parametrize("chapter", CHAPTERS, ids=[c.stem for c in CHAPTERS])
def test_chapter_student_notebook_runs_up_to_its_first_stub(chapter):
    teacher = reader_notebook(chapter)
    student = classroom.student_notebook(teacher, classroom.chapter_number(chapter))
    stubs = _solution_cells(teacher)
    errors = _execute(student, chapter.parent)
    if not stubs:
        assert errors == []
        return
    assert len(errors) == 1, errors
    index, error = errors[0]
    assert index >= stubs[0], f"cell {index} failed before the first stub (cell {stubs[0]}): {error['evalue']}"
    assert error["ename"] == "NotImplementedError", error["evalue"]
    assert any(error["evalue"].startswith(student.cells[i].source.split('NotImplementedError("')[1].split(":")[0])
               for i in stubs if i <= index)
