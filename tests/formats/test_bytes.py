"""nnz, sparsity and nbytes against the byte formulas (shared/anchors.md), counted without flashllm.

  bitmap    = sum over 64x64 blocks of (528 + ceil(nnz_b / 8) * 16) + 8 * (NB + 1)
  tiled_csl = 4 * sum over blocks of ceil(nnz_b / 4) * 4           + 8 * (NB + 1)
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


@pytest.mark.parametrize("fmt", ["bitmap", "tiled_csl"])
def test_max_block_bytes_is_the_largest_block(fmt):
    w = make_weight(130, 200, 0.8, "dense_tiles", seed=22)
    counts = block_nnz(w)
    sw = compress(w, fmt)
    per_block = [528 + -(-c // 8) * 16 for c in counts] if fmt == "bitmap" else [-(-c // 4) * 16 for c in counts]
    assert sw.max_block_bytes == max(per_block)


def test_tensor_dtypes_and_alignment():
    w = make_weight(150, 100, 0.6, seed=23)
    bm = compress(w, "bitmap").tensors
    assert bm["data"].dtype == torch.uint8 and bm["block_ptr"].dtype == torch.int64
    assert bool((bm["block_ptr"] % 16 == 0).all())  # every block starts 16-byte aligned
    tc = compress(w, "tiled_csl").tensors
    assert tc["words"].dtype == torch.int32 and tc["tile_ptr"].dtype == torch.int64
    assert bool((tc["tile_ptr"] % 4 == 0).all())  # every tile starts on a 16-byte vector
