"""Fuzz `flashllm.spmm` on the GPU: random shapes, sparsities, token counts, dtypes and bias, every format.

Each case is drawn from its own seed; it must match fp64 math within 5e-3 (relative Frobenius error),
give bitwise equal results on a second call and write every output element (freed memory is poisoned
with NaN before each call, so an unwritten element shows as NaN).  The run stops drawing cases after
FLASHLLM_FUZZ_SECONDS (default 150).  A failure prints each failing case's seed and the command that
replays it alone: FLASHLLM_FUZZ_CASE=<seed> python -m pytest tests/kernels/test_spmm_fuzz_gpu.py
"""

from __future__ import annotations

import math
import os
import random
import time
from collections import Counter
from dataclasses import dataclass

import pytest
import torch

import flashllm

pytestmark = pytest.mark.gpu

TOL = 5e-3
FORMATS = ("bitmap", "tiled_csl", "pairmap", "sell", "auto")
# Linear layers of Llama-3-8B, Qwen2-7B and Mistral-7B (fused q/k/v and gate/up too): M x K.  28672 x 4096
# is deep enough in K-block iterations per SM for the wide kernel's third and fourth consumer groups.
MODEL_SHAPES = [(6144, 4096), (4096, 4096), (1024, 4096), (14336, 4096), (4096, 14336), (28672, 4096),
                (3584, 3584), (4608, 3584), (18944, 3584), (3584, 18944), (512, 3584)]
# Token counts by dispatch route: sell and mma.sync up to 16, mma.sync / wide at 17-32 and 33-64 (by depth),
# the wide kernel's 128- and 256-token tiles with stream-K grids, then decompress + cuBLAS past 1024.
N_BUCKETS = [(1, 8), (9, 16), (17, 32), (33, 64), (65, 128), (129, 256), (257, 1024), (1025, 1100)]
REPLAY = "FLASHLLM_FUZZ_CASE={seed} python -m pytest tests/kernels/test_spmm_fuzz_gpu.py"


@dataclass
class Case:
    seed: int
    fmt: str
    m: int
    k: int
    n: int
    sparsity: float
    pattern: str
    dtype: torch.dtype
    bias: bool

    def __str__(self):
        dt = "bf16" if self.dtype == torch.bfloat16 else "fp16"
        return (f"{self.fmt} {self.m}x{self.k} N={self.n} s={self.sparsity:.4f} {self.pattern} {dt}"
                f"{' +bias' if self.bias else ''} (seed {self.seed})")


DEEP_SHAPES = [(28672, 4096), (4096, 28672)]


