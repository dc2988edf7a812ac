"""Quad format: unstructured sparsity fed to the *sparse* tensor cores (`mma.sp` m16n8k32, 2:4).

`mma.sp` takes A as 2:4 - in every group of 4 consecutive columns, two values and their 2-bit indices
(a metadata nibble) - so one A register stands for 4 weights and one instruction covers k = 32.  An
unstructured mask is not 2:4, but at high sparsity few groups hold more than two non-zeros (80%: 2.7%
of groups, 90%: 0.4%).  Each non-empty group stores its first two non-zeros as one 32-bit word (one mask
bit per group, like the pair bitmap's per pair); the rest of an overfull group's non-zeros go to a small
*residual* of (position, value) entries that the kernel adds through an ordinary dense MMA.

Tensors:
  data      uint8  all blocks back to back, each 16-byte aligned
  block_ptr int64  [NB + 1] byte offset of each block in `data` (blocks row-block-major)

One 64x64 block.  A warp owns strip s (16 rows); a strip is two k32 fragments F; lane l (g = l // 4,
t = l % 4) holds register q of fragment F = group (row 16s + g + 8(q & 1), columns 32F + 4(t + 4(q >> 1)) ..+3):
  [0, 48)      uint16 word_ends[4] (running count of words after strip s), uint16 res_ends[16] (running
               count of residual entries after k16 fragment (s, f)), zero padding
  [48, 176)    uint32 masks[32]: word (s*2 + F)*4 + q, bit l = that group is non-empty
  [176, 688)   uint32 meta[128]: word s*32 + l = lane l's metadata register for strip s, in the order
               `mma.sp` reads it (measured on an H100, benchmarks/mma_sp_layout.py): lanes t < 2 serve
               fragment F = 0 (sparsity selector 0), lanes t >= 2 fragment 1 (selector 1); nibble j of
               lane 4g + t is the group at row g + 8(j >> 2), group 4(t & 1) + (j & 3) of that fragment,
               i0 | i1 << 2 with i0 < i1 (empty groups: 0b0100)
  [688, ..)    uint32 words of the non-empty groups in (s, F, q, l) order: low half at column i0, high
               half at column i1 (a lone non-zero at column p: indices (p, 3), or (2, 3) for p = 3, its
               partner half +0)
  then         uint32 residual entries filed by k16 fragment (s, f): value bits << 16 | row-in-strip << 6 |
               column-in-block (in fragment f), zero-padded to 16 bytes
Bytes per element: (1 - s^4) + 1/8 + 1/128 + residual, against the pair bitmap's 2(1 - s^2) + 1/16.
"""

from __future__ import annotations

import functools
import math

import torch

from .base import SparseWeight, check_ptr, fail
from .layout import BLOCK, STRIPS, block_grid, from_blocks, packed_slots, padding_mask, to_blocks

TENSORS = ("data", "block_ptr")
HEADER_BYTES = 48
GROUPS = BLOCK * BLOCK // 4  # 1024
MASK_WORDS = GROUPS // 32  # 32: one per (strip, fragment F, register q)
META_WORDS = STRIPS * 32  # 128: one per (strip, lane)
MASKS_AT = HEADER_BYTES
META_AT = MASKS_AT + 4 * MASK_WORDS  # 176
WORDS_AT = META_AT + 4 * META_WORDS  # 688
FRAG16 = STRIPS * 4  # k16 fragments (s, f) per block: the residual's order
EMPTY_NIBBLE = 0b0100  # indices (0, 1): a valid nibble for a group with no values
_LANE_BITS = 1 << torch.arange(32, dtype=torch.int64)


@functools.lru_cache(maxsize=None)
def _group_order() -> torch.Tensor:
    """[1024, 4] block positions (row * 64 + col) of group i's four columns, groups in (s, F, q, l) order."""
    s, F, q, lane, i = torch.meshgrid(torch.arange(STRIPS), torch.arange(2), torch.arange(4),
                                      torch.arange(32), torch.arange(4), indexing="ij")
    g, t = lane // 4, lane % 4
    row = 16 * s + g + 8 * (q & 1)
    col = 32 * F + 4 * (t + 4 * (q >> 1)) + i
    order = (row * BLOCK + col).reshape(GROUPS, 4)
    assert torch.equal(order.flatten().sort().values, torch.arange(BLOCK * BLOCK)), "layout is not a permutation"
    return order


