"""The byte layouts a kernel relies on, read back with decoders written from the docstrings alone.

`flashllm.formats.bitmap` and `flashllm.formats.tiled_csl` document where every byte goes; a
kernel is written against those words, not against `decode`.  These tests decode the buffers
with plain loops over the documented fields and compare with the weight.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given

from flashllm.formats import compress
from flashllm.formats.layout import BLOCK, from_blocks, stream_order, to_blocks
from sparse_weights import assert_same_numbers, make_weight, weights

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _fragment_order(legacy: bool = False) -> list[tuple[int, int, int, int, int]]:
    """(strip s, mask word, bit, row, col) of each block element, in stored value order: strip, fragment f,
    register q, half h, lane hl in the half, element e.  legacy (format version 1): (stream 2s + h, mask
    word, bit, row, col) in the order strip, half, fragment, register, lane, element."""
    out = []
    for s in range(4):
        for a in range(4 if not legacy else 2):
            for b in range(4):
                for c in range(2 if not legacy else 4):
                    f, q, h = (a, b, c) if not legacy else (b, c, a)
                    for hl in range(16):
                        for e in range(2):
                            lane = 16 * h + hl
                            g, t = lane // 4, lane % 4
                            row = 16 * s + g + 8 * (q & 1)
                            col = 16 * f + 2 * t + e + 8 * (q >> 1)
                            out.append((2 * s + h if legacy else s, ((s * 4 + f) * 2 + h) * 4 + q, 2 * hl + e,
                                        row, col))
    return out


FRAGMENT_ORDER = _fragment_order()
LEGACY_ORDER = _fragment_order(legacy=True)


def bitmap_decode_by_the_doc(sw) -> np.ndarray:
    data = sw.tensors["data"].numpy()
    ptr = sw.tensors["block_ptr"].tolist()
    m, k = sw.shape
    mb, kb = -(-m // BLOCK), -(-k // BLOCK)
    out = np.zeros((mb * BLOCK, kb * BLOCK), dtype=np.int16)
    for b in range(mb * kb):
        blk = data[ptr[b]:ptr[b + 1]]
        assert ptr[b] % 16 == 0
        ends = blk[:16].view("<i2")
        masks = blk[16:528].view("<u4")
        values = blk[528:].view("<i2")
        taken = [0] * 4
        r0, c0 = (b // kb) * BLOCK, (b % kb) * BLOCK
        for strip, word, bit, row, col in FRAGMENT_ORDER:
            if masks[word] >> bit & 1:
                start = ends[strip - 1] if strip else 0
                # values follow the order of the set bits, strip by strip
                out[r0 + row, c0 + col] = values[start + taken[strip]]
                taken[strip] += 1
        assert taken == np.diff(np.concatenate([[0], ends[:4]])).tolist() and ends[4:].tolist() == [0] * 4
        assert len(values) * 2 == 16 * -(-int(ends[3]) // 8)
    return out[:m, :k]


def bitmap_encode_v1_by_the_doc(w: torch.Tensor) -> dict[str, torch.Tensor]:
    """Format version 1's bitmap bytes (one value stream per strip s and half h, stream 2s + h: fragment,
    register, lane, element; header ends[8] running counts after each stream), for the compatibility test."""
    m, k = w.shape
    mb, kb = -(-m // BLOCK), -(-k // BLOCK)
    padded = np.zeros((mb * BLOCK, kb * BLOCK), dtype=np.int16)
    padded[:m, :k] = w.view(torch.int16).numpy()
    chunks, ptr = [], [0]
    for b in range(mb * kb):
        r0, c0 = (b // kb) * BLOCK, (b % kb) * BLOCK
        masks = np.zeros(128, dtype=np.uint32)
        streams = [[] for _ in range(8)]
        for stream, word, bit, row, col in LEGACY_ORDER:
            v = padded[r0 + row, c0 + col]
            if v != 0 and v != np.int16(-32768):  # +-0 are zeros
                masks[word] |= np.uint32(1 << bit)
                streams[stream].append(v)
        ends = np.cumsum([len(st) for st in streams]).astype("<i2")
        values = np.array([v for st in streams for v in st], dtype="<i2")
        values = np.concatenate([values, np.zeros(-len(values) % 8, dtype="<i2")])
        blk = np.concatenate([ends.view(np.uint8), masks.astype("<u4").view(np.uint8), values.view(np.uint8)])
        chunks.append(blk)
        ptr.append(ptr[-1] + len(blk))
    return {"data": torch.from_numpy(np.concatenate(chunks)), "block_ptr": torch.tensor(ptr, dtype=torch.int64)}


def tiled_csl_decode_by_the_doc(sw) -> np.ndarray:
    words = sw.tensors["words"].numpy().view(np.uint32)
    ptr = sw.tensors["tile_ptr"].tolist()
    m, k = sw.shape
    mb, kb = -(-m // BLOCK), -(-k // BLOCK)
    out = np.zeros((mb * BLOCK, kb * BLOCK), dtype=np.int16)
    for t in range(mb * kb):
        r0, c0 = (t // kb) * BLOCK, (t % kb) * BLOCK
        for word in words[ptr[t]:ptr[t + 1]]:
            loc, bits = int(word >> 16), np.int16(np.uint16(word & 0xFFFF))
            row = loc // BLOCK
            col = (loc % BLOCK) ^ ((row % 8) * 8)
            if bits == 0:  # padding (see test_tiled_csl_padding_words_aim_at_zeros)
                continue
            assert out[r0 + row, c0 + col] == 0, "two words for one position"
            out[r0 + row, c0 + col] = bits
    return out[:m, :k]


def test_fragment_order_is_the_layout_stream_order():
    rows_cols = [row * BLOCK + col for *_, row, col in FRAGMENT_ORDER]
    assert rows_cols == stream_order().tolist()
    assert sorted(rows_cols) == list(range(BLOCK * BLOCK))
    words_bits = {(w, b) for _, w, b, _, _ in FRAGMENT_ORDER}
    assert len(words_bits) == BLOCK * BLOCK  # every element owns its own mask bit


@given(case=weights(max_dim=150))
def test_bitmap_bytes_match_the_documented_layout(case):
    _, w = case
    got = bitmap_decode_by_the_doc(compress(w, "bitmap"))
    assert_same_numbers(torch.from_numpy(got).view(w.dtype), w)


@given(case=weights(max_dim=150))
def test_tiled_csl_words_match_the_documented_layout(case):
    _, w = case
    sw = compress(w, "tiled_csl")
    got = tiled_csl_decode_by_the_doc(sw)
    assert_same_numbers(torch.from_numpy(got).view(w.dtype), w)


@pytest.mark.parametrize("shape", [(64, 64), (100, 130)])
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.9, 1.0])
def test_tiled_csl_padding_words_aim_at_zeros(shape, sparsity):
    w = make_weight(*shape, sparsity, seed=11)
    sw = compress(w, "tiled_csl")
    blocks = to_blocks(w)
    words, ptr = sw.tensors["words"], sw.tensors["tile_ptr"]
    for t in range(ptr.numel() - 1):
        tile_words = words[ptr[t]:ptr[t + 1]]
        nnz = int((blocks[t] != 0).sum())
        assert tile_words.numel() == -(-nnz // 4) * 4  # padded to whole 16-byte vectors, no more
        loc = (tile_words >> 16) & 0xFFFF
        row, col = loc // BLOCK, (loc % BLOCK) ^ ((loc // BLOCK % 8) * 8)
        pad = (tile_words & 0xFFFF) == 0
        assert int(pad.sum()) == tile_words.numel() - nnz
        assert bool((blocks[t][(row * BLOCK + col)[pad]] == 0).all())


def _store_banks(sw):
    """Distinct shared-memory banks hit by each warp store of the kernel's scatter (full 128-word chunks)."""
    words, ptr = sw.tensors["words"], sw.tensors["tile_ptr"]
    lanes = 4 * torch.arange(32)
    hits = []
    for t in range(ptr.numel() - 1):
        tile_words = words[ptr[t]:ptr[t + 1]]
        bank = ((tile_words >> 16) & 0xFFFF) // 2 % 32  # fp16 address -> 4-byte bank
        for chunk in range(0, tile_words.numel() // 128 * 128, 128):
            for j in range(4):  # store j of a warp: word j of 32 consecutive 4-word vectors
                hits.append(bank[chunk + lanes + j].unique().numel())
    return hits


def test_tiled_csl_dense_tile_stores_are_conflict_free():
    hits = _store_banks(compress(make_weight(128, 192, 0.0, seed=12), "tiled_csl"))
    assert len(hits) == 6 * 32 * 4 and set(hits) == {32}


@pytest.mark.parametrize("sparsity", [0.5, 0.8, 0.9])
def test_tiled_csl_reordering_spreads_stores_over_banks(sparsity):
    # Row-major order would hit 16 banks per store; the ahead-of-time dealing gets close to 32.
    hits = _store_banks(compress(make_weight(128, 128, sparsity, seed=13), "tiled_csl"))
    assert hits and sum(hits) / len(hits) >= 28


@given(case=weights(max_dim=200))
def test_to_blocks_from_blocks_inverse(case):
    _, w = case
    blocks = to_blocks(w)
    assert blocks.shape == (-(-w.shape[0] // 64) * -(-w.shape[1] // 64), 4096)
    assert torch.equal(from_blocks(blocks, tuple(w.shape)).view(torch.int16), w.view(torch.int16))


@pytest.mark.parametrize("shape,sparsity", [((64, 64), 0.5), ((100, 130), 0.7), ((130, 70), 0.0)])
def test_bitmap_version_1_files_load_as_the_same_weight(shape, sparsity):
    """A state dict written by format version 1 (one stream per half-warp) loads, re-encoded, as the
    weight it held; version 1 files of the other formats load as they are."""
    from flashllm.formats import SparseWeight
    gen = torch.Generator().manual_seed(7)
    w = torch.randn(shape, generator=gen).half()
    w[torch.rand(shape, generator=gen) < sparsity] = 0
    v1 = bitmap_encode_v1_by_the_doc(w)
    nnz, sizes = int((w != 0).sum()), v1["block_ptr"].diff()
    meta = torch.tensor([1, 2, *shape, 1, nnz, int(sizes.max())], dtype=torch.int64)
    loaded = SparseWeight.from_state_dict({"meta": meta, **v1})
    assert loaded.format == "bitmap" and torch.equal(loaded.to_dense(), w)
    assert torch.equal(loaded.tensors["data"], compress(w, "bitmap").tensors["data"])
    csl = compress(w, "tiled_csl").state_dict()
    csl["meta"] = csl["meta"].clone()
    csl["meta"][0] = 1
    assert torch.equal(SparseWeight.from_state_dict(csl).to_dense(), w)


def test_bitmap_version_1_sizes_are_checked_before_reading():
    from flashllm.formats import SparseWeight
    w = torch.zeros(64, 64, dtype=torch.float16)
    w[0, :5] = 1.0
    v1 = bitmap_encode_v1_by_the_doc(w)
    v1["data"] = v1["data"][:-16]  # the block's one 16-byte value chunk gone
    v1["block_ptr"] = torch.tensor([0, v1["data"].numel()], dtype=torch.int64)
    meta = torch.tensor([1, 2, 64, 64, 1, 5, v1["data"].numel()], dtype=torch.int64)
    with pytest.raises(ValueError, match="bitmap block size disagrees with its popcount"):
        SparseWeight.from_state_dict({"meta": meta, **v1})
