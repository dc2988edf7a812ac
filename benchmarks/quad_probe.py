"""Device aid: the quad format against the pair bitmap and cuBLAS - correctness (fp32 reference, fresh
random data), the large-N decompression, and speed on a few paper shapes.

usage: python benchmarks/quad_probe.py
env: SHAPES=27648x9216,9216x9216 NS=8,16,32,64 SPARSITIES=0.5,0.7,0.8,0.9 FORMATS=quad,pairmap
     CONFORM=1: keep at most two non-zeros per group of 4 (no residual: the quad kernel's main path alone)
     SKIP_CHECK=1: skip the correctness pass
"""
import os

import torch
import torch.nn.functional as F

import flashllm
from flashllm.bench.kernel import clone_weight, rel_err
from flashllm.bench.timing import copies_to_defeat_l2, time_graph
from flashllm.kernels import dispatch

torch.manual_seed(0)


def conform(w):
    """Drop every non-zero past the second of its group of 4 columns (a 2:4-compatible mask)."""
    g = w.view(w.shape[0], -1, 4)
    keep = (g != 0).cumsum(-1) <= 2
    return (g * keep).view_as(w)


# correctness first: odd shapes, every N class, both dtypes, sparsities with many overfull groups
for dt in (() if os.environ.get("SKIP_CHECK") else (torch.float16, torch.bfloat16)):
    for m, k in ((1, 1), (77, 130), (300, 1000), (1024, 4096)):
        for sp in (0.0, 0.5, 0.8, 0.95, 1.0):
            w = (torch.randn(m, k, device="cuda") * (torch.rand(m, k, device="cuda") >= sp)).to(dt)
            sw = flashllm.compress(w, "quad")
            assert torch.equal(dispatch.decompress_cuda(sw), w), ("decompress", m, k, sp)
            for n in (1, 3, 8, 17, 32, 64, 200):
                x = torch.randn(n, k, device="cuda", dtype=dt)
                ref = x.float() @ w.float().T
                y = flashllm.spmm(x, sw)
                if float(ref.abs().max()) == 0:
                    assert not bool(y.any()), (dt, m, k, sp, n, "non-zero output of a zero product")
                else:
                    err = rel_err(y, ref)
                    assert err < (2e-3 if dt == torch.float16 else 1e-2), (dt, m, k, sp, n, err)
print("quad correctness: ok", flush=True)

fmts = os.environ.get("FORMATS", "quad,pairmap").split(",")
shapes = [tuple(map(int, s.split("x"))) for s in os.environ.get("SHAPES", "27648x9216,9216x9216").split(",")]
for m, k in shapes:
    dense = torch.randn(m, k, device="cuda", dtype=torch.float16) * 0.05
    dcopies = [dense.clone() for _ in range(copies_to_defeat_l2(dense.numel() * 2))]
    for sp in map(float, os.environ.get("SPARSITIES", "0.5,0.7,0.8,0.9").split(",")):
        w = dense * (torch.rand_like(dense, dtype=torch.float32) >= sp)
        if os.environ.get("CONFORM"):
            w = conform(w)
        weights = {f: flashllm.compress(w, f) for f in fmts}
        for n in map(int, os.environ.get("NS", "8,16,32,64").split(",")):
            x = torch.randn(n, k, device="cuda", dtype=torch.float16)
            ref = x.float() @ w.float().T
            t_dense = time_graph([lambda d=d: F.linear(x, d) for d in dcopies])
            cells = []
            for f, sw in weights.items():
                err = rel_err(dispatch.spmm_kernel(x, sw), ref)
                assert err < 2e-3, (f, err)
                copies = [sw] + [clone_weight(sw) for _ in range(copies_to_defeat_l2(sw.nbytes) - 1)]
                t = time_graph([lambda c=c: dispatch.spmm_kernel(x, c) for c in copies])
                cells.append(f"{f} {t_dense / t:.2f}x ({sw.nbytes / w.numel():.2f} B/elt)")
            print(f"{m}x{k} {sp:.0%} N={n:2d} cuBLAS {t_dense:6.1f} us | " + " | ".join(cells), flush=True)
