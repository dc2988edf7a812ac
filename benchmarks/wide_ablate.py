"""Device aid: what bounds the wide kernel - time it with parts of its stage cut out (results are garbage).

usage: python benchmarks/wide_ablate.py [SHAPE ...]   env: N=256 FMT=bitmap SPARSITY=0.5 CFG='nt=32' ABL=base,nofixup
                                                      OLD=path/to/spmm.cu (another revision, timed as "old")
Edits (string replacements of csrc/spmm.cu, compiled through the same JIT): see wide_edits.py.
"""
import os
import sys

import torch

import flashllm
from flashllm.bench.kernel import clone_weight
from flashllm.bench.timing import copies_to_defeat_l2, time_graph
from flashllm.kernels import dispatch, jit

from wide_edits import EDITS, edited  # benchmarks/ is the script's directory

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
        return edited(s, edits)
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
