"""Launch the sliced-ELL CUDA-core kernel (csrc/sell.cu) and its split-K reduce."""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass

import torch

from ..formats import SparseWeight
from ..formats.sell import CHUNK, SLICE, grid
from . import jit

MAX_PLANES = 4        # tokens per CTA = tokens * planes; more -> more grid.y groups (weights re-read)
TOKEN_CHOICES = (1, 2, 4, 8)  # tokens per plane: under 8 tokens, a narrower X tile (fewer FMAs and bytes)
WARP_CHOICES = (4, 8, 16)
DEPTH_CHOICES = (2, 4)
MAX_N = 64            # above this the weight is decompressed in chunks and multiplied by cuBLAS
MAX_SPLIT = 8


class SellParams(ctypes.Structure):
    _fields_ = [("entries", ctypes.c_void_p), ("slice_ptr", ctypes.c_void_p), ("x", ctypes.c_void_p),
                ("y", ctypes.c_void_p), ("partial", ctypes.c_void_p),
                ("M", ctypes.c_int), ("N", ctypes.c_int), ("K", ctypes.c_int), ("ldx", ctypes.c_int),
                ("S", ctypes.c_int), ("C", ctypes.c_int), ("chunks_per_split", ctypes.c_int),
                ("parts", ctypes.c_int), ("bias", ctypes.c_void_p)]


@dataclass(frozen=True)
class SellConfig:
    planes: int            # token planes of the X tile
    warps: int             # slices (32 rows each) per CTA
    chunks_per_split: int  # K chunks per chunk group
    split: int             # grid.z: chunk groups x parts (partial sums to reduce)
    depth: int = 4         # 4-entry steps each lane loads ahead
    parts: int = 1         # CTAs sharing the steps of one (slice, chunk)
    tokens: int = 8        # tokens per plane (1, 2 or 4 only with one plane)

    @property
    def smem(self) -> int:
        return self.planes * CHUNK * 2 * self.tokens

    def name(self, bf16: bool) -> str:
        return (f"spmm_sell<{self.tokens},{self.planes},{self.warps},{self.depth},"
                f"{'true' if bf16 else 'false'}>")


@functools.lru_cache(maxsize=4096)
def choose_sell_config(m: int, k: int, n: int, sms: int, warps: int | None = None, split: int | None = None,
                       depth: int | None = None, parts: int | None = None) -> SellConfig:
    """From the problem size alone (rules read off sweeps on an H100, benchmarks/sell_probe.py):

    - tokens, planes: N < 8 takes one plane of 1, 2 or 4 tokens (the fewest that cover N); from 8 on,
      the fewest 8-token planes that cover min(N, 32).
    - warps, depth: one plane: 8 warps (one X tile serves 256 rows; 2 and 4 were slower), each loading
      4 steps ahead.  Two planes and more: 16 warps, 2 steps ahead - the X tile (64-128 KB) leaves room
      for one or two CTAs per SM, so a CTA must bring its own warps (16-35 % faster at N = 16-32 on the
      H100; on an H200, N = 16 liked 8 warps with parts = 2 better, by ~5 % in the median).
    - split: each K chunk its own grid.z group, up to 8 groups.
    - parts: doubled while the grid has under 2.5 CTAs per SM (one plane; 0.8 with more): small
      matrices (7168 x 7168: 112 CTAs) were latency-bound.
    """
    n_slices, n_chunks = grid((m, k))
    tokens = next(t for t in TOKEN_CHOICES if t >= min(n, 8))
    planes = min(MAX_PLANES, -(-min(n, 8 * MAX_PLANES) // 8)) if tokens == 8 else 1
    warps = warps or (8 if planes == 1 else 16)
    depth = depth or (4 if planes == 1 else 2)
    groups = min(n_chunks, MAX_SPLIT) if split is None else max(1, split)
    cps = -(-n_chunks // groups)
    groups = -(-n_chunks // cps)
    if parts is None:
        ctas = -(-n_slices // warps) * -(-n // (tokens * planes)) * groups
        parts, target = 1, sms * (2.5 if planes == 1 else 0.8)
        while ctas * parts < target and parts < 8:
            parts *= 2
    return SellConfig(planes, warps, cps, groups * parts, depth, parts, tokens)


def variants() -> list[str]:
    shapes = [(t, 1) for t in TOKEN_CHOICES[:-1]] + [(8, p) for p in range(1, MAX_PLANES + 1)]
    return [SellConfig(p, w, 1, 1, d, 1, t).name(bf16) for t, p in shapes for w in WARP_CHOICES
            for d in DEPTH_CHOICES for bf16 in (False, True)] + ["sell_decompress<false>"]


def decompress_sell(w: SparseWeight, row0: int, rows: int) -> torch.Tensor:
    """Rows [row0, row0 + rows) of W dense (row0 a multiple of 32), one launch, no host sync."""
    m, k = w.shape
    n_slices, n_chunks = grid((m, k))
    out = torch.empty((rows, k), dtype=w.dtype, device=w.device)
    dev = w.device.index
    kernel = jit.get_kernel("sell_decompress<false>", dev, jit.capability(dev), program="sell.cu")
    smem = SLICE * CHUNK * 2  # the (slice, chunk) tile
    kernel.allow_smem(smem)
    kernel.launch_args((n_chunks, -(-rows // SLICE), 1), (512, 1, 1), torch.cuda.current_stream(w.device).cuda_stream,
                       [w.tensors["entries"].data_ptr(), w.tensors["slice_ptr"].data_ptr(), out.data_ptr(),
                        ctypes.c_int(row0), ctypes.c_int(rows), ctypes.c_int(k), ctypes.c_int(n_chunks)], smem=smem)
    return out


def launch_sell(x: torch.Tensor, w: SparseWeight, cfg: SellConfig, y: torch.Tensor,
                bias: torch.Tensor | None) -> None:
    """x [N, ldx] prepared (rows 16-byte aligned, ldx % 8 == 0); y [N, M] in x's dtype."""
    m, k = w.shape
    n = x.shape[0]
    dev = x.device.index
    cap = jit.capability(dev)
    bf16 = w.dtype == torch.bfloat16
    n_slices, n_chunks = grid((m, k))
    kernel = jit.get_kernel(cfg.name(bf16), dev, cap, program="sell.cu")
    partial = torch.empty((cfg.split, n, m), dtype=torch.float32, device=x.device) if cfg.split > 1 else None
    params = SellParams(w.tensors["entries"].data_ptr(), w.tensors["slice_ptr"].data_ptr(), x.data_ptr(),
                        y.data_ptr(), partial.data_ptr() if partial is not None else 0,
                        m, n, k, x.stride(0), n_slices, n_chunks, cfg.chunks_per_split, cfg.parts,
                        bias.data_ptr() if bias is not None else 0)
    stream = torch.cuda.current_stream(x.device).cuda_stream
    ctas = (-(-n_slices // cfg.warps), -(-n // (cfg.tokens * cfg.planes)), cfg.split)
    kernel.launch(ctas, cfg.smem, stream, params, threads=32 * cfg.warps)
    if partial is not None:
        from .dispatch import launch_reduce
        launch_reduce(partial, y, cfg.split, bias, m, dev, cap, stream)
