"""Bitmap format: one bit per element plus the packed non-zero values, per 64x64 block.

Tensors:
  data      uint8  all blocks back to back, each 16-byte aligned
  block_ptr int64  [NB + 1] byte offset of each block in `data` (blocks row-block-major)

One block (see `layout.py` for the fragment order):
  [0, 16)    uint16 ends[4]: running count of values after strip s, then zero padding
  [16, 528)  uint32 masks[128]: word ((s*4 + f)*2 + h)*4 + q, bit 2*hl + e
  [528, ..)  16-bit values in stream order (s, f, q, h, hl, e), zero-padded to 16 bytes

A warp of the kernel owns one strip and walks its values register by register: for register
(f, q) the half-0 lanes' values, then the half-1 lanes', so a lane finds its element pair with one
popcount of its half's mask word below its own bits (plus, in half 1, half 0's count), and the 32
lanes of one load read one contiguous window.  Format version 1 kept one stream per (strip, half):
`decode_v1` reads it.
Bytes per element: 2(1-s) + 1/8 + ~0.008 (header, block pointer, 16-byte padding).
"""

from __future__ import annotations

import math

import torch

from .base import SparseWeight, check_ptr, fail
from .layout import BLOCK, block_grid, from_blocks, packed_slots, padding_mask, stream_order, to_blocks

TENSORS = ("data", "block_ptr")
HEADER_BYTES = 16
MASK_BYTES = BLOCK * BLOCK // 8
VALUES_AT = HEADER_BYTES + MASK_BYTES  # 528
STRIPS = 4
_BITS = 1 << torch.arange(8)


def block_bytes(nnz_per_block: torch.Tensor) -> torch.Tensor:
    return VALUES_AT + (nnz_per_block + 7) // 8 * 16


def _pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """[..., 8n] bool -> [..., n] uint8, little-endian bit order."""
    b = bits.reshape(*bits.shape[:-1], -1, 8).to(torch.uint8)
    return (b * _BITS.to(b.device, torch.uint8)).sum(-1, dtype=torch.uint8)


def _unpack_bits(packed: torch.Tensor) -> torch.Tensor:
    bits = (packed.unsqueeze(-1) & _BITS.to(packed.device, torch.uint8)) != 0
    return bits.reshape(*packed.shape[:-1], -1)


def _mask_words_order(nz_stream: torch.Tensor) -> torch.Tensor:
    """Stream-ordered bits [NB, 4096] (s, f, q, h, 32) -> mask-word order (s, f, h, q, 32 bits)."""
    nb = nz_stream.shape[0]
    return nz_stream.view(nb, 4, 4, 4, 2, 32).permute(0, 1, 2, 4, 3, 5).reshape(nb, -1)


def _stream_from_mask_order(bits: torch.Tensor, legacy: bool = False) -> torch.Tensor:
    nb = bits.shape[0]
    if legacy:  # version 1: (s, h, f, q, 32)
        return bits.view(nb, 4, 4, 2, 4, 32).permute(0, 1, 3, 2, 4, 5).reshape(nb, -1)
    return bits.view(nb, 4, 4, 2, 4, 32).permute(0, 1, 2, 4, 3, 5).reshape(nb, -1)


def _value_slots(block_ptr: torch.Tensor, nnz_b: torch.Tensor) -> torch.Tensor:
    """int16 index in `data` of every stored value, blocks in order, stream order inside."""
    return packed_slots(block_ptr, nnz_b, VALUES_AT, 2)


