"""`flashllm bench attention`: the one-token decode-attention kernel by warps per CTA, against cuDNN SDPA.

A decode step's shapes (default OPT-30B: 56 heads of 128), one query per sequence, a static 192-slot cache of
which the first `live` keys are valid.  The cache rotates over six copies, as in a real step (each layer's
cache was last read a step earlier: not in L2).  Every result is checked against fp32 SDPA first.
"""

from __future__ import annotations

import argparse

import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="flashllm bench attention", description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", default="8,16,32", help="batch sizes, comma-separated")
    ap.add_argument("--live", default="65,129,192", help="valid keys of the 192-slot cache")
    ap.add_argument("--heads", type=int, default=56, help="attention heads")
    ap.add_argument("--head-dim", type=int, default=128, choices=(64, 128), help="dimension of one head")
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("flashllm bench attention needs a CUDA GPU")
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from flashllm.kernels.attention import WARP_CHOICES, decode_attention

    from .timing import time_graph

    h, d, slots = a.heads, a.head_dim, 192
    print(torch.cuda.get_device_name())
    for batch in (int(v) for v in a.batch.split(",")):
        for live in (int(v) for v in a.live.split(",")):
            q = torch.randn(batch, h, 1, d, device="cuda").half()
            kvs = [tuple(torch.randn(batch, h, slots, d, device="cuda").half() for _ in range(2)) for _ in range(6)]
            k, v = kvs[0]
            mask = torch.zeros(batch, 1, 1, slots, dtype=torch.bool, device="cuda")
            mask[..., :live] = True
            ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask)
            row = []
            for w in WARP_CHOICES:
                err = (decode_attention(q, k, v, mask, d ** -0.5, warps=w).float() - ref).abs().max().item()
                if err > 2e-2:
                    raise AssertionError(f"{w} warps: max error {err:.1e}")
                us = time_graph([lambda w=w, k=k, v=v: decode_attention(q, k, v, mask, d ** -0.5, warps=w)
                                 for k, v in kvs], launches=60, replays=5)
                row.append(f"{w} warps {us:6.1f} us")
            with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
                us = time_graph([lambda k=k, v=v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
                                 for k, v in kvs], launches=60, replays=5)
            print(f"batch {batch:2d} live keys {live:3d}/{slots}: " + " | ".join(row) + f" | cuDNN {us:6.1f} us",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
