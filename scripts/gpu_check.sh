#!/usr/bin/env bash
# The first thing to run when a GPU is at hand, from a copy of the tree (no install needed: the
# machine's own torch and transformers, FAISS optional):
#
#   OUT=/some/dir bash scripts/gpu_check.sh
#   DEVICE=cpu LAYERS=1 SMALL_VOCAB=1 BENCH_ARGS="--layers 1 --batch-sizes 1 --dtypes float32" \
#       bash scripts/gpu_check.sh          # a dry run on a CPU with a reduced model
#
# Steps, each under its own time limit (about 8 minutes in all on an H100):
#   1. the machine: GPU name and memory, torch and transformers versions;
#   2. the gpu-marked tests (tests/test_gpu.py: fp16 / bf16 mixed-length batches = items alone);
#   3. `check` on the full-size architecture with random weights, fp16 and bf16
#      (scripts/gpu_check.py: recipe vs engine per item, NaN, tokens, speed, memory);
#   4. scripts/bench_encoder.py --full-size: recipe vs encoder at batch sizes 1..64.
# Every line goes to the terminal at once and to $OUT (gpu_check.log, check.txt, bench.md).
# Wheels the machine lacks (pytest, say: `pip download -d .gpu-wheels pytest`) are taken from
# .gpu-wheels/ when it is there (carry it along; it is git-ignored).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$(mktemp -d -t gpu-check-XXXX)}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT"
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
if compgen -G ".gpu-wheels/*.whl" >/dev/null; then
    SITE=$(mktemp -d -t gpu-site-XXXX)
    for wheel in .gpu-wheels/*.whl; do python -m zipfile -e "$wheel" "$SITE"; done
    PYTHONPATH="$PYTHONPATH:$SITE"
fi
log() { tee -a "$OUT/gpu_check.log"; }
step() { echo "== $1 ($(date +%H:%M:%S))" | log; }
status=0

step "machine"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
  python -c 'import torch, transformers as t; print("torch", torch.__version__, "transformers",
t.__version__, "cuda", torch.cuda.is_available())'; } 2>&1 | log

step "gpu tests"
timeout 150 python -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py 2>&1 | log
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

step "check: full-size random weights"
timeout 180 python scripts/gpu_check.py --device "$DEVICE" --out "$OUT" \
    ${LAYERS:+--layers "$LAYERS"} ${SMALL_VOCAB:+--small-vocab} 2>&1 | log
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

step "bench_encoder --full-size"
# shellcheck disable=SC2086 - BENCH_ARGS is a list of options
timeout 200 python scripts/bench_encoder.py --full-size --device "$DEVICE" --out "$OUT/bench.md" \
    ${BENCH_ARGS:-} 2>&1 | log
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

step "done (status $status); results in $OUT"
exit "$status"
