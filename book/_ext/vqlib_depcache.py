"""Re-execute a chapter when a vqlib file it imports changes.

myst-nb's execution cache keys a notebook on the text of its cells only, so a change to the
library would leave stale outputs in the book. This extension hashes, for every chapter, the
vqlib source files it imports (followed transitively through vqlib's own imports). When a hash
differs from the one recorded at the last build, it drops that chapter's cached execution and
tells Sphinx to re-read the page. The execution profile (``VQLIB_PROFILE``) is part of the hash:
outputs computed in ``smoke`` are never published by a ``quick`` build.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
from pathlib import Path

PACKAGE = "vqlib"


def _imported_modules(source: str) -> set[str]:
    """Names of vqlib modules imported by Python ``source`` (unparsable lines are skipped)."""
    found: set[str] = set()
    for line_block in _code_blocks(source):
        try:
            tree = ast.parse(line_block)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.split(".")[0] == PACKAGE}
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == PACKAGE:
                found.add(node.module)
                found |= {f"{node.module}.{a.name}" for a in node.names}  # `from vqlib import data`
    return found


def _code_blocks(text: str) -> list[str]:
    """The code cells of a MyST notebook (or the whole text of a .py file)."""
    if "```{code-cell}" not in text:
        return [text]
    blocks, current, inside = [], [], False
    for line in text.splitlines():
        if line.startswith("```{code-cell}"):
            inside, current = True, []
        elif inside and line.startswith("```"):
            inside = False
            # cell options (":tags:") and IPython magics ("%config", "!pip") are not Python
            blocks.append("\n".join(l for l in current if not l.lstrip().startswith((":", "%", "!"))))
        elif inside:
            current.append(line)
    return blocks


def _module_file(root: Path, module: str) -> Path | None:
    parts = module.split(".")
    for candidate in (root.joinpath(*parts).with_suffix(".py"), root.joinpath(*parts, "__init__.py")):
        if candidate.is_file():
            return candidate
    return None


def dependency_files(root: Path, source: str) -> list[Path]:
    """All vqlib files that ``source`` imports, directly or through other vqlib files."""
    todo, seen = list(_imported_modules(source)), set()
    while todo:
        parts = todo.pop().split(".")
        # importing vqlib.a.b runs vqlib/__init__.py and vqlib/a/__init__.py too
        for i in range(1, len(parts) + 1):
            path = _module_file(root, ".".join(parts[:i]))
            if path is not None and path not in seen:
                seen.add(path)
                todo.extend(_imported_modules(path.read_text()))
    return sorted(seen)


def dependency_hash(root: Path, chapter: Path, profile: str = "") -> str:
    """Hash of the vqlib files ``chapter`` imports, and of the profile it is executed in."""
    digest = hashlib.sha256(f"profile={profile}".encode())
    for path in dependency_files(root, chapter.read_text()):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _outdated(app, env, added, changed, removed) -> list[str]:
    root = Path(app.srcdir)
    cache_path = Path(app.config.nb_execution_cache_path or root / "_build" / ".jupyter_cache")
    record_file = cache_path / "vqlib_dependencies.json"
    old = json.loads(record_file.read_text()) if record_file.is_file() else {}
    new, stale = {}, []
    for docname in env.found_docs:
        path = Path(env.doc2path(docname))
        if path.suffix != ".md" or not path.is_file():
            continue
        new[docname] = dependency_hash(root, path, os.environ.get("VQLIB_PROFILE", ""))
        if docname in old and old[docname] != new[docname]:
            stale.append(docname)
    if stale and cache_path.exists():
        from jupyter_cache import get_cache

        cache = get_cache(cache_path)
        stale_paths = {str(Path(env.doc2path(d)).resolve()) for d in stale}
        for record in cache.list_cache_records():
            if record.uri and str(Path(record.uri).resolve()) in stale_paths:
                cache.remove_cache(record.pk)
    cache_path.mkdir(parents=True, exist_ok=True)
    record_file.write_text(json.dumps(new, indent=1, sort_keys=True))
    return stale


def setup(app):
    app.connect("env-get-outdated", _outdated)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
