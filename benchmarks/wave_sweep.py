"""Device aid: does wave quantization cost time?  Times forced split-K counts against the resident-CTA
slots (occupancy API x SMs) on a few paper shapes, printing CTAs / slots (waves) beside each time.

usage: python benchmarks/wave_sweep.py [MxK ...]
"""
import sys

import torch
from cuda.bindings import driver

import flashllm
from flashllm.bench.kernel import clone_weight
from flashllm.bench.timing import copies_to_defeat_l2, time_graph
from flashllm.formats.layout import block_grid
from flashllm.kernels import dispatch, jit

SPLITS = (2, 3, 4, 5, 6, 7, 8, 10, 12, 16)
shapes = [tuple(map(int, a.split("x"))) for a in sys.argv[1:]] or [(27648, 9216), (7168, 7168), (12288, 49152),
                                                                   (21504, 7168)]
sms, cap = dispatch._device_props(0)
for m, k in shapes:
    w = torch.randn(m, k, device="cuda").half()
    wcopies = [w] + [w.clone() for _ in range(copies_to_defeat_l2(w.numel() * 2) - 1)]
    mb, kb = block_grid((m, k))
    for s in (0.5, 0.9):
        mask = torch.rand(m, k, device="cuda") >= s
        for fmt in ("bitmap", "tiled_csl"):
            sw = flashllm.compress(w * mask, fmt)
            copies = [sw] + [clone_weight(sw) for _ in range(copies_to_defeat_l2(sw.nbytes) - 1)]
            for n in (8, 16, 32):
                x = torch.randn(n, k, device="cuda").half()
                dense = time_graph([lambda c=c: torch.nn.functional.linear(x, c) for c in wcopies], launches=10, replays=3)
                auto = dispatch.choose_config(fmt, m, k, n, sw.max_block_bytes, sms, hopper=True)
                res = []
                for split in SPLITS:
                    if split > kb:
                        continue
                    cfg = dispatch.choose_config(fmt, m, k, n, sw.max_block_bytes, sms, hopper=True, split=split)
                    kern = jit.get_kernel(cfg.name(fmt, False), 0, cap)
                    kern.allow_smem(cfg.smem)
                    err, per_sm = driver.cuOccupancyMaxActiveBlocksPerMultiprocessor(kern.function, 128, cfg.smem)
                    ctas = -(-mb // cfg.spw) * -(-n // (8 * cfg.nt)) * cfg.split
                    us = time_graph([lambda c=c: dispatch.spmm_kernel(x, c, split=split) for c in copies],
                                    launches=10, replays=3)
                    res.append(f"{cfg.split}:{us:.1f}({ctas / (per_sm * sms):.2f}w,{per_sm}/SM)")
                print(f"{m}x{k} {s:.0%} {fmt:9s} N={n:2d} cuBLAS {dense:6.1f} auto split={auto.split} | " + " ".join(res),
                      flush=True)
