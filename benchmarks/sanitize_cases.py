"""Representative kernel launches for compute-sanitizer (run on the device).

usage: python3 benchmarks/sanitize_cases.py [full|light]
  full   every shape below at every route: for memcheck
  light  fewer token counts and splits, the near-empty weights kept: for racecheck and synccheck, which
         instrument every shared-memory access and run many times slower
Near-empty weights (99.9 % and 100 %) are in both: their blocks are smaller than a bitmap header.
"""

import sys

import torch

import flashllm
from flashllm.kernels import spmm as dispatch
from flashllm.kernels.decompress import decompress_cuda
from flashllm.kernels.norm import row_norm

light = sys.argv[1:] == ["light"]
torch.manual_seed(0)
hopper = torch.cuda.get_device_capability() == (9, 0)
cases = 0
for fmt in ("bitmap", "tiled_csl", "pairmap"):
    for dtype in (torch.float16, torch.bfloat16):
        shapes = [(1, 1, 0.0), (333, 517, 0.5), (130, 4100, 0.9), (64, 64, 0.0), (257, 300, 1.0), (2048, 1024, 0.7),
                  (1000, 4100, 0.999), (640, 2048, 1.0)]
        for (m, k, s) in shapes[4:] if light else shapes:
            w = torch.randn(m, k, device="cuda").to(dtype)
            w = w * (torch.rand(m, k, device="cuda") >= s)
            sw = flashllm.compress(w, fmt)
            for n in (1, 17, 64) if light else (1, 8, 17, 64, 300):
                x = torch.randn(n, k, device="cuda").to(dtype)
                bias = torch.randn(m, device="cuda").to(dtype)
                for split in (None, 3) if light else (None, 1, 3):
                    y = dispatch.spmm_kernel(x, sw, split=split)
                    y = dispatch.spmm_kernel(x, sw, bias, split=split)  # the epilogue / reduce reads the bias
                    cases += 2
                if hopper and fmt != "pairmap":  # both MMA paths, whichever dispatch prefers
                    for wg in (False, True):
                        y = dispatch.spmm_kernel(x, sw, wg=wg)
                        cases += 1
            assert torch.equal(decompress_cuda(sw), w)  # as numbers: w * mask leaves -0.0 where compress stores +0
            cases += 1
            if hopper and fmt != "tiled_csl":  # the wide kernel: tiles, groups, split, a 3-deep X ring, stream-K
                for n, kw in ((65, {"nt": 16}), (300, {"nt": 32, "split": 2}), (130, {"nt": 16, "stages": 3}),
                              (300, {"ctas": 7}), (40, {"nt": 8}), (64, {"nt": 8, "groups": 3, "ctas": 5}),
                              (17, {"nt": 4, "groups": 3}), (70, {"nt": 4, "groups": 4, "ctas": 6})):
                    dispatch.spmm_kernel(torch.randn(n, k, device="cuda").to(dtype), sw, bias, wide=1, **kw)
                    cases += 1
            if fmt == "pairmap":  # every tile config of its kernel (spw 1 is never the heuristic's)
                x = torch.randn(40, k, device="cuda").to(dtype)
                for kw in ({"spw": 1}, {"spw": 1, "stages": 4, "split": 2}, {"stages": 3, "split": 5}):
                    dispatch.spmm_kernel(x, sw, **kw)
                    cases += 1
for dtype in (torch.float16, torch.bfloat16):  # sliced ELL: every launch shape, bias, decompress
    shapes = [(1, 1, 0.0), (333, 517, 0.5), (130, 4100, 0.9), (257, 300, 1.0), (1000, 5000, 0.95), (700, 3000, 0.999)]
    for (m, k, s) in shapes[3:] if light else shapes:
        w = torch.randn(m, k, device="cuda").to(dtype)
        w = w * (torch.rand(m, k, device="cuda") >= s)
        sw = flashllm.compress(w, "sell")
        bias = torch.randn(m, device="cuda").to(dtype)
        for n in (1, 8, 17, 40):
            x = torch.randn(n, k, device="cuda").to(dtype)
            for kw in ({}, {"split": 1}, {"parts": 3}, {"warps": 4, "depth": 2}, {"warps": 16, "parts": 8}):
                dispatch.spmm_kernel(x, sw, **kw)
                dispatch.spmm_kernel(x, sw, bias, **kw)
                cases += 2
        assert torch.equal(decompress_cuda(sw), w)
        cases += 1
for dtype in (torch.float16, torch.bfloat16):  # the row norms (kernels/norm.py)
    for rows, d in [(1, 8), (8, 7168), (37, 16384), (512, 4096)]:
        x, g = torch.randn(rows, d, device="cuda").to(dtype), torch.randn(d, device="cuda").to(dtype)
        assert row_norm(x, g, g, 1e-5, rms=False) is not None and row_norm(x, g, None, 1e-6, rms=True) is not None
        cases += 2
torch.cuda.synchronize()
print(f"sanitize cases: {cases} launches done")
