"""Decode attention on the GPU (csrc/attention.cu): one query token per sequence against the KV cache.

`decode_attention` returns None when the inputs are not ones it handles (the caller runs SDPA): CPU,
fp32, torch.compile tracing, more than one query token, head dims other than 64 and 128, or value/key
rows that are not contiguous.
"""

from __future__ import annotations

import ctypes

import torch

from . import jit

PROGRAM = "attention.cu"
WARP_CHOICES = (8, 16, 32)
# Warps per CTA: 8 were the fastest of WARP_CHOICES at decode batch sizes; 16 warps take 64 registers a
# thread, two CTAs per SM (docs/tuning.md, WARPS).
WARPS = 8
HEAD_DIMS = (64, 128)


class AttnParams(ctypes.Structure):
    _fields_ = [("q", ctypes.c_void_p), ("k", ctypes.c_void_p), ("v", ctypes.c_void_p), ("mask", ctypes.c_void_p),
                ("out", ctypes.c_void_p), ("heads", ctypes.c_int), ("kv_heads", ctypes.c_int), ("len", ctypes.c_int),
                ("scale", ctypes.c_float)] + [(n, ctypes.c_longlong) for n in
                                             ("q_b", "q_h", "k_b", "k_h", "k_l", "v_b", "v_h", "v_l", "m_b")]


def variants() -> list[str]:
    return [f"decode_attention<{d},{bf16},{w}>" for d in HEAD_DIMS for bf16 in ("false", "true") for w in WARP_CHOICES]


def _usable(q, k, v, mask) -> bool:
    b, h, t, d = q.shape
    return (q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and not torch.compiler.is_compiling()
            and t == 1 and d in HEAD_DIMS and k.dtype == v.dtype == q.dtype and k.shape[-1] == d
            and 0 < k.shape[2] and h % k.shape[1] == 0 and mask.dtype == torch.bool
            and mask.shape == (b, 1, 1, k.shape[2]) and q.stride(-1) == k.stride(-1) == v.stride(-1) == 1
            and all(s % 4 == 0 for s in (*q.stride()[:2], *k.stride()[:3], *v.stride()[:3]))
            and all(t_.data_ptr() % 8 == 0 for t_ in (q, k, v))
            and jit.capability(q.device.index) >= (8, 0))


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                     scale: float, warps: int | None = None) -> torch.Tensor | None:
    """softmax(q k^T * scale, masked) v for q [B, H, 1, D], k/v [B, Hkv, L, D], mask [B, 1, 1, L] bool
    (True = attend; every row needs one); query head h reads KV head h // (H / Hkv).  [B, H, 1, D] or None."""
    if not _usable(q, k, v, mask):
        return None
    b, h, _, d = q.shape
    length = k.shape[2]
    m = mask[:, 0, 0, :]
    if m.stride(-1) != 1:
        m = m.contiguous()
    out = torch.empty((b, h, 1, d), dtype=q.dtype, device=q.device)
    params = AttnParams(q.data_ptr(), k.data_ptr(), v.data_ptr(), m.data_ptr(), out.data_ptr(), h, k.shape[1], length,
                        scale, q.stride(0), q.stride(1), k.stride(0), k.stride(1), k.stride(2), v.stride(0),
                        v.stride(1), v.stride(2), m.stride(0))
    dev = q.device.index
    warps = warps or WARPS
    with jit.on_device(q.device):
        kernel = jit.get_kernel(f"decode_attention<{d},{'true' if q.dtype == torch.bfloat16 else 'false'},{warps}>",
                                dev, jit.capability(dev), program=PROGRAM)
        kernel.launch((b * h, 1, 1), 0, torch.cuda.current_stream(q.device).cuda_stream, params,
                      32 * warps)
    return out
