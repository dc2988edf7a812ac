"""Device aid: the sliced-ELL CUDA-core kernel against cuBLAS and our tensor-core kernels, with a
config sweep (warps per CTA, K split).  Checks every result against an fp32 reference first.

usage: python benchmarks/sell_probe.py      env: SHAPES=27648x9216,7168x7168 NS=8,16,32 SPARSITIES=0.5,0.9
       SWEEP=1 (sell: warps/depth/parts; pairmap: spw/stages/split)  BEST_OF=pairmap   FORMATS=bitmap,tiled_csl (also time these)
"""
import json
import os
import sys

import torch
import torch.nn.functional as F

import flashllm
from flashllm.bench.kernel import clone_weight, rel_err
from flashllm.bench.timing import copies_to_defeat_l2, time_graph
from flashllm.kernels import dispatch


def env_list(name, default, conv):
    return [conv(v) for v in os.environ.get(name, default).split(",") if v]


BEST_OF = os.environ.get("BEST_OF", "sell")  # which format's swept configs the last column ranks


def main():
    shapes = env_list("SHAPES", "27648x9216,7168x7168,9216x36864", lambda s: tuple(map(int, s.split("x"))))
    ns = env_list("NS", "8,16,32", int)
    sps = env_list("SPARSITIES", "0.5,0.7,0.8,0.9", float)
    others = env_list("FORMATS", "bitmap,tiled_csl", str)
    sweep = os.environ.get("SWEEP") == "1"
    out_path = os.path.join(os.environ.get("OUT", "."), "sell_probe.json")
    rows = []
    torch.manual_seed(0)
    for m, k in shapes:
        dense = torch.randn(m, k, device="cuda", dtype=torch.float16) * 0.05
        dcopies = [dense.clone() for _ in range(copies_to_defeat_l2(dense.numel() * 2))]
        for sp in sps:
            w = dense * (torch.rand_like(dense, dtype=torch.float32) >= sp)
            comp = {"sell": flashllm.compress(w, "sell")}
            for f in others:
                comp[f] = flashllm.compress(w, f)
            for n in ns:
                x = torch.randn(n, k, device="cuda", dtype=torch.float16)
                ref = x.float() @ w.float().T
                t_dense = time_graph([lambda d=d: F.linear(x, d) for d in dcopies])
                row = {"M": m, "K": k, "N": n, "sparsity": sp, "cublas_us": t_dense}
                for f, sw in comp.items():
                    err = rel_err(dispatch.spmm_kernel(x, sw), ref)
                    assert err < 2e-3, (f, m, k, n, sp, err)
                    copies = [sw] + [clone_weight(sw) for _ in range(copies_to_defeat_l2(sw.nbytes) - 1)]
                    cfgs = [{}]
                    if sweep and f == "sell":
                        cfgs += [{"warps": w, "depth": d, "parts": q} for w, d in ((8, 4), (16, 2), (16, 4))
                                 for q in (1, 2, 4)]
                    elif sweep and f == "pairmap":
                        cfgs += [{"spw": 2, "stages": b, "split": c} for b in (2, 3) for c in (2, 4, 6, 8, 12, 16)]
                        if n == 64:  # N = 64 as two CTAs of 32 tokens (nt=4) or one of 64: measured, nt=8 wins
                            cfgs += [{"spw": a, "nt": t, "split": c} for a in (1, 2) for t in (4, 8) for c in (2, 4, 8)]
                    for cfg in cfgs:
                        t = time_graph([lambda c=c: dispatch.spmm_kernel(x, c, **cfg) for c in copies])
                        key = f + ("" if not cfg else "_" + "_".join(f"{a}{b}" for a, b in cfg.items()))
                        row[key] = t
                    row[f + "_bytes"] = sw.nbytes
                    row[f + "_err"] = err
                rows.append(row)
                best = min((v, kk) for kk, v in row.items() if kk.startswith(BEST_OF)
                           and not kk.endswith(("bytes", "err")))
                print(f"{m}x{k} N={n} s={sp:.0%}: cublas {t_dense:6.1f}  sell {row['sell']:6.1f} "
                      f"({t_dense / row['sell']:.2f}x, {row['sell_bytes'] / row['sell'] / 1e3:.0f} GB/s)  "
                      + "  ".join(f"{f} {t_dense / row[f]:.2f}x" for f in others)
                      + f"  best {best[1]} {t_dense / best[0]:.2f}x", flush=True)
    if os.environ.get("DECOMPRESS") == "1":  # the large-N path: decompress alone, and spmm at N = 512
        from flashllm.kernels.dispatch import decompress_cuda
        m, k = shapes[0]
        w = torch.randn(m, k, device="cuda", dtype=torch.float16) * (torch.rand(m, k, device="cuda") >= 0.9)
        x = torch.randn(512, k, device="cuda", dtype=torch.float16)
        for f in ["sell"] + others:
            sw = flashllm.compress(w, f)
            t_dec = time_graph([lambda: decompress_cuda(sw)], launches=10, replays=5)
            t_mm = time_graph([lambda: flashllm.spmm(x, sw)], launches=10, replays=5)
            print(f"{m}x{k} 90% {f}: decompress {t_dec:7.1f} us ({2 * m * k / t_dec / 1e3:.0f} GB/s dense out), "
                  f"spmm N=512 {t_mm:7.1f} us", flush=True)
    with open(out_path, "w") as fh:
        json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    sys.exit(main())
