"""Execute chapters headless, as the book build does, and print their time and glued numbers.

    python scripts/run_chapter.py chapters/02_vqvae.md [more chapters] [--profile quick] [--out DIR]

Each chapter runs in a fresh kernel (``VQLIB_BUILD=1``, profile ``--profile``), in order, so a later
chapter reuses the models an earlier one cached (``$VQLIB_CACHE``). Per chapter it prints the wall
time, the CPU time of the kernel (user + system, which a busy machine inflates far less than the wall
time) and every glued value; with ``--out`` it writes the executed notebook and a JSON of the glued
values (``<stem>.ipynb``, ``<stem>.glue.json``), the format ``scripts/book_numbers.py`` compares.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import jupytext
import nbformat
from nbclient import NotebookClient

GLUE_MIME = "application/papermill.record/text/plain"


def glued(notebook: nbformat.NotebookNode) -> dict[str, str]:
    """Every glued value of an executed notebook: {name: its text/plain form}."""
    values = {}
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            name = output.get("metadata", {}).get("scrapbook", {}).get("name")
            if name is not None:
                data = output.get("data", {})
                values[name] = data.get(GLUE_MIME, data.get("text/plain", ""))
    return values


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(chapter: Path, profile: str, timeout: int) -> tuple[nbformat.NotebookNode, float, float]:
    notebook = jupytext.read(chapter)
    os.environ.update(VQLIB_PROFILE=profile, VQLIB_BUILD="1", MPLBACKEND="Agg")
    client = NotebookClient(notebook, timeout=timeout, resources={"metadata": {"path": str(chapter.parent)}},
                            kernel_name="python3")
    wall, cpu = time.perf_counter(), children_cpu()
    client.execute()  # the kernel is a child process: its CPU time is counted once it has exited
    return notebook, time.perf_counter() - wall, children_cpu() - cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("chapters", nargs="+", type=Path)
    parser.add_argument("--profile", default="quick", choices=("smoke", "quick", "full"))
    parser.add_argument("--out", type=Path, help="folder for the executed notebooks and their glued values")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    args = parser.parse_args(argv)
    for chapter in args.chapters:
        if not chapter.is_file():
            parser.error(f"{chapter} is not a file: expected a chapter such as chapters/02_vqvae.md")
        notebook, wall, cpu = run(chapter.resolve(), args.profile, args.timeout)
        values = glued(notebook)
        print(f"{chapter}: {wall:.0f} s wall, {cpu:.0f} s CPU, {len(values)} glued values", flush=True)
        for name, value in values.items():
            print(f"  {name} = {value}")
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            nbformat.write(notebook, args.out / f"{chapter.stem}.ipynb")
            (args.out / f"{chapter.stem}.glue.json").write_text(json.dumps(values, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
