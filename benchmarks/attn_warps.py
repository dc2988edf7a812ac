"""Device aid: the decode-attention kernel by warps per CTA, on a decode step's shapes (OPT-30B: 56 heads
x 128; a static 192-key cache of which the first `valid` keys are live), against cuDNN SDPA.  The cache
rotates over copies, as in a real step (each layer's cache was last read a step ago: not in L2).

usage: python benchmarks/attn_warps.py
"""
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from flashllm.bench.timing import time_graph
from flashllm.kernels.attention import WARP_CHOICES, decode_attention

for batch in (8, 16, 32):
    for valid in (65, 129, 192):
        q = torch.randn(batch, 56, 1, 128, device="cuda").half()
        kvs = [tuple(torch.randn(batch, 56, 192, 128, device="cuda").half() for _ in range(2)) for _ in range(6)]
        k, v = kvs[0]
        mask = torch.zeros(batch, 1, 1, 192, dtype=torch.bool, device="cuda")
        mask[..., :valid] = True
        ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask)
        row = []
        for w in WARP_CHOICES:
            y = decode_attention(q, k, v, mask, 128 ** -0.5, warps=w)
            err = (y.float() - ref).abs().max().item()
            assert err < 2e-2, (w, err)
            us = time_graph([lambda w=w, k=k, v=v: decode_attention(q, k, v, mask, 128 ** -0.5, warps=w) for k, v in kvs],
                            launches=60, replays=5)
            row.append(f"{w} warps {us:6.1f} us")
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            us = time_graph([lambda k=k, v=v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask) for k, v in kvs],
                            launches=60, replays=5)
        print(f"batch {batch:2d} live keys {valid:3d}/192: " + " | ".join(row) + f" | cuDNN {us:6.1f} us", flush=True)
