"""Pair bitmap: one bit per *pair* of weights (one fp16x2 register of the tensor-core A fragment),
and the non-empty pairs stored whole as 32-bit words, per 64x64 block.

Why pairs: in the bitmap format a lane builds each A register from two 16-bit values at data-dependent
positions (two predicated loads and a pack).  Here a register is one predicated 32-bit load at
`popcount(bits of the lanes below)`, and the 32 lanes of a warp read consecutive words (no bank
conflicts).  The price is bytes: a pair with one non-zero stores a zero too, so this pays from ~70 %
sparsity on, where the bitmap kernel's decode, not HBM, sets the pace.

Tensors:
  data      uint8  all blocks back to back, each 16-byte aligned
  block_ptr int64  [NB + 1] byte offset of each block in `data` (blocks row-block-major)

One block (fragment order of `layout.py`: strip s, fragment f, register q, lane l):
  [0, 16)     uint16 ends[4]: running count of words after strip s's stream, then zero padding
  [16, 272)   uint32 masks[64]: word (s*4 + f)*4 + q, bit l = lane l's pair (register q) is non-empty
  [272, ..)   uint32 words of the non-empty pairs in (s, f, q, l) order (low half: the even column),
              zero-padded to 16 bytes
Bytes per element: (1 - s^2) * 2 + 1/16 + ~0.008, against the bitmap's 2(1 - s) + 1/8.
"""

from __future__ import annotations

import functools
import math

import torch

from .base import SparseWeight, check_ptr, fail
from .layout import BLOCK, FRAGS, STRIPS, block_grid, from_blocks, packed_slots, padding_mask, to_blocks

TENSORS = ("data", "block_ptr")
HEADER_BYTES = 16
MASK_WORDS = BLOCK * BLOCK // 2 // 32  # 64: one per (strip, fragment, register)
WORDS_AT = HEADER_BYTES + 4 * MASK_WORDS  # 272
PAIRS = BLOCK * BLOCK // 2
_LANE_BITS = 1 << torch.arange(32, dtype=torch.int64)


@functools.lru_cache(maxsize=None)
def _pair_order() -> torch.Tensor:
    """[2048, 2] block positions (row * 64 + col) of pair i's two elements, pairs in (s, f, q, l) order."""
    s, f, q, lane, e = torch.meshgrid(torch.arange(STRIPS), torch.arange(FRAGS), torch.arange(4),
                                      torch.arange(32), torch.arange(2), indexing="ij")
    g, t = lane // 4, lane % 4
    row = 16 * s + g + 8 * (q & 1)
    col = 16 * f + 2 * t + e + 8 * (q >> 1)
    order = (row * BLOCK + col).reshape(PAIRS, 2)
    assert torch.equal(order.flatten().sort().values, torch.arange(BLOCK * BLOCK)), "layout is not a permutation"
    return order


def pair_order(device: torch.device | str = "cpu") -> torch.Tensor:
    return _pair_order().to(device)


def block_bytes(pairs_per_block: torch.Tensor) -> torch.Tensor:
    return WORDS_AT + (pairs_per_block + 3) // 4 * 16


def pair_counts(nz_blocks: torch.Tensor) -> torch.Tensor:
    """[NB] non-empty pairs per block, from the non-zero mask in blocks (`to_blocks(weight != 0)`)."""
    return nz_blocks[:, pair_order(nz_blocks.device)].any(-1).sum(-1)


def _word_slots(block_ptr: torch.Tensor, pairs_b: torch.Tensor) -> torch.Tensor:
    """int32 index in `data` of every stored pair word, blocks in order, (s, f, q, l) order inside."""
    return packed_slots(block_ptr, pairs_b, WORDS_AT, 4)


