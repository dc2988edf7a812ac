"""Device aid: time one format under explicit launch configs (dispatch overrides) against cuBLAS.

usage: python benchmarks/config_probe.py FORMAT 'spw=4;spw=4,split=8;...'
env: SHAPES=27648x9216,9216x9216 NS=8,16,32 SPARSITIES=0.8   (the first config column is the heuristic's)
"""
import os
import sys

import torch
import torch.nn.functional as F

import flashllm
from flashllm.bench.kernel import clone_weight, rel_err
from flashllm.bench.timing import copies_to_defeat_l2, time_graph
from flashllm.kernels import dispatch

fmt = sys.argv[1]
configs = [{}] + [{kv.split("=")[0]: int(kv.split("=")[1]) for kv in c.split(",")} for c in sys.argv[2].split(";") if c]
shapes = [tuple(map(int, s.split("x"))) for s in os.environ.get("SHAPES", "27648x9216,9216x9216").split(",")]
torch.manual_seed(0)
for m, k in shapes:
    dense = torch.randn(m, k, device="cuda", dtype=torch.float16) * 0.05
    dcopies = [dense.clone() for _ in range(copies_to_defeat_l2(dense.numel() * 2))]
    for sp in map(float, os.environ.get("SPARSITIES", "0.8").split(",")):
        w = dense * (torch.rand_like(dense, dtype=torch.float32) >= sp)
        sw = flashllm.compress(w, fmt)
        copies = [sw] + [clone_weight(sw) for _ in range(copies_to_defeat_l2(sw.nbytes) - 1)]
        for n in map(int, os.environ.get("NS", "8,16,32").split(",")):
            x = torch.randn(n, k, device="cuda", dtype=torch.float16)
            ref = x.float() @ w.float().T
            t_dense = time_graph([lambda d=d: F.linear(x, d) for d in dcopies])
            cells = []
            for cfg in configs:
                try:
                    y = dispatch.spmm_kernel(x, sw, **cfg)
                except ValueError:  # a forced config this weight cannot take (e.g. its ring is too small)
                    cells.append(f"{','.join(f'{a}{b}' for a, b in cfg.items())} n/a")
                    continue
                err = rel_err(y, ref)
                assert err < 2e-3, (cfg, err)
                t = time_graph([lambda c=c: dispatch.spmm_kernel(x, c, **cfg) for c in copies])
                cells.append(f"{','.join(f'{a}{b}' for a, b in cfg.items()) or 'auto'} {t_dense / t:.2f}x")
            print(f"{m}x{k} {sp:.0%} N={n:2d} cuBLAS {t_dense:6.1f} | " + " | ".join(cells), flush=True)
