"""Sliced ELL: the non-zeros of each row, for the CUDA-core kernel of high sparsity (csrc/sell.cu).

Rows come in slices of 32 (one per kernel lane), K in chunks of 2048 columns (one shared-memory X
tile).  In a (slice, chunk) every row gets L entries, L = the slice's longest row there rounded up
to 4; shorter rows are padded with zero entries.  Entry j of row (lane) l is stored at
`(j // 4) * 128 + l * 4 + j % 4`, so that the 32 lanes read step j // 4 as one 512-byte vector load.

Tensors:
  entries   int32 [total]      low 16 bits: the value's bits; high 16 bits: slot(column-in-chunk) * 16,
                               the column's byte offset in the kernel's X tile, where column c
                               sits in slot c ^ ((c // 8) % 8) (bank-conflict-free transposing)
  slice_ptr int64 [S * C + 1]  entry offset of each (slice, chunk), slice-major, multiples of 128

Within a row the entries are dealt round-robin over the 8 bank groups of their slots (see `encode`):
the kernel's lanes read 16 bytes of the X tile per entry, and this order keeps the 8 lanes of a
quarter-warp on 8 different bank groups most of the time.  Padding entries carry +0 and column 0, so the kernel's multiply of one is
harmless.  The bytes: 4 per non-zero plus padding (a few % at 50%, ~10-15% at 90%).
"""

from __future__ import annotations

import math

import torch

from .base import SparseWeight, check_ptr, fail

TENSORS = ("entries", "slice_ptr")
SLICE = 32
CHUNK = 2048
STEP = 4 * SLICE  # entries of one 4-wide step of the 32 lanes


def slot(col_in_chunk: torch.Tensor) -> torch.Tensor:
    """X-tile slot of a column (an involution: bits 3-5 pick the XOR key and stay put)."""
    return col_in_chunk ^ ((col_in_chunk >> 3) & 7)


