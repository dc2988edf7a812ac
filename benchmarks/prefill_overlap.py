"""Device aid: can the large-N path overlap decompression with cuBLAS?  12288x12288 bitmap at 50 %.

Times (CUDA events, medians): dense F.linear; decompress alone; the dispatched path (decompress then
cuBLAS, in chunks); and a two-stream pipeline - chunk i+1 decompressed on a side stream while cuBLAS
multiplies chunk i - for a few chunk sizes.
usage: python benchmarks/prefill_overlap.py   (env NS=512,1024,2048 SHAPE=12288x12288 SPARSITY=0.5)
"""
import os
import statistics

import torch
import torch.nn.functional as F

import flashllm
from flashllm.kernels.decompress import dense_matmul
from flashllm.kernels.dispatch import decompress_cuda

m, k = map(int, os.environ.get("SHAPE", "12288x12288").split("x"))
sp = float(os.environ.get("SPARSITY", "0.5"))
torch.manual_seed(0)
w = torch.randn(m, k, device="cuda", dtype=torch.float16) * (torch.rand(m, k, device="cuda") >= sp)
sw = flashllm.compress(w, "bitmap")
mb = -(-m // 64)


def timed(fn, reps=7):
    fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b) * 1e3)
    return statistics.median(ts)


side = torch.cuda.Stream()


def pipelined(x, rows_per_chunk):
    """chunk i+1 expands on `side` while the main stream multiplies chunk i (every chunk its own buffer:
    this measures the overlap, not the memory bound)."""
    main = torch.cuda.current_stream()
    step = max(1, rows_per_chunk // 64)
    starts = list(range(0, mb, step))
    outs = []
    ready = [torch.cuda.Event() for _ in starts]
    dense = [None] * len(starts)
    side.wait_stream(main)
    with torch.cuda.stream(side):
        for i, s in enumerate(starts):
            dense[i] = decompress_cuda(sw, s, min(mb, s + step))
            ready[i].record(side)
    for i, s in enumerate(starts):
        main.wait_event(ready[i])
        outs.append(F.linear(x, dense[i]))
    for d in dense:
        d.record_stream(main)
    return torch.cat(outs, dim=-1)


for n in map(int, os.environ.get("NS", "512,1024,2048").split(",")):
    x = torch.randn(n, k, device="cuda", dtype=torch.float16)
    ref = F.linear(x, w)
    t_dense = timed(lambda: F.linear(x, w))
    t_dec = timed(lambda: decompress_cuda(sw))
    t_path = timed(lambda: dense_matmul(x, sw))
    cells = []
    for rows in (1024, 2048, 4096):
        y = pipelined(x, rows)
        assert (y.float() - ref.float()).abs().max() < 1e-1 * ref.float().abs().max()
        t = timed(lambda r=rows: pipelined(x, r))
        cells.append(f"pipe{rows} {t:7.1f} ({t_dense / t:.2f}x)")
    print(f"{m}x{k} {sp:.0%} N={n:5d} dense {t_dense:7.1f}  decompress {t_dec:6.1f}  path {t_path:7.1f} "
          f"({t_dense / t_path:.2f}x) | " + " | ".join(cells), flush=True)
