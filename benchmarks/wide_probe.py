"""Device aid: the wide (prefill) kernel against cuBLAS and the path it replaces, 65-4096 tokens.

usage: python benchmarks/wide_probe.py ['nt=32,split=2;nt=16;...']   (extra wide configs to time)
env: SHAPES=12288x12288 NS=128,256,512 CASES=bitmap:0.5,pairmap:0.8 REPS=3
Columns: cuBLAS us | old (n <= 128: the mma.sync kernel in 64-token chunks; above: decompress + cuBLAS)
| wide (dispatch's config) | each extra config; speedups over cuBLAS, interleaved medians of REPS runs.
Every column is checked against an fp32 reference first.
"""
import os
import sys

import torch
import torch.nn.functional as F

import flashllm
from flashllm.bench.kernel import clone_weight, interleaved_medians, rel_err
from flashllm.bench.timing import copies_to_defeat_l2
from flashllm.kernels import dispatch
from flashllm.kernels.decompress import dense_matmul

extra = [{kv.split("=")[0]: int(kv.split("=")[1]) for kv in c.split(",")} for c in (sys.argv[1:2] or [""])[0].split(";")
         if c]
shapes = [tuple(map(int, s.split("x"))) for s in os.environ.get("SHAPES", "12288x12288").split(",")]
cases = [(c.split(":")[0], float(c.split(":")[1])) for c in os.environ.get("CASES", "bitmap:0.5,pairmap:0.8").split(",")]
ns = [int(n) for n in os.environ.get("NS", "128,256,512,1024,2048,4096").split(",")]
reps = int(os.environ.get("REPS", "3"))
torch.manual_seed(0)


def old_path(x, w):
    return dispatch.spmm_kernel(x, w, wide=0) if x.shape[0] <= dispatch.MAX_KERNEL_N else dense_matmul(x, w)


for m, k in shapes:
    dense = torch.randn(m, k, device="cuda", dtype=torch.float16) * 0.05
    dcopies = [dense.clone() for _ in range(copies_to_defeat_l2(dense.numel() * 2))]
    for fmt, sp in cases:
        w = dense * (torch.rand_like(dense, dtype=torch.float32) >= sp)
        sw = flashllm.compress(w, fmt)
        copies = [sw] + [clone_weight(sw) for _ in range(copies_to_defeat_l2(sw.nbytes) - 1)]
        for n in ns:
            x = torch.randn(n, k, device="cuda", dtype=torch.float16)
            ref = x.float() @ w.float().T
            columns = [("old", old_path)] + [("wide", lambda x, c: dispatch.spmm_kernel(x, c, wide=1))]
            columns += [(",".join(f"{a}{b}" for a, b in cfg.items()),
                         lambda x, c, cfg=cfg: dispatch.spmm_kernel(x, c, wide=1, **cfg)) for cfg in extra]
            fns = {"cuBLAS": [lambda d=d: F.linear(x, d) for d in dcopies]}
            for label, fn in columns:
                err = rel_err(fn(x, sw), ref)
                assert err < 2e-3, (label, n, err)
                fns[label] = [lambda c=c, fn=fn: fn(x, c) for c in copies]
            us = interleaved_medians(fns, reps, launches=20)
            t_dense = us["cuBLAS"]
            cfg = dispatch.config_for(sw, n, wide=1)
            cells = [f"{label} {t_dense / us[label]:.2f}x" for label, _ in columns]
            print(f"{m}x{k} {fmt} {sp:.0%} N={n:4d} cuBLAS {t_dense:7.1f} us | " + " | ".join(cells)
                  + f"  [wide nt{cfg.nt} ctas{cfg.ctas} st{cfg.stages}]", flush=True)
