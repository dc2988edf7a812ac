"""Tuning aid (device): time every (spw, stages, split) for a few shapes to check the heuristic."""

import itertools
import sys

import torch

import flashllm
from flashllm.bench.kernel import clone_weight
from flashllm.bench.timing import copies_to_defeat_l2, time_graph
from flashllm.kernels import dispatch

shapes = [(7168, 7168), (27648, 9216), (9216, 36864)]
fmt = sys.argv[1] if len(sys.argv) > 1 else "bitmap"
sms = torch.cuda.get_device_properties(0).multi_processor_count
for (m, k) in shapes:
    w = torch.randn(m, k, device="cuda").half()
    for s in (0.5, 0.8, 0.9):
        ws = w * (torch.rand(m, k, device="cuda") >= s)
        sw = flashllm.compress(ws, fmt)
        copies = [sw] + [clone_weight(sw) for _ in range(copies_to_defeat_l2(sw.nbytes) - 1)]
        for n in (8, 32, 64):
            x = torch.randn(n, k, device="cuda").half()
            dense = time_graph([lambda: torch.nn.functional.linear(x, ws)])
            auto = dispatch.choose_config(fmt, m, k, n, sw.max_block_bytes, sms)
            res = []
            for spw, stages, split in itertools.product((1, 2, 4), (2, 4, 6), (None, 1, 2, 4, 8)):
                try:
                    cfg = dispatch.choose_config(fmt, m, k, n, sw.max_block_bytes, sms, spw=spw, stages=stages, split=split)
                except ValueError:
                    continue
                us = time_graph([lambda c=c: dispatch.spmm_kernel(x, c, spw=spw, stages=stages, split=split) for c in copies],
                                launches=30, replays=3)
                res.append((us, spw, stages, cfg.split))
            res.sort()
            auto_us = time_graph([lambda c=c: dispatch.spmm_kernel(x, c) for c in copies], launches=30, replays=3)
            print(f"{fmt} {m}x{k} s={s} N={n}: dense {dense:.1f}us auto {auto_us:.1f}us (spw={auto.spw} st={auto.stages} "
                  f"split={auto.split}) best {res[0][0]:.1f}us spw={res[0][1]} st={res[0][2]} split={res[0][3]} "
                  f"| top3 {[tuple(round(v, 1) if isinstance(v, float) else v for v in r) for r in res[1:4]]}", flush=True)
