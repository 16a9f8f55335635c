"""Every trained model in the cache and why its training stopped.

    python scripts/checkpoint_report.py [CACHE]     # default: $VQLIB_CACHE, else ~/.cache/vqlib

Lists each checkpoint under ``<cache>/checkpoints`` with its steps done and why its last run ended
("steps": its step budget, the only way a run finishes). Exits 1 if any checkpoint stopped for
another reason (a user's time limit, ``stop_at``), so a build can prove that every model it used
ran its full step budget.
"""

from __future__ import annotations

import sys
from pathlib import Path

from vqlib.core.cache import cache_dir
from vqlib.training.checkpoints import read_checkpoint


def main(argv: list[str]) -> int:
    root = Path(argv[0]) if argv else cache_dir()
    paths = sorted((root / "checkpoints").glob("*.pt"))
    if not paths:
        raise SystemExit(f"no checkpoints in {root / 'checkpoints'}: expected a vqlib cache a book was built with")
    unfinished = 0
    for path in paths:
        history = read_checkpoint(path)["history"]
        ok = history["stopped"] == "steps"
        unfinished += not ok
        print(f"{'ok ' if ok else 'NOT'} {path.name:60s} {history['steps']:>7} steps, stopped by "
              f"{history['stopped'] or 'an interruption'}")
    print(f"{len(paths)} checkpoints, {unfinished} not finished by their step budget")
    return 1 if unfinished else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
