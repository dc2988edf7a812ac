"""What every SpMM launcher shares with csrc/common.cuh: the Params struct the kernels take by value, the X
layout they read, and the per-call pieces of a launch (the raw stream, the device context)."""

from __future__ import annotations

import ctypes

import torch


class Params(ctypes.Structure):
    """csrc/common.cuh `struct Params` (checked field by field in CI: tests/kernels/test_structs.py)."""
    _fields_ = [("weight", ctypes.c_void_p), ("block_ptr", ctypes.c_void_p), ("x", ctypes.c_void_p),
                ("y", ctypes.c_void_p), ("partial", ctypes.c_void_p),
                ("M", ctypes.c_int), ("N", ctypes.c_int), ("K", ctypes.c_int), ("ldx", ctypes.c_int),
                ("MB", ctypes.c_int), ("KB", ctypes.c_int), ("kb_per_split", ctypes.c_int),
                ("stage_w_bytes", ctypes.c_int), ("bias", ctypes.c_void_p), ("cluster", ctypes.c_int),
                ("w_stages", ctypes.c_int), ("counters", ctypes.c_void_p)]


def prepare_x(x: torch.Tensor) -> torch.Tensor:
    """The kernels read X in 16-byte chunks: rows contiguous, 16-byte aligned, K padded to 8."""
    n, k = x.shape
    ok = x.stride(1) == 1 and x.stride(0) % 8 == 0 and x.data_ptr() % 16 == 0 and k % 8 == 0
    if ok:
        return x
    padded = torch.zeros((n, -(-k // 8) * 8), dtype=x.dtype, device=x.device)
    padded[:, :k] = x
    return padded


def pointer(t: torch.Tensor | None) -> int:
    return t.data_ptr() if t is not None else 0


def raw_stream(device_index: int) -> int:
    """The current CUDA stream of the device, as the driver's handle (what torch.cuda.current_stream(d)
    .cuda_stream gives, without building a Stream object)."""
    return torch._C._cuda_getCurrentRawStream(device_index)
