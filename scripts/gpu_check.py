"""The GPU check: the book on a bare CUDA machine in a few minutes, unattended (``make gpu-check``).

Stages, each timed; everything goes to one JSON file (``--out``; default ``$OUT/gpu_check.json`` where
``$OUT`` is set, else ``_build/gpu_check.json``) and to tables on the terminal:

- ``env``: Python, PyTorch, the device, bfloat16 support, the versions of the packages the book needs;
- ``unit``: the unit tests (``pytest -m "not chapter"``); the tests that take the ``device`` fixture run
  their CUDA half, and the check fails if none of them ran on CUDA. The others are CPU tests and see no
  CUDA (tests/conftest.py) unless ``--tests-see-cuda``;
- ``chapters``: every chapter executed in the ``smoke`` profile (nbclient), its closing stamp checked
  for the device it ran on;
- ``recipes``: every model of ``scripts/full_recipes.py`` at full size, trained for ``--steps`` steps at
  its full batch after ``--warmup`` steps (with the recipe's own loop: bfloat16 autocast where it uses
  it): throughput, peak GPU memory (``torch.cuda.max_memory_allocated``) next to the estimate of the
  CPU dry run's formula (with activations measured here at batch 2), and the time of its sampling or
  encoding call.

``--cpu`` runs the same stages on the CPU, small: the ``device`` tests only, one chapter, and every
recipe for one step at batch 2. The exit status is 1 if anything failed or the time budget
(``--budget``, 480 s) ran out before a stage finished. ``--missing`` only prints the modules this
Python lacks (``scripts/gpu_check.sh`` installs them from ``gpu_wheels/``).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
NEEDED = ("torch", "numpy", "scipy", "sklearn", "skimage", "matplotlib", "PIL", "torchmetrics", "tqdm", "yaml",
          "psutil", "pytest", "xdist", "pytest_timeout", "mlxtend", "av", "jupytext", "nbformat", "nbclient",
          "ipykernel", "IPython", "jupyter_client", "zmq", "myst_nb", "docutils", "markdown_it", "mdit_py_plugins")
DISTRIBUTIONS = ("torch", "numpy", "scipy", "scikit-learn", "scikit-image", "matplotlib", "torchmetrics", "pytest",
                 "pytest-xdist", "av", "mlxtend", "jupytext", "nbclient", "ipykernel", "myst-nb")


def missing_modules() -> list[str]:
    return [name for name in NEEDED if importlib.util.find_spec(name) is None]


class Budget:
    """The wall-clock budget of the whole check."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


# ----------------------------------------------------------------------------- stages

def stage_env(device: str) -> dict:
    import torch
    from importlib.metadata import PackageNotFoundError, version

    def ver(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    env = {"python": platform.python_version(), "executable": sys.executable, "torch": torch.__version__,
           "cuda_available": torch.cuda.is_available(), "device": device, "cpu_count": os.cpu_count(),
           "packages": {name: ver(name) for name in DISTRIBUTIONS}}
    if device == "cuda" and torch.cuda.is_available():
        capability = ".".join(map(str, torch.cuda.get_device_capability()))
        env |= {"gpu": torch.cuda.get_device_name(), "capability": capability, "cuda": torch.version.cuda,
                "bf16_supported": torch.cuda.is_bf16_supported(),
                "gpu_memory_gib": torch.cuda.get_device_properties(0).total_memory / 2**30}
    env["ok"] = device == "cpu" or torch.cuda.is_available()
    return env


def stage_unit(device: str, jobs: int, budget: Budget, see_cuda: bool = False) -> dict:
    """pytest in a subprocess; its JUnit XML gives the counts and the names of the failures."""
    report = Path(tempfile.mkdtemp(prefix="gpu-check-")) / "unit.xml"
    marks = "not chapter" if device == "cuda" else "device"  # on the CPU, CI runs the rest
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", marks,
           "--ignore=tests/test_chapters.py", f"--junitxml={report}"]
    if jobs > 1 and importlib.util.find_spec("xdist") is not None:
        cmd += ["-n", str(jobs)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "VQLIB_TESTS_SEE_CUDA": str(int(see_cuda))}
    started = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=max(budget.left() - 30, 10))
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": "out of time", "seconds": time.monotonic() - started}
    counts = {"passed": 0, "failed": 0, "skipped": 0, "cuda_passed": 0, "cuda_skipped": 0}
    failures = []
    if report.exists():
        for case in ET.parse(report).iter("testcase"):
            name = f"{case.get('classname')}::{case.get('name')}"
            outcome = ("failed" if case.find("failure") is not None or case.find("error") is not None
                       else "skipped" if case.find("skipped") is not None else "passed")
            counts[outcome] += 1
            if "[cuda" in name and outcome != "failed":
                counts[f"cuda_{outcome}"] += 1
            if outcome == "failed":
                failures.append(name)
    ok = proc.returncode == 0 and counts["passed"] > 0 and (device == "cpu" or counts["cuda_passed"] > 0)
    tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
    return {"ok": ok, "returncode": proc.returncode, **counts, "failures": failures[:50],
            "seconds": time.monotonic() - started, "command": " ".join(cmd), "tail": tail}


