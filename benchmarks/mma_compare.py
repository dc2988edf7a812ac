"""Device aid: mma.sync vs wgmma kernels (auto config otherwise) against cuBLAS on one or two paper shapes.

env: MMA=both|sync|wg, SPARSITIES=0.5,0.7,0.9, NS=8,16,32,64, FORMATS=bitmap,tiled_csl
"""
import os
import sys

import torch

import flashllm
from flashllm.bench.kernel import clone_weight
from flashllm.bench.timing import copies_to_defeat_l2, time_graph
from flashllm.kernels import dispatch

shapes = [(27648, 9216), (12288, 49152)] if len(sys.argv) < 2 else [tuple(map(int, a.split("x"))) for a in sys.argv[1:]]
for m, k in shapes:
    w = torch.randn(m, k, device="cuda").half()
    wcopies = [w] + [w.clone() for _ in range(copies_to_defeat_l2(w.numel() * 2) - 1)]
    for s in map(float, os.environ.get("SPARSITIES", "0.5,0.7,0.9").split(",")):
        mask = torch.rand(m, k, device="cuda") >= s
        for fmt in os.environ.get("FORMATS", "bitmap,tiled_csl").split(","):
            sw = flashllm.compress(w * mask, fmt)
            copies = [sw] + [clone_weight(sw) for _ in range(copies_to_defeat_l2(sw.nbytes) - 1)]
            for n in map(int, os.environ.get("NS", "8,16,32,64").split(",")):
                x = torch.randn(n, k, device="cuda").half()
                ref = x.float() @ (w * mask).float().T
                dense = time_graph([lambda c=c: torch.nn.functional.linear(x, c) for c in wcopies], launches=10, replays=3)
                row = []
                for wg in {"both": (False, True), "sync": (False,), "wg": (True,)}[os.environ.get("MMA", "both")]:
                    y = dispatch.spmm_kernel(x, sw, wg=wg)
                    err = ((y.float() - ref).norm() / ref.norm()).item()
                    us = time_graph([lambda c=c: dispatch.spmm_kernel(x, c, wg=wg) for c in copies], launches=10, replays=3)
                    row.append(f"{'wgmma' if wg else 'mma.sync'} {us:7.1f} us x{dense / us:4.2f} err {err:.1e}")
                print(f"{m}x{k} {s:.0%} {fmt:9s} N={n:2d} cuBLAS {dense:6.1f} | " + " | ".join(row), flush=True)
