export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD FLASHLLM_CACHE_DIR=/tmp/fc
S=smsp__average_warps_issue_stalled
M=smsp__inst_executed.sum,gpu__time_duration.sum,smsp__issue_active.avg.pct_of_peak_sustained_active,sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_active,lts__t_sectors_op_read.sum,lts__throughput.avg.pct_of_peak_sustained_elapsed,dram__throughput.avg.pct_of_peak_sustained_elapsed,l1tex__data_pipe_lsu_wavefronts_mem_shared.sum
for r in barrier long_scoreboard short_scoreboard wait math_pipe_throttle mio_throttle lg_throttle not_selected selected dispatch_stall no_instruction branch_resolving membar sleeping tex_throttle; do M=$M,${S}_${r}_per_issue_active.ratio; done
for n in 128 256; do
SHAPE=12288x12288 ncu --clock-control none -k regex:spmm_wide -c 1 -s 2 --metrics $M python3 benchmarks/profile_one.py bitmap 0.5 $n wide=1 2>&1 | grep -av "^==" | grep -aE "spmm|\.(sum|avg|ratio|pct)" | sed 's/  \+/ /g'
done
