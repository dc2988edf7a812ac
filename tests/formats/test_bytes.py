"""nnz, sparsity and nbytes against the byte formulas (shared/anchors.md), counted without flashllm.

  bitmap    = sum over 64x64 blocks of (528 + ceil(nnz_b / 8) * 16) + 8 * (NB + 1)
  tiled_csl = 4 * sum over blocks of ceil(nnz_b / 4) * 4           + 8 * (NB + 1)
  pairmap   = sum over 64x64 blocks of (272 + ceil(pairs_b / 4) * 16) + 8 * (NB + 1)
              (pairs_b: pairs (row, 2j), (row, 2j + 1) of the block with a non-zero; see test_pairmap.py)
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given

from flashllm.formats import compress
from sparse_weights import block_nnz, make_weight, weights

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def bitmap_bytes(counts: list[int]) -> int:
    return sum(528 + -(-c // 8) * 16 for c in counts) + 8 * (len(counts) + 1)


def tiled_csl_bytes(counts: list[int]) -> int:
    return 4 * sum(-(-c // 4) * 4 for c in counts) + 8 * (len(counts) + 1)


FORMULA = {"bitmap": bitmap_bytes, "tiled_csl": tiled_csl_bytes}


@given(case=weights())
def test_nbytes_nnz_sparsity_match_the_formulas(case):
    _, w = case
    counts = block_nnz(w)
    nnz = sum(counts)
    for fmt, formula in FORMULA.items():
        sw = compress(w, fmt)
        assert sw.nnz == nnz
        assert sw.sparsity == pytest.approx(1 - nnz / w.numel(), abs=1e-12)
        assert sw.nbytes == formula(counts), fmt
        assert sw.nbytes == sum(t.numel() * t.element_size() for t in sw.tensors.values())


@given(case=weights(multiple_of=64, max_dim=320, patterns=("random",)))
def test_bitmap_within_target_bytes_per_element(case):
    # the target: <= 2 (1 - s) + 0.14 bytes per element at sparsity s
    _, w = case
    sw = compress(w, "bitmap")
    assert sw.nbytes / w.numel() <= 2 * (1 - sw.sparsity) + 0.14


@pytest.mark.parametrize("sparsity", [0.5, 0.7, 0.8, 0.9])
def test_bytes_per_element_near_the_roofline_table(sparsity):
    # anchors.md: bitmap 2(1-s) + 1/8, Tiled-CSL 4(1-s); ours add headers, pointers and padding
    w = make_weight(512, 512, sparsity, seed=21)
    s = compress(w, "bitmap").sparsity
    bitmap = compress(w, "bitmap").nbytes / w.numel()
    tiled = compress(w, "tiled_csl").nbytes / w.numel()
    assert 2 * (1 - s) + 1 / 8 <= bitmap <= 2 * (1 - s) + 1 / 8 + 0.012
    assert 4 * (1 - s) <= tiled <= 4 * (1 - s) + 0.004


def block_pairs(w: torch.Tensor) -> list[int]:
    """Non-empty adjacent pairs (even column, the odd one after it) of every 64x64 block, no flashllm code."""
    m, k = w.shape
    nz = torch.zeros(m, k + k % 2, dtype=torch.bool)
    nz[:, :k] = w != 0
    pairs = nz.view(m, -1, 2).any(-1)
    return [int(pairs[i:i + 64, j // 2:(j + 64) // 2].sum()) for i in range(0, m, 64) for j in range(0, k, 64)]


@pytest.mark.parametrize("fmt", ["bitmap", "tiled_csl", "pairmap"])
def test_max_block_bytes_is_the_largest_block(fmt):
    w = make_weight(130, 201, 0.8, "dense_tiles", seed=22)
    counts = block_nnz(w)
    sw = compress(w, fmt)
    if fmt == "bitmap":
        per_block = [528 + -(-c // 8) * 16 for c in counts]
    elif fmt == "tiled_csl":
        per_block = [-(-c // 4) * 16 for c in counts]
    else:
        per_block = [272 + -(-c // 4) * 16 for c in block_pairs(w)]
        assert sw.nbytes == sum(per_block) + 8 * (len(per_block) + 1)
    assert sw.max_block_bytes == max(per_block)
    ptr = next(t for name, t in sw.tensors.items() if name.endswith("_ptr"))
    unit = 4 if fmt == "tiled_csl" else 1  # tiled_csl's offsets count int32 words
    assert sw.max_block_bytes == int((ptr[1:] - ptr[:-1]).max()) * unit


def test_tensor_dtypes_and_alignment():
    w = make_weight(150, 100, 0.6, seed=23)
    bm = compress(w, "bitmap").tensors
    assert bm["data"].dtype == torch.uint8 and bm["block_ptr"].dtype == torch.int64
    assert bool((bm["block_ptr"] % 16 == 0).all())  # every block starts 16-byte aligned
    tc = compress(w, "tiled_csl").tensors
    assert tc["words"].dtype == torch.int32 and tc["tile_ptr"].dtype == torch.int64
    assert bool((tc["tile_ptr"] % 4 == 0).all())  # every tile starts on a 16-byte vector
    pm = compress(w, "pairmap").tensors
    assert pm["data"].dtype == torch.uint8 and pm["data"].dim() == 1 and pm["block_ptr"].dtype == torch.int64
    assert pm["block_ptr"].shape == (3 * 2 + 1,) and int(pm["block_ptr"][-1]) == pm["data"].numel()
    assert bool((pm["block_ptr"] % 16 == 0).all())  # blocks, and so their masks (+16) and words (+272), aligned
