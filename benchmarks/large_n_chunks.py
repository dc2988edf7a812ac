"""Device aid: the large-N path (decompress a chunk of rows, cuBLAS it) against dense cuBLAS, by chunk size.

Small chunks can stay in L2 between the decompress kernel that writes them and the GEMM that reads them,
so the dense bytes need not cross HBM twice.  usage: python benchmarks/large_n_chunks.py [MxK]
"""
import sys

import torch

import flashllm
from flashllm.bench.kernel import clone_weight
from flashllm.bench.timing import copies_to_defeat_l2, time_graph
from flashllm.kernels import decompress

m, k = map(int, (sys.argv[1] if len(sys.argv) > 1 else "12288x12288").split("x"))
print(torch.cuda.get_device_name(), "L2", torch.cuda.get_device_properties(0).L2_cache_size >> 20, "MB")
w = torch.randn(m, k, device="cuda").half()
w = w * (torch.rand(m, k, device="cuda") >= 0.7)
wcopies = [w] + [w.clone() for _ in range(copies_to_defeat_l2(w.numel() * 2) - 1)]
for fmt in ("bitmap", "tiled_csl"):
    sw = flashllm.compress(w, fmt)
    copies = [sw] + [clone_weight(sw) for _ in range(copies_to_defeat_l2(sw.nbytes) - 1)]
    for n in (64, 128, 256, 512, 1024, 2048, 4096):
        x = torch.randn(n, k, device="cuda").half()
        dense = time_graph([lambda c=c: torch.nn.functional.linear(x, c) for c in wcopies], launches=6, replays=3)
        ref = x.float() @ w.float().T
        row = []
        for mb in (8, 16, 24, 32, 48, 256):
            y = decompress.dense_matmul(x, sw, chunk_bytes=mb << 20)
            err = ((y.float() - ref).norm() / ref.norm()).item()
            assert err < 2e-3, err
            us = time_graph([lambda c=c: decompress.dense_matmul(x, c, chunk_bytes=mb << 20) for c in copies],
                            launches=6, replays=3)
            row.append(f"{mb}MB {us:7.1f} (x{dense / us:.2f})")
        print(f"{fmt:9s} N={n:5d} dense {dense:7.1f} | " + " | ".join(row), flush=True)