def draw(seed: int) -> Case:
    """The case of a seed: its format and N bucket cycle with the seed (consecutive seeds cover them all)."""
    r = random.Random(seed)
    fmt, (lo, hi) = FORMATS[seed % len(FORMATS)], N_BUCKETS[seed // len(FORMATS) % len(N_BUCKETS)]
    if 17 <= lo <= 64 and r.random() < 0.3:  # where the wide kernel's group count depends on depth
        m, k = r.choice(DEEP_SHAPES)
    elif r.random() < 0.5:
        m, k = r.choice(MODEL_SHAPES)
    else:  # log-uniform 1..20000, odd sizes included, at most 1.5e8 weights
        m, k = (max(1, int(math.exp(r.uniform(0, math.log(20000))))) for _ in range(2))
        while m * k > 150_000_000:
            m //= 2
    u = r.random()
    sparsity = (0.0 if u < 0.1 else 1.0 if u < 0.2 else r.uniform(0.99, 0.9999) if u < 0.45
                else r.uniform(0.5, 0.95) if u < 0.9 else r.uniform(0.0, 0.5))
    return Case(seed, fmt, m, k, r.randint(lo, hi), sparsity,
                r.choice(["uniform", "empty_rows", "empty_blocks", "empty_kslice"]),
                r.choice([torch.float16, torch.bfloat16]), r.random() < 0.5)


def weight(c: Case, gen: torch.Generator) -> torch.Tensor:
    w = torch.randn(c.m, c.k, generator=gen, device="cuda", dtype=torch.float32)
    w[torch.rand(c.m, c.k, generator=gen, device="cuda") < c.sparsity] = 0
    if c.pattern == "empty_rows":  # a random third of the rows
        w[torch.rand(c.m, generator=gen, device="cuda") < 1 / 3] = 0
    elif c.pattern == "empty_blocks":  # a random half of the 64x64 blocks
        mb, kb = -(-c.m // 64), -(-c.k // 64)
        keep = (torch.rand(mb, kb, generator=gen, device="cuda") < 0.5).repeat_interleave(64, 0).repeat_interleave(64, 1)
        w *= keep[:c.m, :c.k]
    elif c.pattern == "empty_kslice":  # a band of columns, at least a quarter of K, so whole K-slices go empty
        a = int(torch.randint(0, max(1, c.k * 3 // 4), (1,), generator=gen, device="cuda"))
        w[:, a:a + max(1, c.k // 4)] = 0
    return w.to(c.dtype)


def poison(numel: int, dtype: torch.dtype) -> None:
    """Leave NaN in the caching allocator's free blocks that the next outputs will be carved from."""
    blocks = [torch.full((numel + extra,), float("nan"), dtype=dtype, device="cuda") for extra in (0, 0, 4096, 1 << 20)]
    del blocks


def run_case(c: Case) -> str | None:
    """None if the case passes, else what went wrong."""
    gen = torch.Generator("cuda").manual_seed(c.seed)
    w = weight(c, gen)
    sw = flashllm.compress(w, c.fmt, max_tokens=c.n if c.n <= 16 else None)
    x = torch.randn(c.n, c.k, generator=gen, device="cuda", dtype=torch.float32).to(c.dtype)
    bias = torch.randn(c.m, generator=gen, device="cuda", dtype=torch.float32).to(c.dtype) if c.bias else None
    ref = x.double() @ w.double().T
    if bias is not None:
        ref += bias.double()
    outs = []
    for _ in range(2):
        poison(c.n * c.m, c.dtype)
        outs.append(flashllm.spmm(x, sw, bias))
    y = outs[0]
    if y.shape != (c.n, c.m) or y.dtype != c.dtype:
        return f"output {tuple(y.shape)} {y.dtype}, expected {(c.n, c.m)} {c.dtype}"
    if not torch.isfinite(y).all():
        return f"{int((~torch.isfinite(y)).sum())} non-finite outputs (unwritten or corrupted)"
    norm = ref.norm()
    err = (y.double() - ref).norm() / norm if norm > 0 else y.double().abs().max()
    if err > TOL:
        return f"error {float(err):.2e} against fp64 (limit {TOL:.0e})"
    if not torch.equal(y.view(torch.int16), outs[1].view(torch.int16)):
        return f"two calls differ bitwise in {int((y.view(torch.int16) != outs[1].view(torch.int16)).sum())} elements"
    return None


def bucket(n: int) -> str:
    return next(f"N {lo}-{hi}" for lo, hi in N_BUCKETS if lo <= n <= hi)


def test_fuzz_spmm():
    base = torch.initial_seed()
    if "FLASHLLM_FUZZ_CASE" in os.environ:
        seeds = [int(os.environ["FLASHLLM_FUZZ_CASE"])]
        budget = math.inf
    else:
        seeds = (base * 1000 + i for i in range(10**6))
        budget = float(os.environ.get("FLASHLLM_FUZZ_SECONDS", 150))
    print(f"fuzz: base seed {base}, budget {budget} s")
    start, failures, seen = time.monotonic(), [], Counter()
    for seed in seeds:
        if time.monotonic() - start > budget:
            break
        c = draw(seed)
        problem = run_case(c)
        seen[(c.fmt, bucket(c.n))] += 1
        if problem:
            failures.append(f"{c}: {problem}\n    replay: {REPLAY.format(seed=seed)}")
            print("FAIL", failures[-1])
        torch.cuda.empty_cache()
    print(f"fuzz: {sum(seen.values())} cases in {time.monotonic() - start:.0f} s")
    for fmt in FORMATS:
        print(f"  {fmt:10s}", "  ".join(f"{b}: {seen[(fmt, b)]}" for b in (bucket(lo) for lo, _ in N_BUCKETS)))
    assert not failures, f"{len(failures)} failing cases:\n" + "\n".join(failures)


@pytest.mark.parametrize("fmt", ["pairmap", "auto", "bitmap"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n", [48, 100, 777])
def test_near_empty_llama_qkv(fmt, dtype, n):
    """6144 x 4096 at 99.9 %: the pair bitmap's 272-byte blocks are smaller than a bitmap header, which the
    wide kernel's padding stage once zeroed past its slot."""
    c = Case(torch.initial_seed(), fmt, 6144, 4096, n, 0.999, "uniform", dtype, False)
    problem = run_case(c)
    assert problem is None, f"{c}: {problem}"