def encode(weight: torch.Tensor, value_dtype: torch.dtype) -> SparseWeight:
    shape = tuple(weight.shape)
    blocks = to_blocks(weight.to(value_dtype))
    dev = blocks.device
    vals_stream = blocks[:, stream_order(dev)]
    nz = vals_stream != 0  # NaN and Inf are values, not zeros
    nb = nz.shape[0]
    ends = torch.zeros(nb, HEADER_BYTES // 2, dtype=torch.int64, device=dev)
    ends[:, :STRIPS] = nz.view(nb, STRIPS, -1).sum(-1).cumsum(-1)
    nnz_b = ends[:, STRIPS - 1]
    sizes = block_bytes(nnz_b)
    block_ptr = torch.zeros(nb + 1, dtype=torch.int64, device=dev)
    torch.cumsum(sizes, 0, out=block_ptr[1:])
    data = torch.zeros(int(block_ptr[-1]), dtype=torch.uint8, device=dev)
    head = torch.cat([ends.to(torch.int16).view(torch.uint8).view(nb, HEADER_BYTES),
                      _pack_bits(_mask_words_order(nz))], dim=1)
    data[block_ptr[:-1, None] + torch.arange(VALUES_AT, device=dev)] = head
    data.view(torch.int16)[_value_slots(block_ptr, nnz_b)] = vals_stream[nz].view(torch.int16)
    return SparseWeight("bitmap", shape, value_dtype, int(nnz_b.sum()), int(sizes.max()),
                        {"data": data, "block_ptr": block_ptr})


def _read_heads(w: SparseWeight, legacy: bool = False):
    data, ptr = w.tensors["data"], w.tensors["block_ptr"]
    head = data[ptr[:-1, None] + torch.arange(VALUES_AT, device=data.device)]
    nz = _stream_from_mask_order(_unpack_bits(head[:, HEADER_BYTES:]), legacy)
    ends = head[:, :HEADER_BYTES].contiguous().view(torch.int16).to(torch.int64)
    return nz, ends


def decode(w: SparseWeight, legacy: bool = False) -> torch.Tensor:
    data, ptr = w.tensors["data"], w.tensors["block_ptr"]
    nz, _ = _read_heads(w, legacy)
    vals = data.view(torch.int16)[_value_slots(ptr, nz.sum(1))].view(w.dtype)
    stream = torch.zeros(nz.shape, dtype=w.dtype, device=data.device)
    stream[nz] = vals
    blocks = torch.empty_like(stream)
    blocks[:, stream_order(data.device, legacy)] = stream
    return from_blocks(blocks, w.shape)


def decode_v1(w: SparseWeight) -> torch.Tensor:
    """The dense weight of bitmap data written by format version 1 (one value stream per strip and
    half-warp; same masks and sizes).  Only its sizes are checked: re-encode and validate the result."""
    _, sizes = _check_buffers(w)
    nz, _ = _read_heads(w, legacy=True)
    if not torch.equal(sizes, block_bytes(nz.sum(1))):
        fail("bitmap block size disagrees with its popcount (values missing or extra)")
    return decode(w, legacy=True)


def _check_buffers(w: SparseWeight) -> tuple[int, torch.Tensor]:
    """(block count, block sizes), once the buffers are safe to index (dtype, offsets, header room)."""
    data, ptr = w.tensors["data"], w.tensors["block_ptr"]
    nb = math.prod(block_grid(w.shape))
    if data.dtype != torch.uint8 or data.dim() != 1:
        fail(f"bitmap data must be a 1-D uint8 tensor, got {data.dtype} {tuple(data.shape)}")
    check_ptr(ptr, "bitmap block_ptr", nb, data.numel(), 16)
    sizes = ptr[1:] - ptr[:-1]
    if bool((sizes < VALUES_AT).any()):
        fail(f"bitmap block smaller than its {VALUES_AT}-byte header and masks")
    return nb, sizes


def validate(w: SparseWeight) -> None:
    data = w.tensors["data"]
    nb, sizes = _check_buffers(w)
    nz, ends = _read_heads(w)
    counted = nz.view(nb, STRIPS, -1).sum(-1).cumsum(-1)
    if not torch.equal(counted, ends[:, :STRIPS]) or bool((ends[:, STRIPS:] != 0).any()):
        fail("bitmap strip ends in a block header disagree with the mask popcounts")
    if not torch.equal(sizes, block_bytes(counted[:, -1])):
        fail("bitmap block size disagrees with its popcount (values missing or extra)")
    if bool((nz & padding_mask(w.shape, data.device)[:, stream_order(data.device)]).any()):
        fail("bitmap has mask bits set outside the [M, K] matrix (in block padding)")
    if int(counted[:, -1].sum()) != w.nnz:
        fail(f"bitmap nnz {w.nnz} disagrees with the mask popcount {int(counted[:, -1].sum())}")
    if int(sizes.max()) != w.max_block_bytes:
        fail(f"bitmap max_block_bytes {w.max_block_bytes} is not the largest block ({int(sizes.max())})")
