#!/usr/bin/env bash
# Builds .venv-peers: the benchmark-only environment in which bench/samplers.py runs difflab's samplers side by
# side with k-diffusion's and diffusers'. difflab itself never depends on these packages.
#
#   bash bench/setup_peers.sh            # from the repository root; reruns are cheap (pip skips what is there)
#
# Pins (see shared docs/peers.md):
#   torch 2.14.1 + torchvision 0.29.1  the local pair that imports together (registry torchvision does not
#                                      import beside the local torch 2.13 CPU wheel); a CUDA build, runs on CPU
#   setuptools<81                      k-diffusion imports clip, which needs pkg_resources (gone in 81)
#   numpy<2                            one of k-diffusion's dependencies pins it
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv-peers}
PY=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip"
$PIP install --upgrade pip "setuptools<81" wheel
$PIP install "torch==2.14.1" "torchvision==0.29.1" "numpy<2"
$PIP install "setuptools<81" "numpy<2" k-diffusion diffusers scipy matplotlib scikit-learn
$PIP install --no-deps -e .
# difflab's own runtime requirements that the lines above may not have brought in
$PIP install "setuptools<81" "numpy<2" -e .
"$VENV/bin/python" - <<'PY'
import diffusers, k_diffusion, torch, torchvision, difflab, numpy, setuptools
print("torch", torch.__version__, "torchvision", torchvision.__version__, "numpy", numpy.__version__,
      "setuptools", setuptools.__version__)
print("k-diffusion", getattr(k_diffusion, "__version__", "?"), "diffusers", diffusers.__version__)
print("difflab", difflab.__file__)
PY
