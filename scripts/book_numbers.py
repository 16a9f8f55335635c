"""Every number a built book glued into its pages, to compare two builds.

    python scripts/book_numbers.py _build > numbers.json
    python scripts/book_numbers.py _build other/_build     # prints the differences; exit 1 if any
    python scripts/book_numbers.py --times _build          # each chapter's execution time in that build

Reads the executed chapters from a build's jupyter cache (``<build>/.jupyter_cache``) and writes
{chapter: {glued name: value as printed}} (figures are left out: their text is only a size). Two
builds of one commit should print nothing: a difference is a number that depends on something other
than the code (the load of the machine, the clock, an unseeded draw).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from jupyter_cache import get_cache

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_chapter import glued  # noqa: E402


def book_numbers(build: Path) -> dict[str, dict[str, str]]:
    cache_path = build / ".jupyter_cache"
    if not cache_path.is_dir():
        raise SystemExit(f"{build} has no .jupyter_cache: expected a folder the book was built into (e.g. _build)")
    cache = get_cache(cache_path)
    numbers = {}
    for record in cache.list_cache_records():
        notebook = cache.get_cache_bundle(record.pk).nb
        values = {k: v for k, v in glued(notebook).items() if not v.startswith("<Figure")}
        numbers[Path(record.uri).stem] = dict(sorted(values.items()))
    return dict(sorted(numbers.items()))


def execution_times(build: Path) -> dict[str, float]:
    """{chapter: seconds its execution took in that build}, as the jupyter cache recorded it."""
    cache = get_cache(build / ".jupyter_cache")
    return {Path(r.uri).stem: float(r.data.get("execution_seconds", float("nan")))
            for r in sorted(cache.list_cache_records(), key=lambda r: r.uri)}


def differences(first: dict[str, dict[str, str]], second: dict[str, dict[str, str]]) -> list[str]:
    """One line per glued value that the two builds' numbers disagree on (or that only one has)."""
    lines = []
    for chapter in sorted(set(first) | set(second)):
        a, b = first.get(chapter, {}), second.get(chapter, {})
        lines += [f"{chapter}:{name}: {a.get(name)!r} != {b.get(name)!r}"
                  for name in sorted(set(a) | set(b)) if a.get(name) != b.get(name)]
    return lines


def main(argv: list[str]) -> int:
    if argv[:1] == ["--times"] and len(argv) == 2:
        times = execution_times(Path(argv[1]))
        for chapter, seconds in times.items():
            print(f"{chapter:28s} {seconds:7.1f} s")
        print(f"{'all chapters':28s} {sum(times.values()):7.1f} s")
        return 0
    if len(argv) not in (1, 2):
        raise SystemExit(__doc__)
    first = book_numbers(Path(argv[0]))
    if len(argv) == 1:
        print(json.dumps(first, indent=1, ensure_ascii=False))
        return 0
    lines = differences(first, book_numbers(Path(argv[1])))
    print("\n".join(lines) if lines else f"{sum(map(len, first.values()))} glued numbers, all equal", end="\n")
    return 1 if lines else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
