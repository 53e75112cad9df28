#!/usr/bin/env bash
# Builds .venv-bench: the benchmark-only environment in which bench/tasks.py runs difflab's inpainting,
# denoising and anomaly detection beside classical baselines (BM3D, non-local means, biharmonic and Telea
# inpainting, IsolationForest / LOF / OCSVM). difflab itself never depends on these packages.
#
#   bash bench/setup_bench.sh            # from the repository root; reruns are cheap (pip skips what is there)
#
# Pins:
#   torch 2.13.0   the local CPU wheel (pip's find-links /opt/wheels), the same torch as .venv
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv-bench}
PY=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip"
$PIP install --upgrade pip setuptools wheel
$PIP install "torch==2.13.0"
$PIP install bm3d scikit-image opencv-python-headless scikit-learn
$PIP install -e .
"$VENV/bin/python" - <<'PY'
import bm3d, cv2, skimage, sklearn, torch, numpy, difflab
print("torch", torch.__version__, "numpy", numpy.__version__, "bm3d", getattr(bm3d, "__version__", "?"),
      "skimage", skimage.__version__, "cv2", cv2.__version__, "sklearn", sklearn.__version__)
print("difflab", difflab.__file__)
PY