@functools.lru_cache(maxsize=None)
def _meta_source() -> torch.Tensor:
    """[128, 8] group index (in (s, F, q, l) order) whose nibble is nibble j of metadata word s*32 + l."""
    s, lane, j = torch.meshgrid(torch.arange(STRIPS), torch.arange(32), torch.arange(8), indexing="ij")
    g, t = lane // 4, lane % 4
    F = t >> 1
    group = 4 * (t & 1) + (j & 3)  # group within the fragment's row: 0..7
    q = (j >> 2) + 2 * (group >> 2)
    src_lane = 4 * g + (group & 3)
    return (((s * 2 + F) * 4 + q) * 32 + src_lane).reshape(META_WORDS, 8)


def group_order(device="cpu") -> torch.Tensor:
    return _group_order().to(device)


def block_bytes(groups_per_block: torch.Tensor, residual_per_block: torch.Tensor) -> torch.Tensor:
    return WORDS_AT + (groups_per_block + residual_per_block + 3) // 4 * 16


def group_counts(nz_blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """([NB] non-empty groups, [NB] residual entries) per block, from `to_blocks(weight != 0)`."""
    per_group = nz_blocks[:, group_order(nz_blocks.device)].sum(-1)
    return (per_group > 0).sum(-1), (per_group - 2).clamp(min=0).sum(-1)


def _split(nz: torch.Tensor):
    """Per group [..., 4] mask: (rank of each non-zero, count, i0, i1, column of the low / high value or -1)."""
    rank = nz.cumsum(-1) - 1
    count = nz.sum(-1)
    cols = torch.arange(4, device=nz.device)
    first = torch.where(nz & (rank == 0), cols, 4).min(-1).values
    second = torch.where(nz & (rank == 1), cols, 4).min(-1).values
    lone = count == 1
    i0 = torch.where(count >= 2, first, torch.where(lone, first.clamp(max=2), 0))
    i1 = torch.where(count >= 2, second, torch.where(lone, 3, 1))
    lo_col = torch.where((count >= 2) | (lone & (first < 3)), first, -1)
    hi_col = torch.where(count >= 2, second, torch.where(lone & (first == 3), 3, -1))
    return rank, count, i0, i1, lo_col, hi_col


def _take(bits: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
    """bits[..., col] as int32 (low 16 bits), 0 where col == -1."""
    v = bits.gather(-1, col.clamp(min=0).unsqueeze(-1)).squeeze(-1).to(torch.int32) & 0xFFFF
    return torch.where(col >= 0, v, 0)


def encode(weight: torch.Tensor, value_dtype: torch.dtype) -> SparseWeight:
    shape = tuple(weight.shape)
    blocks = to_blocks(weight.to(value_dtype))
    dev = blocks.device
    nb = blocks.shape[0]
    values = blocks[:, group_order(dev)]  # [NB, 1024, 4]
    nz = values != 0  # NaN and Inf are values, not zeros
    bits = torch.where(nz, values.view(torch.int16), 0)  # -0.0 stored as +0
    nnz = int(nz.sum())
    rank, count, i0, i1, lo_col, hi_col = _split(nz)
    live = count > 0
    words = _take(bits, lo_col) | (_take(bits, hi_col) << 16)
    nibbles = torch.where(live, i0 | (i1 << 2), EMPTY_NIBBLE).to(torch.int64)  # [NB, 1024]
    meta = (nibbles[:, _meta_source().to(dev)] << (4 * torch.arange(8, device=dev))).sum(-1)  # [NB, 128]
    masks = (live.view(nb, MASK_WORDS, 32).to(torch.int64) * _LANE_BITS.to(dev)).sum(-1)
    strip_counts = live.view(nb, STRIPS, -1).sum(-1)
    # Residual: the non-zeros past a group's first two, as entries of k16 fragment (s, f), row-major in it.
    over = torch.zeros(nb, BLOCK * BLOCK, dtype=torch.bool, device=dev)
    over[:, group_order(dev)] = nz & (rank >= 2)
    res_grid = over.view(nb, STRIPS, 16, 4, 16).permute(0, 1, 3, 2, 4)  # [NB, s, f, row, col]
    res_counts = res_grid.reshape(nb, FRAG16, 256).sum(-1)
    where = res_grid.nonzero()  # (block, s, f, row, col) in (block, s, f, row, col) order
    res_vals = blocks.view(torch.int16).view(nb, STRIPS, 16, 4, 16)[where[:, 0], where[:, 1], where[:, 3],
                                                                     where[:, 2], where[:, 4]]
    entries = (res_vals.to(torch.int32) << 16) | (where[:, 3] << 6 | 16 * where[:, 2] + where[:, 4]).to(torch.int32)
    groups_b, res_b = strip_counts.sum(-1), res_counts.sum(-1)
    sizes = block_bytes(groups_b, res_b)
    block_ptr = torch.zeros(nb + 1, dtype=torch.int64, device=dev)
    torch.cumsum(sizes, 0, out=block_ptr[1:])
    data = torch.zeros(int(block_ptr[-1]), dtype=torch.uint8, device=dev)
    ends = torch.zeros(nb, HEADER_BYTES // 2, dtype=torch.int16, device=dev)
    ends[:, :STRIPS] = strip_counts.cumsum(-1).to(torch.int16)
    ends[:, STRIPS:STRIPS + FRAG16] = res_counts.cumsum(-1).to(torch.int16)
    head = torch.cat([ends.view(torch.uint8), masks.to(torch.int32).view(torch.uint8),
                      meta.to(torch.int32).view(torch.uint8)], dim=1)
    data[block_ptr[:-1, None] + torch.arange(WORDS_AT, device=dev)] = head
    words32 = data.view(torch.int32)
    words32[packed_slots(block_ptr, groups_b, WORDS_AT, 4)] = words[live]
    words32[packed_slots(_residual_ptr(block_ptr, groups_b), res_b, WORDS_AT, 4)] = entries
    return SparseWeight("quad", shape, value_dtype, nnz, int(sizes.max()), {"data": data, "block_ptr": block_ptr})


def _residual_ptr(block_ptr: torch.Tensor, groups_b: torch.Tensor) -> torch.Tensor:
    """block_ptr moved past each block's words: the residual entries follow them."""
    return block_ptr + 4 * torch.cat([groups_b, groups_b.new_zeros(1)])


def _read(w: SparseWeight):
    """(live [NB, 1024], word_ends [NB, 4], res_ends [NB, 16], nibbles [NB, 1024], padding [NB, 8 bytes])."""
    data, ptr = w.tensors["data"], w.tensors["block_ptr"]
    dev = data.device
    head = data[ptr[:-1, None] + torch.arange(WORDS_AT, device=dev)]
    ends = head[:, :HEADER_BYTES].contiguous().view(torch.int16).to(torch.int64)
    masks = head[:, MASKS_AT:META_AT].contiguous().view(torch.int32).to(torch.int64)
    live = ((masks.unsqueeze(-1) >> torch.arange(32, device=dev)) & 1).bool().reshape(-1, GROUPS)
    meta = head[:, META_AT:WORDS_AT].contiguous().view(torch.int32).to(torch.int64)  # [NB, 128]
    nib_by_word = (meta.unsqueeze(-1) >> (4 * torch.arange(8, device=dev))) & 0xF  # [NB, 128, 8]
    nibbles = torch.empty(live.shape, dtype=torch.int64, device=dev)
    nibbles[:, _meta_source().to(dev).flatten()] = nib_by_word.reshape(live.shape[0], -1)
    return live, ends[:, :STRIPS], ends[:, STRIPS:STRIPS + FRAG16], nibbles, ends[:, STRIPS + FRAG16:]


def _records(w: SparseWeight, live: torch.Tensor, res_total: torch.Tensor):
    """(words [NB, 1024] int64, 0 for empty groups; residual entries [E] int64, block of each [E])."""
    data, ptr = w.tensors["data"], w.tensors["block_ptr"]
    groups_b = live.sum(1)
    words32 = data.view(torch.int32)
    words = torch.zeros(live.shape, dtype=torch.int64, device=data.device)
    words[live] = words32[packed_slots(ptr, groups_b, WORDS_AT, 4)].to(torch.int64) & 0xFFFFFFFF
    entries = words32[packed_slots(_residual_ptr(ptr, groups_b), res_total, WORDS_AT, 4)]
    block_of = torch.repeat_interleave(torch.arange(live.shape[0], device=data.device), res_total)
    return words, entries.to(torch.int64) & 0xFFFFFFFF, block_of


def _entry_fragments(res_ends: torch.Tensor, block_of: torch.Tensor) -> torch.Tensor:
    """k16 fragment (s * 4 + f) each residual entry is filed under, from its block's res_ends."""
    first = torch.cumsum(res_ends[:, -1], 0) - res_ends[:, -1]
    rank = torch.arange(block_of.numel(), device=block_of.device) - first[block_of]
    return (rank.unsqueeze(-1) >= res_ends[block_of]).sum(-1)  # fragments ending at or before the entry


def _entry_positions(entries: torch.Tensor, frag: torch.Tensor) -> torch.Tensor:
    """Block position (row * 64 + col) of each residual entry: its strip from where it is filed, its
    row in the strip and column in the block from the entry."""
    return (16 * (frag // 4) + ((entries >> 6) & 15)) * BLOCK + (entries & 63)


def _dense_bits(w: SparseWeight) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """([NB, 4096] int16 main values, [NB, 4096] int16 residual values, [NB, 4096] bool residual present)."""
    live, _, res_ends, nibbles, _ = _read(w)
    words, entries, block_of = _records(w, live, res_ends[:, -1])
    nb, dev = live.shape[0], live.device
    order = group_order(dev)
    main = torch.zeros(nb, BLOCK * BLOCK, dtype=torch.int16, device=dev)
    rows = torch.arange(nb, device=dev).unsqueeze(-1)
    i0, i1 = nibbles & 3, nibbles >> 2
    lo, hi = (words & 0xFFFF).to(torch.int32).to(torch.int16), (words >> 16).to(torch.int32).to(torch.int16)
    at = torch.arange(GROUPS, device=dev)
    main[rows, order[at, i1]] = hi
    main[rows, order[at, i0]] = lo
    res = torch.zeros_like(main)
    has = torch.zeros(nb, BLOCK * BLOCK, dtype=torch.bool, device=dev)
    pos = _entry_positions(entries, _entry_fragments(res_ends, block_of))
    res[block_of, pos] = (entries >> 16).to(torch.int32).to(torch.int16)
    has[block_of, pos] = True
    return main, res, has


def decode(w: SparseWeight) -> torch.Tensor:
    main, res, has = _dense_bits(w)
    blocks = torch.where(has, res, main)  # validate: a residual entry never lands on a stored value
    return from_blocks(blocks.view(w.dtype), w.shape)


def validate(w: SparseWeight) -> None:
    data, ptr = w.tensors["data"], w.tensors["block_ptr"]
    nb = math.prod(block_grid(w.shape))
    if data.dtype != torch.uint8 or data.dim() != 1:
        fail(f"quad data must be a 1-D uint8 tensor, got {data.dtype} {tuple(data.shape)}")
    check_ptr(ptr, "quad block_ptr", nb, data.numel(), 16)
    sizes = ptr[1:] - ptr[:-1]
    if bool((sizes < WORDS_AT).any()):
        fail(f"quad block smaller than its {WORDS_AT}-byte header, masks and metadata")
    live, word_ends, res_ends, nibbles, pad = _read(w)
    if not torch.equal(live.view(nb, STRIPS, -1).sum(-1).cumsum(-1), word_ends) or bool((pad != 0).any()):
        fail("quad word ends in a block header disagree with the mask popcounts")
    steps = torch.diff(res_ends, dim=1, prepend=res_ends.new_zeros(nb, 1))
    if bool((steps < 0).any()) or bool((steps > 2 * 64).any()):
        fail("quad residual ends in a block header are not a running count (<= 128 per fragment)")
    if not torch.equal(sizes, block_bytes(word_ends[:, -1], res_ends[:, -1])):
        fail("quad block size disagrees with its word and residual counts")
    if bool(((nibbles & 3) >= (nibbles >> 2)).any()):
        fail("quad metadata nibble with i0 >= i1 (mma.sp reads it as undefined)")
    words, entries, block_of = _records(w, live, res_ends[:, -1])
    if bool(((entries & 0xFC00) != 0).any()):
        fail("quad residual entry has bits set between its position and its value")
    if bool(((entries & 63) >> 4 != _entry_fragments(res_ends, block_of) % 4).any()):
        fail("quad residual entry filed under another k16 fragment than its column's")
    main, res, has = _dense_bits(w)
    dt = w.dtype
    main_nz, res_nz = main.view(dt) != 0, res.view(dt) != 0
    entries = int(res_ends[:, -1].sum())
    if int(has.sum()) != entries:
        fail("quad residual has two entries at one position")
    if bool((has & ~res_nz).any()):
        fail("quad residual entry holds a zero")
    if bool((has & main_nz).any()):
        fail("quad residual entry lands on a value the group's word already holds")
    halves_nz = torch.stack([(words & 0xFFFF), words >> 16], -1).to(torch.int32).to(torch.int16).view(dt) != 0
    if bool((live & ~halves_nz.any(-1)).any()):
        fail("quad marks a group live whose word holds no non-zero")
    pad_mask = padding_mask(w.shape, data.device)
    if bool(((main_nz | has) & pad_mask).any()):
        fail("quad stores a non-zero outside the [M, K] matrix (in block padding)")
    nnz = int(main_nz.sum()) + entries
    if nnz != w.nnz:
        fail(f"quad nnz {w.nnz} disagrees with the stored non-zeros ({nnz})")
    if int(sizes.max()) != w.max_block_bytes:
        fail(f"quad max_block_bytes {w.max_block_bytes} is not the largest block ({int(sizes.max())})")
