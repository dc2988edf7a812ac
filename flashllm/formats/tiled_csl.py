"""Tiled-CSL, the Flash-LLM format: per 64x64 tile, each non-zero as one 32-bit word.

Tensors:
  words    int32 [total]  low 16 bits: the value's bits; high 16 bits: its location in the tile
  tile_ptr int64 [T + 1]  word offset of each tile (tiles row-block-major), multiples of 4

The location is already the kernel's shared-memory address: `row * 64 + (col ^ (row % 8) * 8)`,
the XOR swizzle that lets `ldmatrix` read the dense tile without bank conflicts.  Each tile is
padded to whole 16-byte vectors with zero-valued words aimed at a position that really is zero,
so the kernel's scatter of a padding word is harmless.

Ahead-of-time reordering: the kernel's thread t stores the words of vectors t, t+128, ...;
one store instruction of a warp touches word j of 32 consecutive vectors.  We sort each tile's
words by (round, bank) - round = how many earlier words share the bank - and deal 32 at a time
into those slots, so the 32 lanes of one store hit 32 different banks whenever the tile allows.
"""

from __future__ import annotations

import math

import torch

from .base import SparseWeight, check_ptr, fail
from .layout import BLOCK, block_grid, from_blocks, padding_mask, to_blocks

TENSORS = ("words", "tile_ptr")
CHUNK = 128  # words one warp stores per round: 32 lanes x 4-word vectors


def _swizzle(pos: torch.Tensor) -> torch.Tensor:
    row, col = pos // BLOCK, pos % BLOCK
    return row * BLOCK + (col ^ ((row % 8) * 8))


