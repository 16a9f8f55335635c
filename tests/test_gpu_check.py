"""scripts/gpu_check.py works here, on its CPU half, and the wheels it carries are the book's versions."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def gpu_check(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cpu_half_trains_a_recipe_and_writes_the_results(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = gpu_check("--cpu", "--stages", "env,recipes", "--recipes", "mnist-vqvae", "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads(out.read_text())
    assert results["ok"] and results["mode"] == "cpu" and results["env"]["torch"]
    (recipe,) = results["recipes"]["recipes"]
    assert recipe["recipe"] == "mnist-vqvae" and recipe["ok"] and recipe["steps"] == 1 and recipe["batch"] == 2
    assert recipe["throughput"] > 0 and recipe["estimate_gib"] > 0 and recipe["bf16"] is False
    assert "mnist-vqvae" in proc.stdout and "PASSED" in proc.stdout


def test_a_failure_fails_the_check(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = gpu_check("--cpu", "--stages", "env,recipes", "--recipes", "no-such-recipe", "--out", str(out))
    assert proc.returncode == 1 and "FAILED" in proc.stdout
    results = json.loads(out.read_text())
    assert not results["ok"] and "no-such-recipe" in results["recipes"]["recipes"][0]["error"]


def test_this_environment_lacks_no_module_of_the_check():
    proc = gpu_check("--missing")
    assert proc.returncode == 0 and proc.stdout.strip() == "", proc.stdout


def test_the_carried_wheels_are_pinned_by_the_constraints():
    """make gpu-wheels downloads scripts/gpu_wheels.txt with -c constraints.txt: each must be pinned there."""
    def name(line: str) -> str:
        return re.split(r"[=<> #]", line.strip(), maxsplit=1)[0].lower().replace("_", "-")

    wheels = {name(line) for line in (ROOT / "scripts" / "gpu_wheels.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")}
    pinned = {name(line) for line in (ROOT / "constraints.txt").read_text().splitlines() if "==" in line}
    assert len(wheels) > 30 and not wheels - pinned, sorted(wheels - pinned)