def execute_chapter(path: str, cache: str) -> dict:
    """Run one chapter in the smoke profile (in this process, which ``stage_chapters`` starts)."""
    import jupytext
    from nbclient import NotebookClient

    os.environ.update(VQLIB_PROFILE="smoke", VQLIB_BUILD="1", VQLIB_CACHE=cache, MPLBACKEND="Agg",
                      PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    started = time.monotonic()
    nb = jupytext.read(path)
    result = {"chapter": Path(path).stem}
    try:
        NotebookClient(nb, timeout=900, kernel_name="python3",
                       resources={"metadata": {"path": str(Path(path).parent)}}).execute()
        result["ok"] = True
    except Exception as error:  # CellExecutionError names the cell and the exception
        result |= {"ok": False, "error": f"{type(error).__name__}: {str(error)[-1500:]}"}
    texts = [out.get("text", "") for cell in nb.cells for out in cell.get("outputs", []) if out.get("text")]
    stamps = [line for text in texts for line in text.splitlines() if "device=" in line and "profile=" in line]
    result |= {"stamp": stamps[-1] if stamps else None, "seconds": time.monotonic() - started}
    return result


def stage_chapters(device: str, chapters: list[Path], jobs: int, budget: Budget) -> dict:
    """Each chapter in its own process, ``jobs`` at a time, sharing one fresh cache (checkpoints are written
    atomically, so a chapter that needs an earlier chapter's model trains or loads it safely)."""
    cache = tempfile.mkdtemp(prefix="gpu-check-cache-")
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    waiting, running, results = list(chapters), {}, []
    started = time.monotonic()
    while waiting or running:
        while waiting and len(running) < jobs:
            path = waiting.pop(0)
            cmd = [sys.executable, str(Path(__file__)), "--execute-chapter", str(path), "--cache", cache]
            logs = (Path(cache) / f"{path.stem}.out", Path(cache) / f"{path.stem}.err")  # files: a pipe could fill up
            with open(logs[0], "w") as out, open(logs[1], "w") as err:
                running[path] = (subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=err), logs)
        for path, (proc, logs) in list(running.items()):
            if proc.poll() is None and budget.left() > 20:
                continue
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            out, err = (log.read_text(errors="replace") for log in logs)
            del running[path]
            lines = [line for line in out.splitlines() if line.startswith("{")]
            result = json.loads(lines[-1]) if lines else {"chapter": path.stem, "ok": False,
                                                          "error": (err or "killed: out of time")[-1500:]}
            if result["ok"] and device == "cuda" and "device=cuda" not in (result.get("stamp") or ""):
                result |= {"ok": False, "error": f"the chapter did not run on CUDA: {result.get('stamp')}"}
            results.append(result)
        time.sleep(0.5)
    results.sort(key=lambda r: r["chapter"])
    return {"ok": bool(results) and all(r["ok"] for r in results), "chapters": results,
            "seconds": time.monotonic() - started}


