"""Test weights for the format tests: random and structured sparsity patterns, special values.

Weights are built from a seed (hypothesis draws the seed, the shape, the sparsity and the
pattern), so an example stays small to describe and cheap to generate.
"""

from __future__ import annotations

import math

import torch
from hypothesis import strategies as st

BLOCK = 64
DTYPES = (torch.float16, torch.bfloat16)
FORMATS = ("bitmap", "tiled_csl", "sell", "pairmap")
PATTERNS = ("random", "zero_rows", "zero_tiles", "dense_tiles", "dense_row", "dense_col",
            "checkerboard", "one_tile", "all_zero", "all_dense")


def keep_mask(m: int, k: int, sparsity: float, pattern: str, g: torch.Generator) -> torch.Tensor:
    """[m, k] bool: which elements are non-zero."""
    rand = torch.rand(m, k, generator=g) >= sparsity
    mb, kb = -(-m // BLOCK), -(-k // BLOCK)

    def tiles(pick: torch.Tensor) -> torch.Tensor:  # [mb, kb] bool -> [m, k] element mask
        return pick.repeat_interleave(BLOCK, 0).repeat_interleave(BLOCK, 1)[:m, :k]

    if pattern == "random":
        return rand
    if pattern == "zero_rows":
        return rand & (torch.rand(m, 1, generator=g) >= 0.5)
    if pattern == "zero_tiles":
        return rand & ~tiles(torch.rand(mb, kb, generator=g) < 0.5)
    if pattern == "dense_tiles":
        return rand | tiles(torch.rand(mb, kb, generator=g) < 0.5)
    if pattern == "dense_row":
        mask = torch.zeros(m, k, dtype=torch.bool)
        mask[int(torch.randint(m, (1,), generator=g))] = True
        return mask
    if pattern == "dense_col":
        mask = torch.zeros(m, k, dtype=torch.bool)
        mask[:, int(torch.randint(k, (1,), generator=g))] = True
        return mask
    if pattern == "checkerboard":
        return (torch.arange(m)[:, None] + torch.arange(k)[None, :]) % 2 == 0
    if pattern == "one_tile":
        pick = torch.zeros(mb * kb, dtype=torch.bool)
        pick[int(torch.randint(mb * kb, (1,), generator=g))] = True
        return rand & tiles(pick.view(mb, kb))
    if pattern == "all_zero":
        return torch.zeros(m, k, dtype=torch.bool)
    if pattern == "all_dense":
        return torch.ones(m, k, dtype=torch.bool)
    raise ValueError(pattern)


def special_values(dtype: torch.dtype) -> list[float]:
    fi = torch.finfo(dtype)
    return [math.nan, math.inf, -math.inf, fi.max, -fi.max, fi.tiny, fi.tiny / 4, -fi.tiny / 8, fi.eps]


def make_weight(m: int, k: int, sparsity: float, pattern: str = "random", dtype=torch.float16,
                seed: int = 0, specials: bool = False) -> torch.Tensor:
    """A pruned weight [m, k]: N(0, 1) values where the pattern keeps, zeros elsewhere.

    With `specials`, some kept values become NaN, +-Inf, +-max, subnormals, and some zeros
    become -0.0 (a zero like any other: it must decode to a zero).
    """
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(m, k, generator=g).to(dtype)
    values[values == 0] = 1  # an element is zero only where the pattern says so
    keep = keep_mask(m, k, sparsity, pattern, g)
    w = torch.where(keep, values, torch.zeros((), dtype=dtype))
    if specials:
        flat = w.view(-1)
        specials_at = torch.randint(m * k, (8,), generator=g)
        for i, v in zip(specials_at.tolist(), special_values(dtype)):
            if keep.view(-1)[i]:
                flat[i] = v
        neg_zero_at = torch.randint(m * k, (8,), generator=g)
        flat[neg_zero_at[~keep.view(-1)[neg_zero_at]]] = -0.0
    return w


@st.composite
def weights(draw, max_dim: int = 300, dtypes=DTYPES, patterns=PATTERNS, multiple_of: int = 1):
    """(description, weight) for hypothesis; the description makes a failure easy to replay."""
    if multiple_of > 1:
        m = multiple_of * draw(st.integers(1, max_dim // multiple_of))
        k = multiple_of * draw(st.integers(1, max_dim // multiple_of))
    else:
        m = draw(st.one_of(st.integers(1, max_dim), st.sampled_from([1, 2, 63, 64, 65, 127, 128, 129])))
        k = draw(st.one_of(st.integers(1, max_dim), st.sampled_from([1, 2, 63, 64, 65, 127, 128, 129])))
    sparsity = draw(st.one_of(st.sampled_from([0.0, 0.5, 0.7, 0.8, 0.9, 0.99, 1.0]),
                              st.floats(0.0, 1.0)))
    pattern = draw(st.sampled_from(patterns))
    dtype = draw(st.sampled_from(dtypes))
    seed = draw(st.integers(0, 2**31 - 1))
    specials = draw(st.booleans())
    desc = dict(m=m, k=k, sparsity=sparsity, pattern=pattern, dtype=dtype, seed=seed, specials=specials)
    return desc, make_weight(**desc)


def block_nnz(w: torch.Tensor) -> list[int]:
    """Non-zeros of every 64x64 block, row-block-major, counted block by block (no flashllm code)."""
    m, k = w.shape
    return [int((w[i:i + BLOCK, j:j + BLOCK] != 0).sum())
            for i in range(0, m, BLOCK) for j in range(0, k, BLOCK)]


def assert_same_numbers(got: torch.Tensor, want: torch.Tensor) -> None:
    """Equal as numbers: every non-zero (NaN included) bit for bit, every zero decoded as a zero."""
    assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, got.dtype, want.shape, want.dtype)
    nz = want != 0  # NaN != 0
    bits_got, bits_want = got.view(torch.int16), want.view(torch.int16)
    bad = (nz & (bits_got != bits_want)) | (~nz & (got != 0))
    if bool(bad.any()):
        i, j = (int(v) for v in bad.nonzero()[0])
        raise AssertionError(f"{int(bad.sum())} elements differ; first at ({i}, {j}): "
                             f"got {got[i, j].item()}, want {want[i, j].item()}")
