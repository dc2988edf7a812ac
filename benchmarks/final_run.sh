#!/usr/bin/env bash
# One device call (nvidia-h200): GPU tests, sanitizer, kernel bench, then OPT-30B end to end (our dense
# engine and sparse 50/70/80/90 % in the auto formats, Tiled-CSL at 90 %, sell at 80 %).  Results under $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD FLASHLLM_CACHE_DIR=${FLASHLLM_CACHE_DIR:-/tmp/flashllm-cache}
OUT=${OUT:-/tmp/out}
bash benchmarks/device_run.sh all 2>&1 | grep -v "^\s*$" | grep -v "Warning\|warn\|return cls\|csr = " | tail -14
e2e() { python3 -m flashllm.bench e2e --model opt-30b --batch 8,16,32 --reps 1 "$@" 2>&1 | grep -E "^\s*(dense|sparse)" ; }
e2e --variants dense,sparse --sparsities 0.5,0.7,0.8,0.9 --out "$OUT/e2e_auto"
e2e --variants sparse --sparsities 0.9 --format tiled_csl --out "$OUT/e2e_csl90"
e2e --variants sparse --sparsities 0.8 --format sell --out "$OUT/e2e_sell80"
