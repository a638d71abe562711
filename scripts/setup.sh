#!/usr/bin/env bash
# Create (or reuse) a virtual environment in .venv and install cir_lightning into it.
#
#   bash scripts/setup.sh            # CPU machines, laptops, CI
#   CIR_TORCH="torch" bash scripts/setup.sh                     # newest torch from PyPI (CUDA build on Linux)
#   CIR_TORCH="torch --index-url https://download.pytorch.org/whl/cu128" bash scripts/setup.sh
#
# torch is installed first and on its own, so the choice of build (CPU or CUDA) is the user's:
# by default `torch==2.13.0`, which on these CPU machines resolves to the local CPU wheel and on an
# ordinary Linux machine with PyPI to the standard (CUDA) build. cir_lightning's own requirements
# accept any torch >= 2.6, so installing the package afterwards never replaces the chosen build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${CIR_PYTHON:-python3}
VENV=${CIR_VENV:-.venv}
EXTRAS=${CIR_EXTRAS:-dev}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
# shellcheck disable=SC2086
"$VENV/bin/python" -m pip install -q ${CIR_TORCH:-torch==2.13.0}
"$VENV/bin/python" -m pip install -q -e ".[${EXTRAS}]"
"$VENV/bin/python" -c "import torch, cir_lightning; print(f'cir_lightning {cir_lightning.__version__} ready (torch {torch.__version__}, cuda available: {torch.cuda.is_available()})')"
