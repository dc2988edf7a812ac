"""Device aid: SDPA backends on a decode step's attention (OPT-30B: 56 heads x 128, one query, masked).

usage: python benchmarks/attn_backends.py
"""
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from flashllm.bench.timing import time_graph

for batch in (8, 32):
    for keys in (64, 192):
        q = torch.randn(batch, 56, 1, 128, device="cuda").half()
        k, v = (torch.randn(batch, 56, keys, 128, device="cuda").half() for _ in range(2))
        mask = torch.ones(batch, 1, 1, keys, dtype=torch.bool, device="cuda")
        mask[:, :, :, keys // 2:] = torch.rand(batch, 1, 1, keys - keys // 2, device="cuda") > 0.3
        ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask)
        row = []
        for backend in (SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH):
            try:
                with sdpa_kernel([backend]):
                    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
                    err = (y.float() - ref).abs().max().item()
                    us = time_graph([lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)], launches=50,
                                    replays=5)
                row.append(f"{backend.name} {us:6.1f} us (err {err:.1e})")
            except RuntimeError as e:
                row.append(f"{backend.name} unavailable ({str(e).splitlines()[0][:40]})")
        print(f"batch {batch:2d} keys {keys:3d}: " + " | ".join(row), flush=True)
