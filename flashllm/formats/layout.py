"""Where each weight element of a 64x64 block lives in the tensor-core A fragment.

The block formats (bitmap, Tiled-CSL) cut the matrix into 64x64 blocks (BLOCK rows of W, BLOCK columns of K).
A block is 4 *strips* of 16 rows; a strip is 4 *fragments* of 16x16, the A operand of
one `mma.sync.m16n8k16`.  In that instruction lane l (g = l // 4, t = l % 4) holds four
32-bit registers a0..a3 = q, each two fp16 halves e:

    row = g + 8 * (q & 1),  col = 2 * t + e + 8 * (q >> 1)

The bitmap format splits the warp into two half-warps h = l // 16 (lane hl = l % 16 in it)
so that every (fragment, register q, half h) owns exactly one 32-bit mask word whose
bit (2 * hl + e) says whether that lane's element e is non-zero.  A kernel lane can then
find its values with a single popcount of the bits below its own.

`stream_order` lists the 4096 block positions (row * 64 + col) in the order the bitmap
format stores its values: strip s, fragment f, register q, half h, lane hl, e - a register's
half-0 values, then its half-1 values, so the 32 lanes loading one register read one
contiguous window (no shared-memory bank conflicts between the half-warps).  Format version 1
stored strip s, half h, fragment f, register q, lane hl, e (`stream_order(legacy=True)`).
"""

from __future__ import annotations

import functools

import torch

BLOCK = 64  # rows and columns of one format block (bitmap and Tiled-CSL)
STRIPS = BLOCK // 16  # 16-row strips per block = warps that share a block
FRAGS = BLOCK // 16  # 16x16 fragments along K per strip


@functools.lru_cache(maxsize=None)
def _stream_order(legacy: bool) -> torch.Tensor:
    if legacy:
        s, h, f, q, hl, e = torch.meshgrid(
            torch.arange(STRIPS), torch.arange(2), torch.arange(FRAGS),
            torch.arange(4), torch.arange(16), torch.arange(2), indexing="ij")
    else:
        s, f, q, h, hl, e = torch.meshgrid(
            torch.arange(STRIPS), torch.arange(FRAGS), torch.arange(4),
            torch.arange(2), torch.arange(16), torch.arange(2), indexing="ij")
    lane = 16 * h + hl
    g, t = lane // 4, lane % 4
    row = 16 * s + g + 8 * (q & 1)
    col = 16 * f + 2 * t + e + 8 * (q >> 1)
    order = (row * BLOCK + col).reshape(-1)
    assert torch.equal(order.sort().values, torch.arange(BLOCK * BLOCK)), "layout is not a permutation"
    return order


def stream_order(device: torch.device | str = "cpu", legacy: bool = False) -> torch.Tensor:
    """Block position (row * 64 + col) of the i-th element in stream order (legacy: format version 1's)."""
    return _stream_order(legacy).to(device)


def block_grid(shape: tuple[int, int]) -> tuple[int, int]:
    """(row blocks, K blocks) of a [M, K] matrix cut into 64x64 blocks, edges padded."""
    m, k = shape
    return -(-m // BLOCK), -(-k // BLOCK)


def to_blocks(dense: torch.Tensor) -> torch.Tensor:
    """[M, K] -> [MB * KB, 4096] (blocks row-block-major, K-block fastest), zero-padded."""
    m, k = dense.shape
    mb, kb = block_grid((m, k))
    padded = dense.new_zeros(mb * BLOCK, kb * BLOCK)
    padded[:m, :k] = dense
    return padded.view(mb, BLOCK, kb, BLOCK).permute(0, 2, 1, 3).reshape(mb * kb, BLOCK * BLOCK)


def from_blocks(blocks: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Inverse of `to_blocks`: [MB * KB, 4096] -> [M, K]."""
    m, k = shape
    mb, kb = block_grid(shape)
    full = blocks.view(mb, kb, BLOCK, BLOCK).permute(0, 2, 1, 3).reshape(mb * BLOCK, kb * BLOCK)
    return full[:m, :k].contiguous()


def packed_slots(block_ptr: torch.Tensor, counts: torch.Tensor, at_bytes: int, unit: int) -> torch.Tensor:
    """Index, in `unit`-byte elements of the data buffer, of every record a block packs from byte `at_bytes`
    on (its header before that): blocks in order, `counts[b]` records in block b."""
    total = int(counts.sum())
    first = torch.cumsum(counts, 0) - counts
    block_of = torch.repeat_interleave(torch.arange(counts.numel(), device=counts.device), counts,
                                       output_size=total)
    rank = torch.arange(total, device=counts.device) - first[block_of]
    return (block_ptr[:-1][block_of] + at_bytes) // unit + rank


def padding_mask(shape: tuple[int, int], device) -> torch.Tensor:
    """[MB * KB, 4096] bool: True where a block position lies outside the [M, K] matrix."""
    m, k = shape
    mb, kb = block_grid(shape)
    rows = torch.arange(mb * BLOCK, device=device).view(mb, 1, BLOCK, 1) >= m
    cols = torch.arange(kb * BLOCK, device=device).view(1, kb, 1, BLOCK) >= k
    return (rows | cols).reshape(mb * kb, BLOCK * BLOCK)
