"""Device aid: time one format under explicit launch configs (dispatch overrides) against cuBLAS.

usage: python benchmarks/config_probe.py FORMAT 'spw=4;spw=4,split=8;...'
env: SHAPES=27648x9216,9216x9216 NS=8,16,32 SPARSITIES=0.8   (the first config column is the heuristic's)
     REPS=3: time every config (and cuBLAS) that many times, interleaved, and report medians - single runs
     on one machine differ by up to ~6 %, more than many config changes gain.
     AUTO=0: leave out the heuristic's column (e.g. to time an older kernel source that lacks what it picks).
"""
import os
import statistics
import sys

import torch
import torch.nn.functional as F

import flashllm
from flashllm.bench.kernel import clone_weight, rel_err
from flashllm.bench.timing import copies_to_defeat_l2, time_graph
from flashllm.kernels import dispatch

fmt = sys.argv[1]
configs = ([{}] if os.environ.get("AUTO", "1") != "0" else []) + [{kv.split("=")[0]: int(kv.split("=")[1]) for kv in c.split(",")} for c in sys.argv[2].split(";") if c]
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
            reps = int(os.environ.get("REPS", "1"))
            fns = []
            for cfg in configs:
                try:
                    y = dispatch.spmm_kernel(x, sw, **cfg)
                except ValueError:  # a forced config this weight cannot take (e.g. its ring is too small)
                    fns.append(None)
                    continue
                err = rel_err(y, ref)
                assert err < 2e-3, (cfg, err)
                fns.append([lambda c=c, cfg=cfg: dispatch.spmm_kernel(x, c, **cfg) for c in copies])
            dense_fns = [lambda d=d: F.linear(x, d) for d in dcopies]
            times = [[] for _ in configs]
            dense_times = []
            for _ in range(reps):  # interleaved, so drifting clocks touch every config alike
                dense_times.append(time_graph(dense_fns))
                for i, f in enumerate(fns):
                    if f is not None:
                        times[i].append(time_graph(f))
            t_dense = statistics.median(dense_times)
            cells = []
            for cfg, f, ts in zip(configs, fns, times):
                label = ",".join(f"{a}{b}" for a, b in cfg.items()) or "auto"
                cells.append(f"{label} n/a" if f is None else f"{label} {t_dense / statistics.median(ts):.2f}x")
            print(f"{m}x{k} {sp:.0%} N={n:2d} cuBLAS {t_dense:6.1f} | " + " | ".join(cells), flush=True)