def grid(shape: tuple[int, int]) -> tuple[int, int]:
    """(slices, chunks) of a [M, K] matrix."""
    m, k = shape
    return -(-m // SLICE), -(-k // CHUNK)


def _row_chunk_counts(nz: torch.Tensor) -> torch.Tensor:
    """[S * 32, C] non-zeros per (row, chunk), rows padded to whole slices."""
    m, k = nz.shape
    s, c = grid((m, k))
    padded = nz.new_zeros(s * SLICE, c * CHUNK)
    padded[:m, :k] = nz
    return padded.view(s * SLICE, c, CHUNK).sum(-1)


def step_lengths(counts: torch.Tensor) -> torch.Tensor:
    """[S, C] entries per row of each (slice, chunk): the longest row, rounded up to 4."""
    longest = counts.view(-1, SLICE, counts.shape[-1]).amax(1)
    return (longest + 3) // 4 * 4


def predicted_nbytes(nz: torch.Tensor) -> int:
    lengths = step_lengths(_row_chunk_counts(nz))
    return 4 * SLICE * int(lengths.sum()) + 8 * (lengths.numel() + 1)


def encode(weight: torch.Tensor, value_dtype: torch.dtype) -> SparseWeight:
    shape = tuple(weight.shape)
    w = weight.to(value_dtype)
    dev = w.device
    nz = w != 0
    n_slices, n_chunks = grid(shape)
    counts = _row_chunk_counts(nz)                       # [rows, C]
    lengths = step_lengths(counts)                       # [S, C]
    slice_ptr = torch.zeros(n_slices * n_chunks + 1, dtype=torch.int64, device=dev)
    torch.cumsum(lengths.view(-1) * SLICE, 0, out=slice_ptr[1:])

    rows, cols = nz.nonzero(as_tuple=True)               # row-major: by row, then column
    chunk = cols // CHUNK
    group = rows * n_chunks + chunk
    # Bank order: deal each (row, chunk)'s entries round-robin over the 8 bank groups, starting at
    # group row % 8.  Rows of a quarter-warp then stay in step on distinct groups until one of their
    # groups runs dry (then they drift): ~1.5 shared-memory wavefronts per quarter-warp read at 90%
    # sparsity, against ~2.5 in column order.
    bank = (slot(cols % CHUNK) - rows) & 7               # bank group relative to the row's start
    key = group * 8 + bank
    order = torch.sort(key, stable=True).indices         # stable: columns stay sorted in a bank
    key = key[order]
    starts = torch.searchsorted(key, key)                # first entry of each (row, chunk, bank)
    rank = torch.arange(key.numel(), device=dev) - starts
    order = order[torch.sort(group[order] * (8 * CHUNK) + rank * 8 + bank[order]).indices]
    rows, cols, chunk, group = rows[order], cols[order], chunk[order], group[order]
    group_start = torch.cumsum(counts.view(-1), 0) - counts.view(-1)
    j = torch.arange(rows.numel(), device=dev) - group_start[group]
    slice_, lane = rows // SLICE, rows % SLICE
    at = slice_ptr[slice_ * n_chunks + chunk] + (j // 4) * STEP + lane * 4 + (j % 4)

    bits = w[rows, cols].view(torch.int16).to(torch.int64) & 0xFFFF
    word = ((slot(cols % CHUNK) * 16) << 16) | bits
    word = torch.where(word >= 2**31, word - 2**32, word).to(torch.int32)
    entries = torch.zeros(int(slice_ptr[-1]), dtype=torch.int32, device=dev)
    entries[at] = word
    max_bytes = int(lengths.max()) * SLICE * 4 if lengths.numel() else 0
    return SparseWeight("sell", shape, value_dtype, rows.numel(), max_bytes,
                        {"entries": entries, "slice_ptr": slice_ptr})


def _unpack(w: SparseWeight):
    """Per stored entry: (row, column, value bits) - padding rows/columns included."""
    entries, ptr = w.tensors["entries"], w.tensors["slice_ptr"]
    _, n_chunks = grid(w.shape)
    dev = entries.device
    group = torch.repeat_interleave(torch.arange(ptr.numel() - 1, device=dev), ptr[1:] - ptr[:-1],
                                    output_size=entries.numel())
    within = torch.arange(entries.numel(), device=dev) - ptr[group]
    row = (group // n_chunks) * SLICE + (within % STEP) // 4
    offset = (entries.to(torch.int64) >> 16) & 0xFFFF
    col = (group % n_chunks) * CHUNK + slot(offset // 16)
    bits = (entries & 0xFFFF).to(torch.int16)
    return row, col, offset, bits


def decode(w: SparseWeight) -> torch.Tensor:
    row, col, _, bits = _unpack(w)
    m, k = w.shape
    keep = (bits & 0x7FFF) != 0  # padding entries carry +0 (never a stored value)
    out = torch.zeros(m * k, dtype=torch.int16, device=bits.device)
    out[row[keep] * k + col[keep]] = bits[keep]
    return out.view(w.dtype).view(m, k)


def validate(w: SparseWeight) -> None:
    entries, ptr = w.tensors["entries"], w.tensors["slice_ptr"]
    m, k = w.shape
    n_groups = math.prod(grid(w.shape))
    if entries.dtype != torch.int32 or entries.dim() != 1:
        fail(f"sell entries must be a 1-D int32 tensor, got {entries.dtype} {tuple(entries.shape)}")
    check_ptr(ptr, "sell slice_ptr", n_groups, entries.numel(), STEP)
    row, col, offset, bits = _unpack(w)
    # Every entry, padding too, is read by the kernel as an X-tile offset: it must lie in the tile.
    if bool((offset % 16 != 0).any()) or bool((offset >= CHUNK * 16).any()):
        fail("sell entry with a column offset outside its chunk (or not a multiple of 16)")
    nonzero = (bits & 0x7FFF) != 0
    if bool((nonzero & ((row >= m) | (col >= k))).any()):
        fail("sell non-zero outside the [M, K] matrix")
    key = (row * k + col)[nonzero]
    if key.numel() != key.unique().numel():
        fail("sell holds two non-zero entries for one position")
    if int(nonzero.sum()) != w.nnz:
        fail(f"sell nnz {w.nnz} disagrees with the non-zero entries ({int(nonzero.sum())})")
    if int((ptr[1:] - ptr[:-1]).max() if n_groups else 0) * 4 != w.max_block_bytes:
        fail("sell max_block_bytes is not the largest (slice, chunk)")
