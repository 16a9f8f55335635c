"""Classroom notebooks: a student copy of every chapter without the solutions, a teacher copy with them.

    python book/classroom.py --out classroom                  # every chapter in chapters/
    python book/classroom.py --out classroom chapters/02_vqvae.md

writes ``classroom/student/NN_name.ipynb`` and ``classroom/teacher/NN_name.ipynb`` and prints, per
chapter, how many exercises it has and how many check themselves. Both copies start with the
setup cell of the downloadable notebooks. The student copy differs from the chapter in two ways:

- a code cell tagged ``solution`` becomes a stub: its imports stay, every function (and method)
  keeps its signature and docstring but its body becomes
  ``raise NotImplementedError("Exercise N.M: name() is not implemented yet")``, and any other
  code is replaced by one such ``raise`` at the end of the cell;
- a ``{admonition} Solution`` block (or ``{dropdown} Solution``) is removed from the Markdown.

The checks (cells calling ``vqlib.book.exercises.check...``) stay, so a student runs the notebook, meets
the first stub, fills it in, and runs the check below it. The functions here are pure
(notebook in, notebook out) so that tests can call them.
"""

from __future__ import annotations

import argparse
import ast
import copy
import re
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parent / "_ext"))
from vqlib_notebooks import ROOT, reader_notebook  # noqa: E402  (the book's extension folder)

SOLUTION_TAG = "solution"
# a directive that opens a solution: ```{admonition} Solution, :::{dropdown} Answer, ...
SOLUTION_DIRECTIVE = re.compile(r"\{(admonition|dropdown)\}\s*(Solution|Answer)\b", re.IGNORECASE)
FENCE = re.compile(r"^\s*(`{3,}|~{3,}|:{3,})(.*)$")
HEADING = re.compile(r"^(#{1,6})\s+(.*)$")
# where an exercise starts: a sub-heading of the Exercises section, "**Exercise", "Exercise 3",
# or a directive titled "Exercise ..."; failing those, items of a top-level numbered list
EXERCISE_MARK = re.compile(r"^(\*\*|)Exercise\b|^\s*(`{3,}|:{3,})\{\w+\}\s*Exercise\b", re.IGNORECASE)
LIST_ITEM = re.compile(r"^\d+[.)]\s")
CHECK_CALL = re.compile(r"\bcheck(_shape|_function)?\s*\(")


@dataclass
class Exercise:
    label: str  # "Exercise 2.3"
    title: str  # the line that starts it
    prose_solutions: int = 0
    code_solutions: int = 0
    checks: int = 0

    @property
    def kind(self) -> str:
        """concept, derivation, code or experiment, from a title like "### Exercise 3 (code): ..."."""
        m = re.search(r"\((concept|derivation|code|experiment)\)", self.title, re.IGNORECASE)
        return m.group(1).lower() if m else "unknown"


def chapter_number(path: Path) -> int:
    """02_vqvae.md -> 2."""
    return int(path.name.split("_", 1)[0])


def _fence(line: str) -> tuple[str, int] | None:
    """(character, length) of the fence a line opens or closes, e.g. ("`", 4) for ````{admonition}."""
    m = FENCE.match(line)
    return (m.group(1)[0], len(m.group(1))) if m else None


def _closes(line: str, fence: tuple[str, int]) -> bool:
    """Whether ``line`` closes ``fence``: the same character, at least as many, nothing after."""
    m = FENCE.match(line)
    return bool(m) and m.group(1)[0] == fence[0] and len(m.group(1)) >= fence[1] and not m.group(2).strip()


def _opens_solution(line: str) -> bool:
    m = FENCE.match(line)
    return bool(m and SOLUTION_DIRECTIVE.match(m.group(2).strip()))


def _markdown_lines(source: str):
    """Yield (line, outside) for each line: ``outside`` is False for the lines inside a fenced block
    (code, directives), True for the others and for the line that opens a block."""
    fence = None
    for line in source.splitlines():
        if fence is None:
            fence = _fence(line)
            yield line, True
        else:
            if _closes(line, fence):
                fence = None
            yield line, False


def remove_solutions(markdown: str) -> str:
    """``markdown`` without its solution directives (and everything inside them)."""
    out, skip = [], None
    for line in markdown.splitlines():
        if skip is None and _opens_solution(line):
            skip = _fence(line)
        elif skip is None:
            out.append(line)
        elif _closes(line, skip):
            skip = None
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip()


