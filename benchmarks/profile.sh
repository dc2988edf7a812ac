#!/usr/bin/env bash
# Device aid: ncu summary of one launch + SASS of the bitmap kernel's inner loop.
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD FLASHLLM_CACHE_DIR=/tmp/flc
OUT=${OUT:-/tmp/out}
python3 benchmarks/profile_one.py "$@"
ncu --clock-control none -k regex:spmm_ -c 1 -s 2 --section SpeedOfLight --section WarpStateStats --section LaunchStats \
    --section Occupancy --section InstructionStats --section MemoryWorkloadAnalysis_Tables \
    python3 benchmarks/profile_one.py "$@" 2>&1 | grep -v "^==PROF==" | tee $OUT/ncu.txt | \
    grep -E "Duration|Throughput|Executed Ipc|Issue Slots|Stall|Warp Cycles|Achieved Occupancy|Registers|Bank|Instructions|Theoretical Occ|Block Limit|smsp__pcsamp|Memory \[%\]|DRAM" | head -60
for f in /tmp/flc/*/*.cubin; do cuobjdump -sass $f > $OUT/$(basename $f).sass 2>/dev/null; done
ls $OUT
