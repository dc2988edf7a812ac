"""Pair bitmap: the pair order, the exact bytes of a hand-built block, the byte formula, special values.

The layout is checked against numbers worked out by hand from the mma.sync m16n8k16 A fragment
(lane l, g = l // 4, t = l % 4, register q, half e):

    row = 16 * s + g + 8 * (q & 1),  col = 16 * f + 2 * t + e + 8 * (q >> 1)

and the buffers are read back by a decoder written from the module docstring alone.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given

import flashllm.formats as F
from flashllm.formats import compress, pairmap
from sparse_weights import assert_same_numbers, make_weight, weights

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BLOCK = 64


def _pair_table() -> list[tuple[int, int, int, int]]:
    """(mask word, lane bit, row, even col) of pair i, pairs in (s, f, q, lane) order - from the PTX doc."""
    out = []
    for s in range(4):
        for f in range(4):
            for q in range(4):
                for lane in range(32):
                    g, t = lane // 4, lane % 4
                    out.append(((s * 4 + f) * 4 + q, lane, 16 * s + g + 8 * (q & 1), 16 * f + 2 * t + 8 * (q >> 1)))
    return out


PAIR_TABLE = _pair_table()


def pair_index(s: int, f: int, q: int, lane: int) -> int:
    return ((s * 4 + f) * 4 + q) * 32 + lane


# ---- the pair order ----

@pytest.mark.parametrize("i,first", [
    (0, (0, 0)),                           # s f q lane = 0 0 0 0
    (1, (0, 2)),                           # lane 1: g 0, t 1
    (4, (1, 0)),                           # lane 4: g 1, t 0
    (31, (7, 6)),                          # lane 31: g 7, t 3
    (32, (8, 0)),                          # q 1: rows + 8
    (64, (0, 8)),                          # q 2: cols + 8
    (96, (8, 8)),                          # q 3: both
    (128, (0, 16)),                        # f 1: next 16 columns
    (512, (16, 0)),                        # s 1: next 16 rows
    (pair_index(2, 1, 1, 13), (43, 18)),   # g 3, t 1: row 32 + 3 + 8, col 16 + 2
    (pair_index(3, 2, 2, 22), (53, 44)),   # g 5, t 2: row 48 + 5, col 32 + 4 + 8
    (2047, (63, 62)),                      # the last pair: the block's bottom-right corner
])
def test_hand_computed_pairs(i, first):
    row, col = first
    assert pairmap.pair_order()[i].tolist() == [row * BLOCK + col, row * BLOCK + col + 1]


def test_pair_order_is_the_a_fragment_layout():
    order = pairmap.pair_order()
    assert order.shape == (2048, 2) and order.dtype == torch.int64
    want = [[row * BLOCK + col, row * BLOCK + col + 1] for _, _, row, col in PAIR_TABLE]
    assert order.tolist() == want
    # the two halves of a register are adjacent columns of one row, the low half the even column
    assert bool((order[:, 0] % 2 == 0).all()) and bool((order[:, 1] == order[:, 0] + 1).all())
    assert sorted(order.flatten().tolist()) == list(range(BLOCK * BLOCK))  # every element exactly once
    # word (s*4 + f)*4 + q covers 32 consecutive pairs, lane l = bit l
    assert [(w, b) for w, b, _, _ in PAIR_TABLE] == [(i // 32, i % 32) for i in range(2048)]
    # strip s holds rows 16s .. 16s + 15 only
    rows = order[:, 0] // BLOCK
    assert bool((rows // 16 == torch.arange(2048) // 512).all())


# ---- a hand-built block, byte for byte ----

# value -> (fp16 bits, bf16 bits)
BITS = {1.0: (0x3C00, 0x3F80), -2.0: (0xC000, 0xC000), 0.5: (0x3800, 0x3F00), 0.125: (0x3000, 0x3E00),
        2.0: (0x4000, 0x4000), -1.5: (0xBE00, 0xBFC0)}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_hand_built_block(dtype):
    bits = {v: b[0 if dtype == torch.float16 else 1] for v, b in BITS.items()}
    w = torch.zeros(64, 64, dtype=dtype)
    w[0, 0], w[0, 1] = 1.0, -2.0  # s0 f0 q0 lane 0: word 0 bit 0, both halves
    w[9, 11] = 0.5      # row 9 = g 1 + 8 (q & 1), col 11 = 2 t + e + 8 (q >> 1): q 3, t 1, e 1 -> lane 5, high half
    w[15, 15] = 0.125   # g 7, q 3, t 3, e 1 -> lane 31 (the mask word's sign bit), high half
    w[20, 0] = 2.0      # strip 1: g 4, q 0, t 0, e 0 -> lane 16, word 16, low half
    w[50, 36] = -1.5    # strip 3, f 2: g 2, q 0, col 4 = 2 t + e -> t 2, e 0 -> lane 10, word 56, low half
    sw = compress(w, "pairmap").validate()
    data = sw.tensors["data"]

    assert sw.tensors["block_ptr"].tolist() == [0, 304]  # 272 + 5 words rounded up to 8 (32 bytes)
    assert data.numel() == 304 and data.dtype == torch.uint8
    assert (sw.nnz, sw.max_block_bytes, sw.nbytes) == (6, 304, 304 + 16)
    # header: strip ends 3, 4, 4, 5 (running counts), then zeros
    assert data[:16].view(torch.int16).tolist() == [3, 4, 4, 5, 0, 0, 0, 0]
    masks = data[16:272].view(torch.int32).tolist()
    want = [0] * 64
    want[0], want[3], want[16], want[56] = 1, (1 << 5 | 1 << 31) - 2**32, 1 << 16, 1 << 10
    assert masks == want
    words = [v & 0xFFFFFFFF for v in data[272:].view(torch.int32).tolist()]
    assert words == [
        bits[-2.0] << 16 | bits[1.0],  # (0, 0) low, (0, 1) high
        bits[0.5] << 16,                # (9, 10) is zero: +0 low half
        bits[0.125] << 16,              # (15, 14) is zero
        bits[2.0],                      # (20, 1) is zero: +0 high half
        bits[-1.5],                     # (50, 37) is zero
        0, 0, 0,                        # zero padding to 16 bytes
    ]
    assert torch.equal(sw.to_dense().view(torch.int16), w.view(torch.int16))


def test_lanes_of_one_word_are_consecutive_words():
    # every lane of register 0 of (s 0, f 0) non-zero: 32 consecutive words, lane order, mask word all ones
    w = torch.zeros(64, 64, dtype=torch.float16)
    for lane in range(32):
        w[lane // 4, 2 * (lane % 4)] = lane + 1
    sw = compress(w, "pairmap")
    data = sw.tensors["data"]
    assert data[16:20].view(torch.int32).item() == -1 and bool((data[20:272] == 0).all())
    words = data[272:272 + 128].view(torch.int32)
    assert torch.equal(words, torch.arange(1, 33, dtype=torch.float16).view(torch.int16).to(torch.int32))


def test_negative_zero_in_a_live_pair_is_stored_as_plus_zero():
    # pairmap.py: "a zero element of a live pair is stored as +0"
    w = torch.zeros(64, 64, dtype=torch.float16)
    w[0, 0], w[0, 1] = 1.0, -0.0
    word = compress(w, "pairmap").tensors["data"][272:276].view(torch.int32).item() & 0xFFFFFFFF
    assert word == 0x3C00


# ---- the documented layout, read back with plain numpy ----

def decode_by_the_doc(sw) -> np.ndarray:
    data = sw.tensors["data"].numpy()
    ptr = sw.tensors["block_ptr"].tolist()
    m, k = sw.shape
    mb, kb = -(-m // BLOCK), -(-k // BLOCK)
    out = np.zeros((mb * BLOCK, kb * BLOCK), dtype=np.int16)
    word_of = np.array([w for w, _, _, _ in PAIR_TABLE])
    lane_of = np.array([b for _, b, _, _ in PAIR_TABLE])
    rows = np.array([r for _, _, r, _ in PAIR_TABLE])
    cols = np.array([c for _, _, _, c in PAIR_TABLE])
    for b in range(mb * kb):
        assert ptr[b] % 16 == 0
        blk = data[ptr[b]:ptr[b + 1]]
        ends = blk[:16].view("<u2")
        masks = blk[16:272].view("<u4")
        words = blk[272:].view("<u4")
        live = (masks[word_of] >> lane_of.astype(np.uint32)) & 1 == 1
        per_strip = live.reshape(4, 512).sum(1)
        assert ends[:4].tolist() == np.cumsum(per_strip).tolist() and ends[4:].tolist() == [0] * 4
        n = int(live.sum())
        assert len(words) == 4 * -(-n // 4) and not words[n:].any()  # zero padding to 16 bytes, no more
        stored = words[:n]  # (s, f, q, lane) order: the i-th live pair takes word i
        r0, c0 = (b // kb) * BLOCK, (b % kb) * BLOCK
        out[r0 + rows[live], c0 + cols[live]] = (stored & 0xFFFF).astype(np.uint16).view(np.int16)
        out[r0 + rows[live], c0 + cols[live] + 1] = (stored >> 16).astype(np.uint16).view(np.int16)
        assert (stored != 0).all(), "a live pair holds a non-zero"
    assert not out[m:].any() and not out[:, k:].any(), "block padding holds zeros"
    return out[:m, :k]


@given(case=weights(max_dim=150))
def test_bytes_match_the_documented_layout(case):
    _, w = case
    got = decode_by_the_doc(compress(w, "pairmap"))
    assert_same_numbers(torch.from_numpy(got).view(w.dtype), w)


# ---- bytes ----

def nonempty_pairs(w: torch.Tensor) -> list[int]:
    """Non-empty (row, even col, odd col) pairs of every 64x64 block, counted without flashllm."""
    m, k = w.shape
    padded = torch.zeros(m, k + k % 2, dtype=torch.bool)
    padded[:, :k] = w != 0
    pairs = padded.view(m, -1, 2).any(-1)  # [m, ceil(k / 2)]
    return [int(pairs[i:i + BLOCK, j // 2:(j + BLOCK) // 2].sum())
            for i in range(0, m, BLOCK) for j in range(0, k, BLOCK)]


def pairmap_bytes(counts: list[int]) -> int:
    return sum(272 + -(-4 * c // 16) * 16 for c in counts) + 8 * (len(counts) + 1)


@given(case=weights())
def test_nbytes_match_the_formula(case):
    _, w = case
    counts = nonempty_pairs(w)
    sw = compress(w, "pairmap")
    assert sw.nbytes == pairmap_bytes(counts)
    assert sw.max_block_bytes == max(272 + -(-c // 4) * 16 for c in counts)
    assert sw.nnz == int((w != 0).sum())
    assert F.predicted_nbytes(w, ("pairmap",)) == {"pairmap": sw.nbytes}


@pytest.mark.parametrize("sparsity", [0.5, 0.7, 0.8, 0.9, 0.95])
def test_bytes_per_element_near_the_docstring(sparsity):
    """Uniform random mask at sparsity s: a pair is empty with probability s^2, so 2 (1 - s^2) bytes
    of words per element, plus 256 bytes of masks per 4096 elements (1/16), plus per block the
    16-byte header and the 8-byte block pointer (24/4096) and 0..12 bytes of word padding."""
    m = k = 1024
    w = make_weight(m, k, sparsity, seed=24)
    sw = compress(w, "pairmap")
    s = sw.sparsity
    nb = (m // BLOCK) * (k // BLOCK)
    fixed = (nb * 24 + 8) / w.numel()
    pad_max = 12 * nb / w.numel()
    # the empty-pair fraction is a mean of m k / 2 Bernoulli(s^2) draws: allow 5 standard deviations
    sigma = 2 * math.sqrt(s ** 2 * (1 - s ** 2) / (m * k / 2))
    want = 2 * (1 - s ** 2) + 1 / 16 + fixed
    got = sw.nbytes / w.numel()
    assert want - 5 * sigma <= got <= want + pad_max + 5 * sigma, (got, want, sigma)
    # the docstring's own rounding: + ~0.008
    assert abs(got - (2 * (1 - s ** 2) + 1 / 16 + 0.008)) < 0.003


# ---- values: dtypes, special values, edges ----

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 1), (1, 3), (3, 65), (63, 65), (65, 63), (130, 129), (64, 127), (200, 191)])
def test_odd_shapes_and_special_values_round_trip(dtype, shape):
    m, k = shape
    w = make_weight(m, k, 0.6, dtype=dtype, seed=m * 1000 + k, specials=True)
    w[:, -1] = torch.arange(1, m + 1, dtype=dtype)  # K odd: the last column's pair straddles the K edge
    sw = compress(w, "pairmap").validate()
    assert sw.nnz == int((w != 0).sum())
    assert_same_numbers(sw.to_dense(), w)
    assert_same_numbers(torch.from_numpy(decode_by_the_doc(sw)).view(dtype), w)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_nan_inf_negative_zero_bits(dtype):
    bits = [0x7E01, -0x200, 0x7FFF, 0x7C00 if dtype == torch.float16 else 0x7F80, 0x0001, -0x7FFF]
    # NaNs with payloads (quiet, negative, all ones), +Inf, the smallest subnormal, -(smallest subnormal)
    w = torch.zeros(70, 67, dtype=dtype)
    flat = w.view(torch.int16).view(-1)
    at = [0, 1, 66, 64 * 67 + 65, 69 * 67 + 66, 5 * 67 + 30]
    for i, b in zip(at, bits):
        flat[i] = b
    w[3, 3] = -0.0  # a zero: not counted, decodes to a zero
    sw = compress(w, "pairmap").validate()
    assert sw.nnz == len(bits)
    d = sw.to_dense()
    assert d.view(torch.int16).view(-1)[at].tolist() == bits  # bit for bit, NaN payloads included
    assert d[3, 3] == 0 and int((d != 0).sum()) == len(bits)


def test_straddling_pair_stores_plus_zero_in_the_padding_half():
    # K = 65: block (0, 1) holds column 64 only; its pair (64, 65) has the padding column 65 in the high half
    w = torch.zeros(3, 65, dtype=torch.float16)
    w[0, 64], w[2, 64] = -3.0, float("nan")
    sw = compress(w, "pairmap").validate()
    ptr = sw.tensors["block_ptr"].tolist()
    assert ptr == [0, 272, 272 + 288]  # block 0 empty; block 1 two pairs, one 16-byte row of words
    blk = sw.tensors["data"][ptr[1]:ptr[2]]
    assert blk[:16].view(torch.int16).tolist() == [2, 2, 2, 2, 0, 0, 0, 0]
    masks = blk[16:272].view(torch.int32).tolist()
    assert masks[0] == 1 | 1 << 8 and not any(masks[1:])  # rows 0 and 2: lanes 0 and 8 of word 0
    words = [v & 0xFFFFFFFF for v in blk[272:].view(torch.int32).tolist()]
    want_hi0 = 0xC200  # -3.0
    assert words[0] == want_hi0 and (words[1] & 0xFFFF) == (w[2, 64].view(torch.int16).item() & 0xFFFF)
    assert words[1] >> 16 == 0 and words[2:] == [0, 0]
    assert_same_numbers(sw.to_dense(), w)


def test_empty_blocks_are_header_only():
    w = torch.zeros(64, 192, dtype=torch.bfloat16)
    w[5, 130] = 1
    sw = compress(w, "pairmap").validate()
    assert sw.tensors["block_ptr"].tolist() == [0, 272, 544, 544 + 288]
    assert not sw.tensors["data"][:544].any()  # all-zero blocks: zero ends, zero masks, no words


@pytest.mark.parametrize("m,k", [(130, 71), (1000, 900), (65, 129)])
def test_slabs_match_one_pass(m, k, monkeypatch):
    w = make_weight(m, k, 0.7, seed=m + k)
    whole = pairmap.encode(w, torch.float16)
    monkeypatch.setattr(F, "CHUNK_ELEMENTS", 64 * 64)  # force many 64-row slabs
    sliced = F.compress(w, "pairmap").validate()
    assert (sliced.nnz, sliced.max_block_bytes) == (whole.nnz, whole.max_block_bytes)
    for key, t in whole.state_dict().items():
        assert torch.equal(t, sliced.state_dict()[key]), key
