"""Device aid: a few forced configs on one paper shape (faster than the full sweep)."""
import itertools
import sys

import torch

import flashllm
from flashllm.bench.kernel import clone_weight
from flashllm.bench.timing import copies_to_defeat_l2, time_graph
from flashllm.kernels import dispatch

m, k = 27648, 9216
fmt = sys.argv[1] if len(sys.argv) > 1 else "bitmap"
w = torch.randn(m, k, device="cuda").half()
for s in (0.5, 0.9):
    sw = flashllm.compress(w * (torch.rand(m, k, device="cuda") >= s), fmt)
    copies = [sw] + [clone_weight(sw) for _ in range(copies_to_defeat_l2(sw.nbytes) - 1)]
    for n in (8, 32, 64):
        x = torch.randn(n, k, device="cuda").half()
        dense = time_graph([lambda: torch.nn.functional.linear(x, w)], launches=20, replays=3)
        res = []
        for spw, stages, split in itertools.product((1, 2), (2, 4), (4, 8)):
            us = time_graph([lambda c=c: dispatch.spmm_kernel(x, c, spw=spw, stages=stages, split=split) for c in copies],
                            launches=20, replays=3)
            res.append((round(us, 1), spw, stages, split))
        auto = dispatch.choose_config(fmt, m, k, n, sw.max_block_bytes, 132)
        print(f"{fmt} s={s} N={n} dense {dense:.1f} auto(spw={auto.spw},st={auto.stages},split={auto.split}) "
              f"best {sorted(res)[:4]}", flush=True)
