"""Device aid: what bounds the wide kernel - time it with parts of its stage cut out (results are garbage).

usage: python benchmarks/wide_ablate.py [SHAPE ...]   env: N=256 FMT=bitmap SPARSITY=0.5 CFG='nt=32' ABL=base,nofixup
                                                      OLD=path/to/spmm.cu (another revision, timed as "old")
Edits (string replacements of csrc/spmm.cu, compiled through the same JIT): nox (no X tile TMA),
nodecode (A = constants: no shared loads or decode), nomma (no wgmma), and combinations; nofixup (every
stream-K segment stores its tile, no partials), nofence (the fix-up's writers skip their fence).
"""
import os
import sys

import torch

import flashllm
from flashllm.bench.kernel import clone_weight
from flashllm.bench.timing import copies_to_defeat_l2, time_graph
from flashllm.kernels import dispatch, jit

X = [("mbar_arrive_expect(S.xfull + 8 * x.slot, S.X_BYTES);", "mbar_arrive_expect(S.xfull + 8 * x.slot, 0);"),
     ("    tma_load_2d(S.xring", "    if (0) tma_load_2d(S.xring")]
DEC = [("    for (int f = 0; f < 4; f++) decode_pair_fragment(a[SET][f], blk, scratch, f, strip);",
        "    for (int f = 0; f < 4; f++) for (int q = 0; q < 4; q++) a[SET][f][q] = blk + f + q;"),
       ("    for (int f = 0; f < 4; f++) decode_fragment(a[SET][f], blk, scratch, f, L, base, strip);",
        "    for (int f = 0; f < 4; f++) for (int q = 0; q < 4; q++) a[SET][f][q] = base + f + q;")]
MMA = [("  for (int f = 0; f < 4; f++) wgmma_rs<NT, BF16>(acc, a[SET][f], xdesc + 2 * f);",
        "  for (int f = 0; f < 4; f++) if (f == 9) acc[0][0] += a[SET][f][0];")]
FIX = [("if (g.nk == p.KB || wide_fixup<NT, CW>(p, W, acc, g.tile, it, (g.tile / W.mtiles) * NT * 8, flag))", "if (true)")]  # every segment stores
FENCE = [("    __threadfence();\n    if (!others_in(1))", "    if (!others_in(1))")]  # the writers' fence
ONE = [("  for (i64 it = begin; it < end;) {\n    const Segment g(p, it, end);\n#pragma unroll",
        "  if (i64 it = begin; it < end) {\n    const Segment g(p, it, end);\n#pragma unroll"),
       ("    it += g.nk;\n  }\n}", "  }\n}")]  # consumers: one segment (a tile per CTA only)
NOACCFENCE = [("    fence_accumulators<NT>(acc);\n", "")]
EDITS = {"base": [], "nox": X, "nodecode": DEC, "nomma": MMA, "nox+nodecode": X + DEC, "nodecode+nomma": DEC + MMA,
         "nox+nomma": X + MMA, "all": X + DEC + MMA, "nofixup": FIX, "nofence": FENCE, "onesegment": ONE,
         "noaccfence": NOACCFENCE, "onesegment+nofixup": ONE + FIX}
if os.environ.get("OLD"):
    EDITS["old"] = None  # no edits: the whole of spmm.cu comes from $OLD (its headers from this tree)
if os.environ.get("ABL"):
    EDITS = {label: EDITS[label] for label in os.environ["ABL"].split(",")}
original = jit._source.__wrapped__


def patched(edits):
    def source(program="spmm.cu"):
        s = original(program)
        if edits is None:
            s = open(os.environ["OLD"]).read()
            for header in ("common.cuh", "wgmma.cuh"):
                s = s.replace(f'#include "{header}"', (jit.CSRC / header).read_text())
            return s
        for old, new in edits:
            assert old in s, old
            s = s.replace(old, new)
        return s
    return source


shapes = [tuple(map(int, a.split("x"))) for a in (sys.argv[1:] or ["12288x12288"])]
n, fmt, sp = int(os.environ.get("N", "256")), os.environ.get("FMT", "bitmap"), float(os.environ.get("SPARSITY", "0.5"))
cfg = {kv.split("=")[0]: int(kv.split("=")[1]) for kv in os.environ.get("CFG", "").split(",") if kv}
for m, k in shapes:
    w = torch.randn(m, k, device="cuda").half() * (torch.rand(m, k, device="cuda") >= sp)
    sw = flashllm.compress(w, fmt)
    copies = [sw] + [clone_weight(sw) for _ in range(copies_to_defeat_l2(sw.nbytes) - 1)]
    x = torch.randn(n, k, device="cuda").half()
    c = dispatch.config_for(sw, n, wide=1, **cfg)
    dense = torch.nn.functional.linear
    t_dense = time_graph([lambda: dense(x, w)], launches=20, replays=5)
    row = []
    for label, edits in EDITS.items():
        jit._source = patched(edits)
        jit._loaded.clear()
        t = time_graph([lambda c=cc: dispatch.spmm_kernel(x, c, wide=1, **cfg) for cc in copies], launches=20, replays=5)
        row.append(f"{label} {t:.1f}")
    jit._source = original
    jit._loaded.clear()
    print(f"{m}x{k} {fmt} {sp:.0%} N={n} nt{c.nt} split{c.split} | cuBLAS {t_dense:.1f} | " + " | ".join(row), flush=True)