def exercise_of_each_cell(nb: nbformat.NotebookNode, chapter: int) -> tuple[list[Exercise | None], list[Exercise]]:
    """The exercise each cell belongs to (None outside the Exercises section), and the exercises.

    The Exercises section starts at a heading containing "Exercises" and ends at the next heading
    of the same or a higher level.
    """
    events = defaultdict(list)  # cell index -> [(kind, line)], kind: section, end, mark, item, solution
    level = None
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "markdown":
            continue
        for line, outside in _markdown_lines(cell.source):
            heading = HEADING.match(line) if outside else None
            if heading and level is None and re.search(r"\bexercises\b", heading.group(2), re.IGNORECASE):
                level = len(heading.group(1))
                events[i].append(("section", line))
            elif level is None:
                continue
            elif heading and len(heading.group(1)) <= level:
                level = None
                events[i].append(("end", line))
            elif _opens_solution(line):  # also inside an exercise written as a directive
                events[i].append(("solution", line))
            elif outside and (heading or EXERCISE_MARK.match(line)):
                events[i].append(("mark", line))
            elif outside and LIST_ITEM.match(line):
                events[i].append(("item", line))
    starts = "mark" if any(kind == "mark" for cell_events in events.values() for kind, _ in cell_events) else "item"

    exercises: list[Exercise] = []
    current: Exercise | None = None
    by_cell: list[Exercise | None] = []
    for i, cell in enumerate(nb.cells):
        for kind, line in events[i]:  # a Markdown cell: its lines move the current exercise along
            if kind == starts:
                current = Exercise(f"Exercise {chapter}.{len(exercises) + 1}", line.strip())
                exercises.append(current)
            elif kind in ("section", "end"):
                current = None
            elif kind == "solution" and current is not None:
                current.prose_solutions += 1
        by_cell.append(current)
        if cell.cell_type == "code" and current is not None:
            if SOLUTION_TAG in cell.metadata.get("tags", []):
                current.code_solutions += 1
            elif CHECK_CALL.search(cell.source):
                current.checks += 1
    return by_cell, exercises


# ---------------------------------------------------------------- stubs


def _text(lines: list[str], start: tuple[int, int], end: tuple[int, int]) -> str:
    """Source text between two ast positions (1-based line, UTF-8 byte column)."""
    encoded = [line.encode() for line in lines[start[0] - 1:end[0]]]
    if len(encoded) == 1:
        return encoded[0][start[1]:end[1]].decode()
    return b"\n".join([encoded[0][start[1]:]] + encoded[1:-1] + [encoded[-1][:end[1]]]).decode()


def _is_docstring(node: ast.stmt) -> bool:
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)


def _raise(indent: str, label: str, what: str) -> str:
    return f'{indent}raise NotImplementedError("{label}: {what} is not implemented yet")'


def _stub_function(node: ast.FunctionDef | ast.AsyncFunctionDef, lines: list[str], label: str) -> str:
    """The function's decorators, signature and docstring, with a body that raises."""
    first = node.body[0]
    start = (node.decorator_list[0].lineno if node.decorator_list else node.lineno, 0)
    if _is_docstring(first):
        kept = _text(lines, start, (first.end_lineno, first.end_col_offset))
    else:  # everything before the first statement, less comments between the signature and the body
        kept = _text(lines, start, (first.lineno, first.col_offset)).rstrip()
        kept = re.sub(r"(\n\s*(#.*)?)+$", "", kept)
    indent = " " * (first.col_offset if first.lineno > node.lineno else node.col_offset + 4)
    return f"{kept}\n{_raise(indent, label, f'{node.name}()')}"


def _stub_class(node: ast.ClassDef, lines: list[str], label: str) -> str:
    """The class statement with its docstring and fields; each method stubbed."""
    parts = [_text(lines, (node.decorator_list[0].lineno if node.decorator_list else node.lineno, 0),
                   (node.body[0].lineno, 0)).rstrip()]
    for stmt in node.body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            parts.append(_stub_function(stmt, lines, label).replace(f"{stmt.name}()", f"{node.name}.{stmt.name}()"))
        else:  # docstring, fields and constants: the interface, not the solution
            parts.append(_text(lines, (stmt.lineno, 0), (stmt.end_lineno, stmt.end_col_offset)))
    return "\n".join(parts)