# the 4096 tile positions grouped by the shared-memory bank their swizzled fp16 lands in
_BY_BANK = torch.argsort((_swizzle(torch.arange(BLOCK * BLOCK)) // 2) % 32, stable=True)
_LOC_BY_BANK = _swizzle(_BY_BANK).to(torch.int32)
_unswizzle = _swizzle  # XOR with a row-only key is its own inverse


def _storage_slot(s_pos: torch.Tensor, padded: torch.Tensor) -> torch.Tensor:
    """Where the s_pos-th word of the dealing sequence goes inside its tile of `padded` words."""
    within = s_pos & (CHUNK - 1)
    dealt = (s_pos & ~(CHUNK - 1)) | ((within & 31) << 2) | (within >> 5)
    return torch.where(s_pos < (padded & ~(CHUNK - 1)), dealt, s_pos)  # a short tail keeps natural order


def block_words(nnz_per_block: torch.Tensor) -> torch.Tensor:
    return (nnz_per_block + 3) // 4 * 4


def encode(weight: torch.Tensor, value_dtype: torch.dtype) -> SparseWeight:
    shape = tuple(weight.shape)
    blocks = to_blocks(weight.to(value_dtype))
    dev = blocks.device
    nz = blocks != 0
    n_tiles = nz.shape[0]
    # Group the 4096 positions by bank; a word's rank = earlier words of its tile in its bank.
    nz_bank = nz[:, _BY_BANK.to(dev)].view(n_tiles, 32, -1)
    rank = torch.cumsum(nz_bank, -1, dtype=torch.int16) - 1
    per_bank = rank[..., -1] + 1  # [T, 32]
    # Dealing order: round r holds, bank by bank, the r-th word of every bank that has one.
    alive = per_bank[:, None, :] > torch.arange(CHUNK, device=dev, dtype=torch.int16)[None, :, None]
    in_round = torch.cumsum(alive, -1, dtype=torch.int16) - 1
    round_size = in_round[..., -1].to(torch.int32) + 1
    round_start = torch.cumsum(round_size, -1, dtype=torch.int32) - round_size
    # per stored word (flat indices and int32 keep this fast on the CPU)
    flat = nz_bank.view(-1).nonzero().squeeze(1)
    tile = flat >> 12
    bank_j = (flat & 4095).to(torch.int32)
    tile_round = tile.to(torch.int32) * CHUNK + rank.view(-1)[flat]
    s_pos = round_start.view(-1)[tile_round] + in_round.view(-1)[tile_round.long() * 32 + (bank_j >> 7)]
    word = (_LOC_BY_BANK.to(dev)[bank_j] << 16) | (blocks.view(torch.int16).view(-1)[
        (tile << 12) + _BY_BANK.to(dev)[bank_j]].to(torch.int32) & 0xFFFF)

    counts = per_bank.sum(-1, dtype=torch.int64)
    padded = block_words(counts)
    tile_ptr = torch.zeros(n_tiles + 1, dtype=torch.int64, device=dev)
    torch.cumsum(padded, 0, out=tile_ptr[1:])

    pads = padded - counts
    pad_tile = torch.repeat_interleave(torch.arange(n_tiles, device=dev), pads)
    pad_pos = counts[pad_tile] + torch.arange(pad_tile.numel(), device=dev) - (torch.cumsum(pads, 0) - pads)[pad_tile]
    zero_loc = _swizzle((~nz).to(torch.uint8).argmax(1))[pad_tile]  # a tile with padding has a zero

    all_tile = torch.cat([tile, pad_tile])
    all_pos = torch.cat([s_pos, pad_pos.to(torch.int32)])
    all_word = torch.cat([word, (zero_loc << 16).to(torch.int32)])
    words = torch.empty(int(tile_ptr[-1]), dtype=torch.int32, device=dev)
    words[tile_ptr[all_tile] + _storage_slot(all_pos, padded.to(torch.int32)[all_tile])] = all_word
    return SparseWeight("tiled_csl", shape, value_dtype, int(counts.sum()), int(padded.max()) * 4,
                        {"words": words, "tile_ptr": tile_ptr})


def _unpack(w: SparseWeight):
    words, ptr = w.tensors["words"], w.tensors["tile_ptr"]
    tile = torch.repeat_interleave(torch.arange(ptr.numel() - 1, device=words.device), ptr[1:] - ptr[:-1],
                                   output_size=words.numel())
    loc = (words >> 16) & 0xFFFF
    bits = (words & 0xFFFF).to(torch.int16)
    return tile, loc, bits


def decode(w: SparseWeight) -> torch.Tensor:
    tile, loc, bits = _unpack(w)
    n_tiles = w.tensors["tile_ptr"].numel() - 1
    blocks = torch.zeros(n_tiles, BLOCK * BLOCK, dtype=torch.int16, device=bits.device)
    keep = (bits & 0x7FFF) != 0  # padding words carry +0 (never a stored value)
    blocks[tile[keep], _unswizzle(loc[keep])] = bits[keep]
    return from_blocks(blocks.view(w.dtype), w.shape)


def validate(w: SparseWeight) -> None:
    words, ptr = w.tensors["words"], w.tensors["tile_ptr"]
    n_tiles = math.prod(block_grid(w.shape))
    if words.dtype != torch.int32 or words.dim() != 1:
        fail(f"tiled_csl words must be a 1-D int32 tensor, got {words.dtype} {tuple(words.shape)}")
    check_ptr(ptr, "tiled_csl tile_ptr", n_tiles, words.numel(), 4)
    tile, loc, bits = _unpack(w)
    if bool((loc >= BLOCK * BLOCK).any()):
        fail(f"tiled_csl word with a location outside its {BLOCK}x{BLOCK} tile")
    nonzero = (bits & 0x7FFF) != 0
    key = tile * (BLOCK * BLOCK) + loc
    order = torch.argsort(key)
    same = key[order][1:] == key[order][:-1]
    if bool((same & (nonzero[order][1:] | nonzero[order][:-1])).any()):
        fail("tiled_csl tile holds two words for one position, one of them non-zero")
    outside = padding_mask(w.shape, words.device)[tile, _unswizzle(loc)]
    if bool((outside & nonzero).any()):
        fail("tiled_csl non-zero outside the [M, K] matrix (in tile padding)")
    per_tile = torch.zeros(n_tiles, dtype=torch.int64, device=words.device).index_add_(
        0, tile, nonzero.to(torch.int64))
    if not torch.equal(ptr[1:] - ptr[:-1], block_words(per_tile)):
        fail("tiled_csl tile holds more or fewer words than its non-zeros padded to 4")
    if int(nonzero.sum()) != w.nnz:
        fail(f"tiled_csl nnz {w.nnz} disagrees with the non-zero words ({int(nonzero.sum())})")
    if int((ptr[1:] - ptr[:-1]).max()) * 4 != w.max_block_bytes:
        fail("tiled_csl max_block_bytes is not the largest tile")
