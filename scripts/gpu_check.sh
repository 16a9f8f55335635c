#!/usr/bin/env bash
# The GPU check (`make gpu-check`; `scripts/gpu_check.sh --cpu` is its CPU half): see scripts/gpu_check.py.
#
# For a bare CUDA machine without a package index: it uses that machine's own python3 and PyTorch (no
# virtual environment), and installs the packages the image lacks from the wheels in gpu_wheels/
# (`make gpu-wheels` prepares them here; carry the folder along) into a private folder, offline.
# Arguments go to scripts/gpu_check.py. Results: $OUT/gpu_check.json where $OUT is set, else
# _build/gpu_check.json. The exit status is non-zero if anything failed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
SITE=${VQLIB_GPU_SITE:-${TMPDIR:-/tmp}/vqlib-gpu-site}
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg

missing=$("$PYTHON" scripts/gpu_check.py --missing)
if [ -n "$missing" ]; then
  if ! compgen -G "gpu_wheels/*.whl" >/dev/null; then
    echo "gpu_check: $PYTHON lacks $missing, and gpu_wheels/ holds no wheels: run make gpu-wheels and carry gpu_wheels/" >&2
    exit 2
  fi
  echo "gpu_check: installing $(ls gpu_wheels/*.whl | wc -l) wheels for: $missing"
  "$PYTHON" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" gpu_wheels/*.whl
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  missing=$("$PYTHON" scripts/gpu_check.py --missing)
  if [ -n "$missing" ]; then
    echo "gpu_check: still missing after installing gpu_wheels/: $missing" >&2
    exit 2
  fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" scripts/gpu_check.py "$@"