def run_recipe(name: str, device: str, steps: int, warmup: int) -> dict:
    import torch
    from full_recipes import RECIPES, PeakRSS, SavedActivations, estimated_gpu_bytes, infer, train_steps

    torch.manual_seed(0)
    run = RECIPES[name]()
    counts = run.parameters()
    cuda = device == "cuda"
    batch = run.train_config.batch_size if cuda else 2
    for module in run.modules():
        module.to(device)
    with SavedActivations(run.modules()) as saved:  # activations at batch 2, for the estimate
        train_steps(run, steps=1, batch_size=2, device=device)
    estimate = estimated_gpu_bytes(counts, saved.peak / 2, run.train_config.batch_size)
    if warmup:
        train_steps(run, steps=warmup, batch_size=batch, device=device)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with PeakRSS() as rss:
        history = train_steps(run, steps=steps, batch_size=batch, device=device)
    if cuda:
        torch.cuda.synchronize()
    losses = [row["loss"] for row in history.train]
    example = run.example(2)
    started = time.perf_counter()
    infer(run, example, device, cpu=not cuda)
    if cuda:
        torch.cuda.synchronize()
    infer_seconds = time.perf_counter() - started
    seconds = history.seconds
    result = {"recipe": name, "ok": history.steps == steps and all(v == v and abs(v) != float("inf") for v in losses),
              "trained_parameters": counts["trained"], "batch": batch, "steps": steps, "seconds": seconds,
              "throughput": steps * batch * run.per_example / max(seconds, 1e-9), "unit": f"{run.unit}/s",
              "bf16": bool(cuda and run.amp and run.train_config.amp), "last_loss": losses[-1] if losses else None,
              "estimate_gib": estimate / 2**30, "infer_seconds": infer_seconds}
    if cuda:
        result["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    else:
        result["peak_rss_mib"] = (rss.peak - rss.before) / 2**20
    return result


def stage_recipes(device: str, names: list[str], steps: int, warmup: int, budget: Budget) -> dict:
    import gc

    import torch

    if device == "cpu":  # small models on a shared CPU: one thread each, as in the unit tests
        torch.set_num_threads(1)
    results, started = [], time.monotonic()
    for name in names:
        if budget.left() < 15:
            results.append({"recipe": name, "ok": False, "error": "not run: out of time"})
            continue
        t = time.monotonic()
        try:
            result = run_recipe(name, device, steps, warmup)
        except Exception as error:  # an out-of-memory error too: record it, free the memory, go on
            result = {"recipe": name, "ok": False, "error": f"{type(error).__name__}: {error}"[:1500],
                      "traceback": traceback.format_exc()[-3000:]}
        result["wall_seconds"] = time.monotonic() - t
        results.append(result)
        print(f"  {name}: {'ok' if result['ok'] else 'FAILED ' + result.get('error', '')} "
              f"({result['wall_seconds']:.1f} s)", flush=True)
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    return {"ok": bool(results) and all(r["ok"] for r in results), "recipes": results,
            "seconds": time.monotonic() - started}


# ----------------------------------------------------------------------------- report

def print_report(results: dict) -> None:
    env = results["env"]
    print(f"\n== gpu check on {env.get('gpu', 'the CPU')}: python {env['python']}, torch {env['torch']}, "
          f"bf16 {'supported' if env.get('bf16_supported') else 'n/a'}")
    unit = results.get("unit")
    if unit:
        print(f"unit tests: {'ok' if unit['ok'] else 'FAILED'}: {unit.get('passed', 0)} passed, "
              f"{unit.get('failed', 0)} failed, {unit.get('skipped', 0)} skipped; on CUDA {unit.get('cuda_passed', 0)} "
              f"passed, {unit.get('cuda_skipped', 0)} skipped ({unit['seconds']:.0f} s)")
        for name in unit.get("failures", []):
            print(f"  FAILED {name}")
        if not unit["ok"]:
            print(unit.get("tail") or unit.get("error", ""))
    chapters = results.get("chapters")
    if chapters:
        print(f"chapters (smoke): {'ok' if chapters['ok'] else 'FAILED'} ({chapters['seconds']:.0f} s)")
        for r in chapters["chapters"]:
            print(f"  {r['chapter']:28s} {'ok' if r['ok'] else 'FAILED'} {r.get('seconds', 0):6.0f} s  "
                  f"{(r.get('stamp') or '')[:70] if r['ok'] else r.get('error', '')[-300:]}")
    recipes = results.get("recipes")
    if recipes:
        cuda = env["device"] == "cuda"
        memory = "peak GiB" if cuda else "RSS MiB"
        print(f"recipes: {'ok' if recipes['ok'] else 'FAILED'} ({recipes['seconds']:.0f} s)")
        print(f"  {'recipe':38s} {'batch':>5s} {'throughput':>16s} {memory:>9s} {'est. GiB':>8s} {'bf16':>5s} "
              f"{'sample s':>8s}")
        for r in recipes["recipes"]:
            if not r["ok"]:
                print(f"  {r['recipe']:38s} FAILED {r.get('error', '')[:200]}")
                continue
            used = r["peak_gib"] if cuda else r["peak_rss_mib"]
            print(f"  {r['recipe']:38s} {r['batch']:5d} {r['throughput']:9.4g} {r['unit']:>8s} {used:9.2f} "
                  f"{r['estimate_gib']:8.2f} {'on' if r['bf16'] else 'off':>5s} {r['infer_seconds']:8.2f}")
    print(f"== {'PASSED' if results['ok'] else 'FAILED'} in {results['seconds']:.0f} s; results in {results['out']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="the CPU half: small, on the CPU")
    parser.add_argument("--stages", default="env,unit,chapters,recipes", help="comma-separated stages to run")
    parser.add_argument("--steps", type=int, help="measured training steps per recipe (default 10; --cpu 1)")
    parser.add_argument("--warmup", type=int, help="steps before them (default 2; --cpu 0)")
    parser.add_argument("--recipes", default="all", help="comma-separated names of scripts/full_recipes.py")
    parser.add_argument("--chapters", help="comma-separated chapter stems (default: all; --cpu: 01_vae)")
    parser.add_argument("--jobs", type=int, default=min(8, os.cpu_count() or 1), help="parallel tests and chapters")
    parser.add_argument("--budget", type=float, default=480.0, help="seconds for the whole check")
    parser.add_argument("--out", help="the JSON results file")
    parser.add_argument("--tests-see-cuda", action="store_true", help="let the CPU tests see the GPU too")
    parser.add_argument("--missing", action="store_true", help="print the modules this Python lacks, and exit")
    parser.add_argument("--execute-chapter", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.missing:
        print(" ".join(missing_modules()))
        return 0
    if args.execute_chapter:
        print(json.dumps(execute_chapter(args.execute_chapter, args.cache)))
        return 0

    started, budget = time.monotonic(), Budget(args.budget)
    default_out = Path(os.environ["OUT"]) if os.environ.get("OUT") else ROOT / "_build"
    out = Path(args.out) if args.out else default_out / "gpu_check.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    device = "cpu" if args.cpu else "cuda"
    stages = args.stages.split(",")
    results: dict = {"mode": device, "argv": sys.argv[1:], "out": str(out)}
    missing = missing_modules()
    if missing:
        print(f"missing modules: {' '.join(missing)} (scripts/gpu_check.sh installs them from gpu_wheels/)")
        results |= {"ok": False, "missing": missing, "seconds": 0.0, "env": {"python": platform.python_version()}}
        out.write_text(json.dumps(results, indent=1))
        return 1

    def save() -> None:
        results["seconds"] = time.monotonic() - started
        out.write_text(json.dumps(results, indent=1, default=str))

    print("== env", flush=True)
    results["env"] = stage_env(device)
    ok = results["env"]["ok"]
    if not ok:
        print("no CUDA device: run the CPU half with --cpu", flush=True)
    # the unit tests and the chapters check correctness: they run side by side; the recipes, which are
    # timed, run alone after them
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        unit = chapters = None
        if ok and "unit" in stages:
            print(f"== unit tests ({'the device tests' if args.cpu else 'all but the chapters'})", flush=True)
            unit = pool.submit(stage_unit, device, args.jobs, budget, args.tests_see_cuda)
        if ok and "chapters" in stages:
            names = args.chapters.split(",") if args.chapters else (["01_vae"] if args.cpu else None)
            paths = [p for p in sorted((ROOT / "chapters").glob("[0-9][0-9]_*.md")) if names is None or p.stem in names]
            print(f"== chapters in smoke: {', '.join(p.stem for p in paths)}", flush=True)
            jobs = max(1, min(len(paths), (os.cpu_count() or 1) - 4, args.jobs + 1))  # a 16-core machine: all 9
            chapters = pool.submit(stage_chapters, device, paths, jobs, budget)
        for name, future in (("unit", unit), ("chapters", chapters)):
            if future is not None:
                results[name] = future.result()
                ok &= results[name]["ok"]
    save()
    if results["env"]["ok"] and "recipes" in stages:
        from full_recipes import RECIPES

        names = list(RECIPES) if args.recipes == "all" else args.recipes.split(",")
        steps = args.steps if args.steps is not None else (1 if args.cpu else 10)
        warmup = args.warmup if args.warmup is not None else (0 if args.cpu else 2)
        print(f"== full recipes: {steps} steps after {warmup}, {'batch 2' if args.cpu else 'full batch'}", flush=True)
        results["recipes"] = stage_recipes(device, names, steps, warmup, budget)
        ok &= results["recipes"]["ok"]
    results["ok"] = bool(ok)
    save()
    print_report(results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