def encode(weight: torch.Tensor, value_dtype: torch.dtype) -> SparseWeight:
    shape = tuple(weight.shape)
    blocks = to_blocks(weight.to(value_dtype))
    dev = blocks.device
    values = blocks[:, pair_order(dev)]  # [NB, 2048, 2]
    pairs = values.view(torch.int16)  # raw bits
    nz_el = values != 0  # NaN and Inf are values, not zeros
    nnz = int(nz_el.sum())
    live = nz_el.any(-1)  # [NB, 2048]
    nb = live.shape[0]
    strip_counts = live.view(nb, STRIPS, -1).sum(-1)
    pairs_b = strip_counts.sum(-1)
    sizes = block_bytes(pairs_b)
    block_ptr = torch.zeros(nb + 1, dtype=torch.int64, device=dev)
    torch.cumsum(sizes, 0, out=block_ptr[1:])
    data = torch.zeros(int(block_ptr[-1]), dtype=torch.uint8, device=dev)
    ends = torch.zeros(nb, HEADER_BYTES // 2, dtype=torch.int16, device=dev)
    ends[:, :STRIPS] = strip_counts.cumsum(-1).to(torch.int16)
    masks = (live.view(nb, MASK_WORDS, 32).to(torch.int64) * _LANE_BITS.to(dev)).sum(-1).to(torch.int32)
    head = torch.cat([ends.view(torch.uint8), masks.view(torch.uint8)], dim=1)
    data[block_ptr[:-1, None] + torch.arange(WORDS_AT, device=dev)] = head
    # A pair's word: element e = 0 in the low half; a zero element of a live pair is stored as +0
    # (-0.0 too: equal weights give equal bytes).
    pairs = torch.where(nz_el, pairs, 0)
    lo = pairs[..., 0].to(torch.int32) & 0xFFFF
    hi = pairs[..., 1].to(torch.int32) << 16
    words = (lo | hi)[live]
    data.view(torch.int32)[_word_slots(block_ptr, pairs_b)] = words
    return SparseWeight("pairmap", shape, value_dtype, nnz, int(sizes.max()),
                        {"data": data, "block_ptr": block_ptr})


def _read_heads(w: SparseWeight):
    data, ptr = w.tensors["data"], w.tensors["block_ptr"]
    head = data[ptr[:-1, None] + torch.arange(WORDS_AT, device=data.device)]
    masks = head[:, HEADER_BYTES:].contiguous().view(torch.int32).to(torch.int64)  # [NB, 64]
    live = ((masks.unsqueeze(-1) >> torch.arange(32, device=data.device)) & 1).bool().reshape(-1, PAIRS)
    ends = head[:, :HEADER_BYTES].contiguous().view(torch.int16).to(torch.int64)
    return live, ends


def _pairs(w: SparseWeight, live: torch.Tensor) -> torch.Tensor:
    """[NB, 2048, 2] stored element bits (zeros for empty pairs)."""
    data, ptr = w.tensors["data"], w.tensors["block_ptr"]
    words = data.view(torch.int32)[_word_slots(ptr, live.sum(1))]
    out = torch.zeros(live.shape + (2,), dtype=torch.int16, device=data.device)
    out[live] = torch.stack([words.to(torch.int16), (words >> 16).to(torch.int16)], -1)
    return out


def decode(w: SparseWeight) -> torch.Tensor:
    live, _ = _read_heads(w)
    pairs = _pairs(w, live)
    blocks = torch.empty(live.shape[0], BLOCK * BLOCK, dtype=torch.int16, device=live.device)
    blocks[:, pair_order(live.device)] = pairs
    return from_blocks(blocks.view(w.dtype), w.shape)


def validate(w: SparseWeight) -> None:
    data, ptr = w.tensors["data"], w.tensors["block_ptr"]
    nb = math.prod(block_grid(w.shape))
    if data.dtype != torch.uint8 or data.dim() != 1:
        fail(f"pairmap data must be a 1-D uint8 tensor, got {data.dtype} {tuple(data.shape)}")
    check_ptr(ptr, "pairmap block_ptr", nb, data.numel(), 16)
    sizes = ptr[1:] - ptr[:-1]
    if bool((sizes < WORDS_AT).any()):
        fail(f"pairmap block smaller than its {WORDS_AT}-byte header and masks")
    live, ends = _read_heads(w)
    counted = live.view(nb, STRIPS, -1).sum(-1).cumsum(-1)
    if not torch.equal(counted, ends[:, :STRIPS]) or bool((ends[:, STRIPS:] != 0).any()):
        fail("pairmap strip ends in a block header disagree with the mask popcounts")
    if not torch.equal(sizes, block_bytes(counted[:, -1])):
        fail("pairmap block size disagrees with its popcount (words missing or extra)")
    pad = padding_mask(w.shape, data.device)[:, pair_order(data.device)]  # [NB, 2048, 2]
    if bool((live & pad.all(-1)).any()):
        fail("pairmap has mask bits set outside the [M, K] matrix (in block padding)")
    pairs = _pairs(w, live)
    if bool(((pairs != 0) & pad).any()):
        fail("pairmap stores a non-zero outside the [M, K] matrix (in block padding)")
    if bool((live & ~(pairs.view(w.dtype) != 0).any(-1)).any()):
        fail("pairmap marks a pair live whose word holds no non-zero")
    nnz = int((pairs.view(w.dtype) != 0).sum())  # as the encoder counts: +-0 are zeros, NaN is a value
    if nnz != w.nnz:
        fail(f"pairmap nnz {w.nnz} disagrees with the stored non-zeros ({nnz})")
    if int(sizes.max()) != w.max_block_bytes:
        fail(f"pairmap max_block_bytes {w.max_block_bytes} is not the largest block ({int(sizes.max())})")