def stub_source(source: str, label: str) -> str:
    """A solution cell as the student sees it: imports kept, functions and classes reduced to their
    signatures and docstrings with bodies that raise, any other code replaced by one raise."""
    try:
        tree = ast.parse(source)
    except SyntaxError:  # IPython syntax (magics): nothing to keep
        return _raise("", label, "this cell") + "\n"
    lines = source.splitlines()
    parts, defined = [], []  # parts: the kept blocks, one blank line between them; defined: other code's names
    other_code = False
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            text = _text(lines, (node.lineno, 0), (node.end_lineno, node.end_col_offset))
            if parts and parts[-1].startswith(("import ", "from ")):  # consecutive imports stay together
                parts[-1] += "\n" + text
            else:
                parts.append(text)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            parts.append(_stub_function(node, lines, label))
        elif isinstance(node, ast.ClassDef):
            parts.append(_stub_class(node, lines, label))
        else:
            other_code = True
            if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names = [n.id for t in targets for n in ast.walk(t)  # a, (b, c) = ...
                         if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)]
                defined += [n for n in names if n not in defined]
    if other_code or not parts:
        hint = f"# your code here: it defines {', '.join(defined)}\n" if defined else ""
        parts.append(hint + _raise("", label, "the code of this cell"))
    return "\n\n".join(parts) + "\n"


# ---------------------------------------------------------------- notebooks


def student_notebook(nb: nbformat.NotebookNode, chapter: int) -> nbformat.NotebookNode:
    """``nb`` with solution cells replaced by stubs and solution blocks removed from the Markdown."""
    student = copy.deepcopy(nb)
    by_cell, _ = exercise_of_each_cell(nb, chapter)
    cells = []
    for cell, exercise in zip(student.cells, by_cell):
        tags = cell.metadata.get("tags", [])
        if cell.cell_type == "code" and SOLUTION_TAG in tags:
            cell.source = stub_source(cell.source, exercise.label if exercise else f"An exercise of chapter {chapter}")
            cell.metadata["tags"] = [t for t in tags if t not in (SOLUTION_TAG, "hide-input", "hide-cell")]
            if not cell.metadata["tags"]:
                del cell.metadata["tags"]
        elif cell.cell_type == "markdown":
            cell.source = remove_solutions(cell.source)
            if not cell.source:
                continue
        cells.append(cell)
    student.cells = cells
    return student


def summary(name: str, exercises: list[Exercise]) -> str:
    """One line per chapter and one per exercise that a teacher (or an author) should look at."""
    kinds = Counter(e.kind for e in exercises)
    lines = [f"{name}: {len(exercises)} exercises ({', '.join(f'{n} {k}' for k, n in kinds.items())}), "
             f"{sum(e.checks > 0 for e in exercises)} with automatic checks, "
             f"{sum(e.code_solutions > 0 for e in exercises)} with code solutions"]
    for e in exercises:
        if not (e.prose_solutions or e.code_solutions):
            lines.append(f"  {e.label} has no solution: {e.title[:60]}")
        elif e.code_solutions and not e.checks and e.kind != "experiment":  # an experiment measures, nothing to check
            lines.append(f"  {e.label} has a code solution but no check: {e.title[:60]}")
    return "\n".join(lines)


def build(chapters: list[Path], out: Path, root: Path = ROOT) -> list[str]:
    """Write the student and teacher notebooks of ``chapters`` under ``out``; return the summaries."""
    reports = []
    for path in chapters:
        teacher = reader_notebook(path, root)
        for kind, nb in (("teacher", teacher), ("student", student_notebook(teacher, chapter_number(path)))):
            (out / kind).mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, out / kind / f"{path.stem}.ipynb")
        reports.append(summary(path.stem, exercise_of_each_cell(teacher, chapter_number(path))[1]))
    return reports


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("chapters", nargs="*", type=Path, help="chapter files (default: chapters/[0-9][0-9]_*.md)")
    parser.add_argument("--out", type=Path, default=ROOT / "classroom", help="output folder (default: classroom)")
    args = parser.parse_args(argv)
    chapters = args.chapters or sorted((ROOT / "chapters").glob("[0-9][0-9]_*.md"))
    for report in build(chapters, args.out):
        print(report)
    print(f"wrote {len(chapters)} student and {len(chapters)} teacher notebooks under {args.out}/")


if __name__ == "__main__":
    main()
