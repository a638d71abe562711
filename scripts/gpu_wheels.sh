#!/usr/bin/env bash
# Download, on a machine with package access, the wheels that scripts/gpu_check.sh needs on a GPU machine
# that cannot reach a package index. That machine's image (Python 3.12, x86-64) already holds torch,
# transformers, peft, lightning, torchmetrics, rich and Pillow; it lacks faiss, jsonargparse and omegaconf.
#
#   bash scripts/gpu_wheels.sh            # fills .whl/ (ignored by git)
#
# gpu_check.sh installs whatever .whl/ holds into /tmp/site before it runs (about 20 MB: carry `.whl`).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
mkdir -p .whl
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
         manylinux2014_x86_64 manylinux1_x86_64; do platforms+=(--platform "$p"); done
# pure-Python ones need no platform; faiss-cpu is the only compiled one
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d .whl faiss-cpu==1.15.1
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d .whl \
    jsonargparse==4.53.0 docstring-parser==0.18.0 typeshed-client==2.15.0 omegaconf==2.4.0
ls -la .whl
