#!/usr/bin/env bash
# The GPU measurements of docs/performance.md in one run, for a machine lent for a few minutes.
#
# Here, where pip works:   bash scripts/gpu_wheels.sh      (the packages the GPU image lacks, into .whl/)
# There, from the repo root (about 5 minutes on one H200; the device tool: carry [".whl"]):
#   bash scripts/gpu_check.sh                  # results in $OUT (default gpu_out/): 8 files, *.jsonl, *.log,
#                                              # train_trace.json.gz
#   SMOKE=1 bash scripts/gpu_check.sh          # every step, tiny and on the CPU: checks this script
#
# Steps, each under its own time limit, each run even when an earlier one failed (the exit status is the
# number of failed steps):
#   machine   GPU, driver, versions
#   train     FiRE's real-size xGen-MM (random weights made on the GPU), bf16-mixed, batch 16 as FiRE's
#             largest measured setting: samples/s, model FLOPs per step, MFU, and where the time goes
#             (torch.profiler breakdown by part: vision tower, resampler, language model, loss, backward,
#             optimizer, host-to-device copies), and the lines where the host waited for the GPU in a step
#   train4    the same at batch 4 (FiRE's per-device batch), for the scaling of MFU with batch size
#   embed     gallery embedding with the same model, bf16, batch 64: images/s and MFU
#   search    exact search of 1,000 queries in 1M x 768 on the GPU (torch backend; faiss GPU if built)
#             against the dense baseline, and whether its rankings equal the CPU's exact search
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
PY=${PYTHON:-python3}

if [ -n "${SMOKE:-}" ]; then  # the same steps at toy sizes on the CPU (tests/test_gpu_check.py runs this)
    DEVICE=(--device cpu --threads 1) BIG=tiny-xgenmm PREC=32 STEPS=(--steps 1 --warmup-steps 1)
    TRAIN_BS=2 EMBED_BS=2 SEARCH=(--queries 20 --gallery 2000 --repeats 1) IMAGE=(--image-size 64x64)
else
    DEVICE=(--device cuda) BIG=xgenmm-full PREC=bf16-mixed STEPS=(--steps 8 --warmup-steps 2)
    TRAIN_BS=16 EMBED_BS=64 SEARCH=(--queries 1000 --gallery 1000000 --repeats 5) IMAGE=()
fi

failed=0
TRACE=$(mktemp -d)/train_trace.json  # the profiler's trace, gzipped into $OUT (a raw one can pass 16 MB)
# step NAME SECONDS COMMAND...: run it with its output in $OUT/NAME.log (and on the terminal)
step() {
    local name=$1 limit=$2; shift 2
    echo "=== $name: $*" | tee "$OUT/$name.log"
    local start=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee -a "$OUT/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "=== $name: exit $rc after $((SECONDS - start)) s" | tee -a "$OUT/$name.log"
    [ "$rc" -eq 0 ] || failed=$((failed + 1))
}

step machine 60 bash -c "nvidia-smi 2>/dev/null || echo 'no nvidia-smi'; $PY -c \"
import torch, transformers, peft, lightning, faiss
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__,
      'peft', peft.__version__, 'lightning', lightning.__version__, 'faiss', faiss.__version__,
      'faiss gpu', hasattr(faiss, 'StandardGpuResources'))
print('gpu', torch.cuda.get_device_name() if torch.cuda.is_available() else None)\""
step train 240 "$PY" scripts/bench_train.py --backbone "$BIG" "${DEVICE[@]}" --precision "$PREC" \
    --batch-size "$TRAIN_BS" "${STEPS[@]}" "${IMAGE[@]}" --profile --trace "$TRACE" --json "$OUT/train.jsonl"
[ -f "$TRACE" ] && gzip -c "$TRACE" > "$OUT/train_trace.json.gz"  # chrome://tracing or ui.perfetto.dev
step train4 150 "$PY" scripts/bench_train.py --backbone "$BIG" "${DEVICE[@]}" --precision "$PREC" \
    --batch-size $((TRAIN_BS / 4 > 0 ? TRAIN_BS / 4 : 1)) "${STEPS[@]}" "${IMAGE[@]}" --json "$OUT/train.jsonl"
step embed 150 "$PY" scripts/bench_train.py --backbone "$BIG" --mode embed "${DEVICE[@]}" --precision "$PREC" \
    --batch-size "$EMBED_BS" "${STEPS[@]}" "${IMAGE[@]}" --profile --json "$OUT/embed.jsonl"
if [ -n "${SMOKE:-}" ]; then
    step search 120 "$PY" scripts/bench_search.py "${SEARCH[@]}"
else
    step search 180 "$PY" scripts/bench_search.py "${SEARCH[@]}" --device cuda
fi
echo "failed steps: $failed; results in $OUT"
exit "$failed"
