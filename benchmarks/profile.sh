#!/usr/bin/env bash
# Device aid: ncu stall breakdown + instruction counts of one launch (args: fmt sparsity N [key=val ...]).
# env SHAPE=MxK (default 27648x9216); e.g. the wide kernel: SHAPE=12288x12288 bash benchmarks/profile.sh bitmap 0.5 256 wide=1
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD FLASHLLM_CACHE_DIR=/tmp/flc
OUT=${OUT:-/tmp/out}
python3 benchmarks/profile_one.py "$@"
S=smsp__average_warps_issue_stalled
M=smsp__inst_executed.sum,sm__cycles_elapsed.avg,gpu__time_duration.sum,smsp__issue_active.avg.pct_of_peak_sustained_active,sm__warps_active.avg.pct_of_peak_sustained_active,l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld.sum,l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_st.sum,l1tex__data_pipe_lsu_wavefronts_mem_shared.sum,dram__bytes_read.sum
M=$M,lts__throughput.avg.pct_of_peak_sustained_elapsed,dram__throughput.avg.pct_of_peak_sustained_elapsed
for r in barrier long_scoreboard short_scoreboard wait math_pipe_throttle mio_throttle lg_throttle not_selected selected dispatch_stall no_instruction branch_resolving drain misc imc_miss; do M=$M,${S}_${r}_per_issue_active.ratio; done
ncu --clock-control none -k regex:spmm_ -c 1 -s 2 --metrics $M python3 benchmarks/profile_one.py "$@" 2>&1 | grep -av "^==" | tee -a $OUT/ncu.txt | grep -aE "spmm|\.(sum|avg|ratio|pct)" | sed 's/  \+/ /g'
