"""Offer every chapter page as a Jupyter notebook (.ipynb) that runs on a fresh Jupyter.

sphinx-book-theme (in Jupyter Book 1.0.4) lists an ``.ipynb`` download for a MyST Markdown page
only when launch buttons (Binder, Colab, ...) are configured; otherwise its download menu offers
the ``.md`` source and a PDF print. This extension converts each chapter with jupytext, puts a
setup cell first (what a reader needs on a fresh Jupyter or a hosted notebook service), writes it
to ``_sources/<page>.ipynb`` beside the ``.md`` source and adds it to the page's download menu.

The setup cell installs ``vqlib`` from the book's repository when ``repository.url`` is set in
``_config.yml`` (the one place the URL is configured). Without it, the cell installs vqlib's
dependencies from PyPI and stops with a message telling the reader to clone the repository for
vqlib itself. The classroom notebooks (``book/classroom.py``) start with the same cell.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import jupytext
import nbformat
import yaml

ROOT = Path(__file__).resolve().parents[2]


def repository_url(root: Path = ROOT) -> str:
    """The book's repository URL from ``_config.yml`` (``repository.url``), or "" when unset."""
    config = yaml.safe_load((root / "_config.yml").read_text()) or {}
    return ((config.get("repository") or {}).get("url") or "").strip()


def setup_cell(root: Path = ROOT) -> nbformat.NotebookNode:
    """The first cell of a reader's notebook: install what the chapter needs, or say how."""
    url = repository_url(root)
    if url:
        source = (
            "# Setup: on a fresh Jupyter or a hosted notebook service, this installs the book's library\n"
            "# vqlib and its dependencies. Where vqlib is already installed it does nothing.\n"
            "import importlib.util\n\n"
            'if importlib.util.find_spec("vqlib") is None:\n'
            f'    %pip install --quiet "vqlib @ git+{url}"\n')
    else:
        dependencies = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
        packages = " ".join(f'"{d}"' for d in dependencies)
        source = (
            "# Setup: installs the packages the book's library vqlib needs (quick where they are installed).\n"
            "# vqlib itself is not on PyPI: clone the book's repository and run `pip install -e .` in it,\n"
            "# or copy its vqlib/ folder next to this notebook.\n"
            f"%pip install --quiet {packages}\n"
            "import importlib.util\n\n"
            'if importlib.util.find_spec("vqlib") is None:\n'
            '    raise ModuleNotFoundError("vqlib, the book\'s library, is not installed: clone the book\'s "\n'
            '                              "repository and run `pip install -e .` in it (or copy its vqlib/ "\n'
            '                              "folder next to this notebook), then restart the kernel")\n')
    return nbformat.v4.new_code_cell(source, metadata={"tags": ["setup"]})


def reader_notebook(chapter: Path, root: Path = ROOT) -> nbformat.NotebookNode:
    """A MyST Markdown chapter as an .ipynb notebook that starts with the setup cell."""
    nb = jupytext.read(chapter)
    nb.metadata.pop("jupytext", None)  # a plain notebook, not paired with a text file
    nb.cells.insert(0, setup_cell(root))
    for i, cell in enumerate(nb.cells):
        cell.id = f"cell-{i}"  # stable ids: the same chapter gives the same file
    return nb


def _add_notebook_download(app, pagename, templatename, context, doctree) -> None:
    """Write the page's notebook into _sources/ and let the theme list it (it reads ipynb_source)."""
    source = Path(app.env.doc2path(pagename))
    if doctree is None or source.suffix != ".md" or "kernelspec" not in app.env.metadata.get(pagename, {}):
        return
    target = Path(app.outdir, "_sources", pagename + ".ipynb")
    target.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(reader_notebook(source, Path(app.srcdir)), target)
    context["ipynb_source"] = pagename + ".ipynb"


def setup(app):
    # before sphinx-book-theme builds its download menu (priority 501)
    app.connect("html-page-context", _add_notebook_download, priority=500)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
