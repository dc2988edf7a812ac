#!/usr/bin/env bash
# One device call: GPU tests, the sanitizers, then a benchmark; the short table prints last, JSON/PNG go to $OUT.
# usage (on the device): bash benchmarks/device_run.sh [tests|sanitize|bench|all] [flashllm bench args...]
#   bench kernel --large-n, bench e2e --model opt-30b ..., bench probe configs ...: any `flashllm bench` table
#   (all: tests, sanitize, then `flashllm bench kernel`)
# tests: FLASHLLM_SEED fixes the GPU tests' seed; FLASHLLM_FUZZ_SECONDS the fuzz test's budget (150).
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD FLASHLLM_CACHE_DIR=${FLASHLLM_CACHE_DIR:-/tmp/flashllm-cache}
# Tensor parallel (bench e2e --tp): NVLink multicast off, which these machines do not provide
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
what=${1:-all}; shift || true
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
python3 -c "import torch, cuda.bindings; print('torch', torch.__version__, torch.cuda.get_device_name())"
if [[ $what == tests || $what == all ]]; then
  python3 -m pytest tests -m gpu -q -rP --maxfail=30 -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests.log" | tail -25
fi
if [[ $what == sanitize || $what == all ]]; then
  # memcheck over every case; racecheck and synccheck (many times slower) over the light set
  for tool in memcheck racecheck synccheck; do
    set=$([[ $tool == memcheck ]] && echo full || echo light)
    start=$SECONDS
    compute-sanitizer --tool $tool --report-api-errors no --error-exitcode 9 python3 benchmarks/sanitize_cases.py $set \
      2>&1 | tee "$OUT/sanitizer_$tool.log" | tail -4
    echo "compute-sanitizer $tool ($set): exit code ${PIPESTATUS[0]}, $((SECONDS - start)) s"
  done
fi
if [[ $what == bench ]]; then
  python3 -m flashllm.bench "$@" --out "$OUT" 2>&1 | tee "$OUT/bench.log" | grep -v '^[0-9]*x[0-9]* N='
elif [[ $what == all ]]; then
  python3 -m flashllm.bench kernel --out "$OUT" 2>&1 | tee "$OUT/bench.log" | grep -v '^[0-9]*x[0-9]* N='
fi
